"""`objcache cluster up|down` with real nodes: separate `objcache serve` processes on loopback,
the namespace served by every node (libnfs as the client), metrics answering, a clean stop."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from serverproc import REPO, nfs_cat, nfs_cp, nfs_ls, nfs_url, tcp_answers

from server.cluster import launcher
from server.cluster.ready import read_ready

pytestmark = pytest.mark.integration
UP_TIMEOUT_S = 180


def free_base(n_nodes: int) -> int:
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(30000, 60000)
        if all(launcher._port_free(p, udp=True) for p in range(base, base + 3 * n_nodes)):
            return base
    raise AssertionError("no free port range")


def objcache(*args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True,
                          text=True, timeout=timeout_s, env=env, cwd=REPO,
                          stdin=subprocess.DEVNULL)


def url(node: dict, path: str) -> str:
    host, _, port = node["nfs"].rpartition(":")
    if path.count("/") == 1 and path != "/":
        path = "/" + path  # libnfs mounts the URL's dirname (serverproc._join)
    return nfs_url(int(port), int(port), path, host)


@pytest.mark.parametrize(("nodes", "replicas"), [(3, 1), (3, 3)], ids=["3-groups", "1-group-of-3"])
def test_cluster_up_serves_one_namespace_then_down(tmp_path: Path, nodes: int,
                                                   replicas: int) -> None:
    root = tmp_path / "cluster"
    up = objcache("cluster", "up", "--nodes", str(nodes), "--replicas", str(replicas),
                  "--base-port", str(free_base(nodes)), "--data-dir", str(root), "--json",
                  "--timeout", str(UP_TIMEOUT_S), timeout_s=UP_TIMEOUT_S + 60)
    ns: list[dict] = []
    try:
        assert up.returncode == 0, up.stderr
        doc = json.loads(up.stdout)
        ns = doc["nodes"]
        assert [n["node_id"] for n in ns] == list(range(1, nodes + 1))
        assert [n["group"] for n in ns] == [(i - 1) // replicas + 1 for i in range(1, nodes + 1)]
        for n in ns:
            ready = read_ready(root / f"n{n['node_id']}")
            assert ready is not None and ready.pid == n["pid"]
            with urllib.request.urlopen(f"http://{n['metrics']}/metrics", timeout=10) as r:
                assert r.status == 200
        # What one node's client writes, every other node's client reads.
        files = {f"f{i}": os.urandom(1000 * i + 7) for i in range(1, 7)}
        for i, (name, data) in enumerate(files.items()):
            src = tmp_path / name
            src.write_bytes(data)
            nfs_cp(src, url(ns[i % nodes], f"/{name}"))
        for n in ns:
            assert sorted(e.name for e in nfs_ls(url(n, "/"))) == sorted(files)
            for name, data in files.items():
                assert nfs_cat(url(n, f"/{name}")) == data
    finally:
        down = objcache("cluster", "down", "--data-dir", str(root), timeout_s=120)
    assert down.returncode == 0, down.stdout + down.stderr
    for n in ns:
        assert not tcp_answers(int(n["nfs"].rpartition(":")[2]))
        assert read_ready(root / f"n{n['node_id']}") is None
    assert not (root / "cluster.json").exists()
