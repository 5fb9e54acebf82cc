"""`objcache admin status` against three node processes: every node's Raft state, ring
version and write-back work; a node that is down shows as unreachable and the exit code
says the cluster is not healthy."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from clusterproc import LocalCluster
from serverproc import nfs_cp

pytestmark = pytest.mark.integration


def test_status_of_every_node_and_of_one_that_is_down(tmp_path: Path) -> None:
    (tmp_path / "bucket").mkdir()
    c = LocalCluster(tmp_path / "c", nodes=3, up_args=(
        "--store", f"file://{tmp_path / 'bucket'}", "--flush-delay", "3600"))
    c.up()
    try:
        src = tmp_path / "f"
        src.write_bytes(b"x" * 1000)
        nfs_cp(src, c.url(2, "f"))
        res = c.admin("status", "--json", node_id=3)
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        assert doc["ok"] and doc["ring_version"] >= 1
        nodes = {n["node_id"]: n for n in doc["nodes"]}
        assert sorted(nodes) == [1, 2, 3]
        for n in nodes.values():
            assert n["role"] == "leader" and n["leader"] == n["node_id"]  # one-member groups
            assert n["applied"] <= n["commit"] and n["ring_version"] == doc["ring_version"]
            assert n["stores"] == [f"file://{tmp_path / 'bucket'}"]
        assert sum(n["dirty_files"] for n in nodes.values()) == 1  # f, not written back yet
        assert sum(n["dirty_bytes"] for n in nodes.values()) == 1000
        text = c.admin("status", node_id=1)
        assert text.returncode == 0 and "ring version" in text.stdout
        for node in (1, 2, 3):  # the probes an orchestrator uses
            for probe in ("healthz", "readyz"):
                url = f"http://{c.nodes[node]['metrics']}/{probe}"
                with urllib.request.urlopen(url, timeout=10) as r:
                    assert r.status == 200 and r.read() == b"ok\n"
        # Raft and cache gauges, and the object store's requests, on /metrics.
        assert c.metric(1, "objcache_raft_is_leader") == 1
        assert c.metric(2, "objcache_raft_applied_index") >= 1
        assert c.metric(2, "objcache_cache_capacity_bytes") > 0
        c.admin("flush", "/", node_id=2)
        assert sum(c.metric(n, "objcache_store_requests_total", 'outcome="ok"')
                   for n in (1, 2, 3)) >= 1
        c.kill9(2)
        res = c.admin("status", "--json", node_id=1)
        assert res.returncode == 1
        doc = json.loads(res.stdout)
        assert not doc["ok"]
        assert "unreachable" in {n["node_id"]: n for n in doc["nodes"]}[2]["error"]
    finally:
        c.down(check=False)


def test_admin_needs_its_token_and_reaches_only_admin_messages(tmp_path: Path) -> None:
    """`cluster up` gives the cluster an admin token: `objcache admin` with it works; with the
    cluster secret or a wrong token the nodes refuse the handshake; and an admin client that
    is in cannot send the messages nodes send each other (a transaction, a read)."""
    import subprocess
    import sys

    import trio
    from serverproc import REPO

    from server.cluster import protocol as p
    from server.rpc.frames import RemoteError
    from server.rpc.plane import ADMIN_ID_BASE, RpcConfig, RpcPlane

    c = LocalCluster(tmp_path / "c", nodes=1)
    c.up()
    try:
        assert c.admin("status").returncode == 0
        wrong = tmp_path / "wrong"
        wrong.write_text("w" * 64)
        for flag, path in (("--cluster-secret-file", c.root / "secret"),
                           ("--admin-token-file", wrong)):
            res = subprocess.run(
                [sys.executable, "-m", "server.cli", "admin", "status", "--node",
                 f"1={c.nodes[1]['rpc']}", flag, str(path)], capture_output=True, text=True,
                timeout=120, cwd=REPO)
            assert res.returncode == 2 and "unreachable" in res.stderr, (flag, res.stderr)
        token = (c.root / "admin-token").read_bytes().strip()

        async def as_admin() -> None:
            plane = RpcPlane(RpcConfig(node_id=ADMIN_ID_BASE + 7, cluster_secret=token))
            plane.add_peer(1, f"ws://{c.nodes[1]['rpc']}/")
            async with trio.open_nursery() as nursery:
                await nursery.start(plane.run)
                reply = await plane.call(1, p.GetNodeList(), 10.0)  # an admin message
                assert reply.nodelist
                with pytest.raises(RemoteError, match=r"no_handler|GetInodes"):
                    await plane.call(1, p.GetInodes(1, (1,)), 10.0)
                nursery.cancel_scope.cancel()

        trio.run(as_admin)
    finally:
        c.down(check=False)
