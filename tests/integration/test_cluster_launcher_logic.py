"""`objcache cluster up|down` (server/cluster/launcher.py) with stand-in node processes: a tiny
Python script that reads its node.toml and writes the ready file as a node does (or fails, or
never gets ready, or ignores SIGTERM). The real nodes are tested in test_cluster_launcher.py."""

from __future__ import annotations

import io
import json
import os
import random
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from server import config as cfgmod
from server.cluster import launcher
from server.cluster.ready import read_ready

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

STAND_IN = r"""
import signal, sys, time, tomllib
from server.cluster.ready import remove_ready, write_ready
config, mode = sys.argv[2], sys.argv[3]
cfg = tomllib.load(open(config, "rb"))
c, data_dir = cfg["cluster"], cfg["node"]["data_dir"]
print(f"stand-in node {c['node_id']} starting", flush=True)
if mode == "fail":
    print("boom: cannot start", flush=True)
    sys.exit(3)
def stop(*_):
    remove_ready(data_dir)
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "ignore-term" else stop)
if mode != "never-ready":
    write_ready(data_dir, node_id=c["node_id"], group=c["group"], nfs=cfg["nfs"]["listen"],
                rpc=c["listen"], metrics=cfg["metrics"]["listen"], pid=__import__("os").getpid())
while True:
    time.sleep(0.05)
"""


def stand_in(modes: dict[int, str] | None = None):
    def argv(config: Path) -> list[str]:
        node_id = int(config.parent.name[1:])
        mode = (modes or {}).get(node_id, "ok")
        return [sys.executable, "-c", STAND_IN, "--config", str(config), mode]

    return argv


def free_base(n_nodes: int) -> int:
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(30000, 60000)
        ports = range(base, base + 3 * n_nodes)
        if all(launcher._port_free(p, udp=True) for p in ports):
            return base
    raise AssertionError("no free port range")


@pytest.fixture(autouse=True)
def _no_stray_nodes():
    """Whatever a failed test left running is killed (only this process's own children)."""
    yield
    for child in launcher._children.values():
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)


def alive(pid: int) -> bool:
    child = launcher._children.get(pid)
    return child is not None and child.poll() is None


class Run:
    def __init__(self, tmp_path: Path, nodes: int, replicas: int = 1, **kw):
        self.root = tmp_path / "cluster"
        self.base = free_base(nodes)
        self.out, self.err = io.StringIO(), io.StringIO()
        before = set(launcher._children)
        self.rc = launcher.up(self.root, nodes, replicas, self.base, out=self.out,
                              err=self.err, **{"timeout_s": 30.0, **kw})
        self.started = sorted(set(launcher._children) - before)

    def cluster(self) -> dict:
        return json.loads((self.root / "cluster.json").read_text())

    def pids(self) -> list[int]:
        return [n["pid"] for n in self.cluster()["nodes"]]

    def down(self, **kw) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        rc = launcher.down(self.root, out=out, err=err, **kw)
        return rc, out.getvalue(), err.getvalue()


def test_plan_layout() -> None:
    layout = launcher.plan(6, 3, 21000)
    assert [(n.node_id, n.group) for n in layout] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2),
                                                      (6, 2)]
    assert (layout[1].nfs, layout[1].rpc, layout[1].metrics) == (
        "127.0.0.1:21003", "127.0.0.1:21004", "127.0.0.1:21005")


@pytest.mark.parametrize(("args", "match"), [((4, 3, 21000), "not a multiple of --replicas 3"),
                                             ((3, 0, 21000), "1 to 5 members"),
                                             ((12, 6, 21000), "1 to 5 members"),
                                             ((0, 1, 21000), "--nodes 0"),
                                             ((3, 1, 65530), "must lie in 1024..65535")])
def test_plan_refuses(args: tuple[int, int, int], match: str) -> None:
    with pytest.raises(launcher.LaunchError, match=match):
        launcher.plan(*args)


def test_up_then_down(tmp_path: Path) -> None:
    run = Run(tmp_path, 3, node_argv=stand_in())
    assert run.rc == 0, run.err.getvalue()
    text = run.out.getvalue()
    b = run.base
    assert "3 nodes in 3 groups of 1" in text
    rows = [line.split() for line in text.splitlines()]
    assert ["2", "2", f"127.0.0.1:{b + 3}", f"127.0.0.1:{b + 4}", f"127.0.0.1:{b + 5}",
            str(run.pids()[1])] in rows
    assert f"mount -t nfs -o vers=3,proto=tcp,port={b},mountport={b},nolock 127.0.0.1:/ /mnt" \
        in text
    assert stat.S_IMODE((run.root / "secret").stat().st_mode) == 0o600
    assert len((run.root / "secret").read_text().strip()) == 64
    pids = run.pids()
    assert all(alive(p) for p in pids)
    for i in (1, 2, 3):  # the generated configs are valid node configs
        cfg = cfgmod.load(run.root / f"n{i}" / "node.toml")
        assert cfg.cluster.node_id == i and cfg.cluster_group() == i
        assert sorted(cfg.cluster_peers()) == [1, 2, 3]
        assert cfg.nfs_listen().port == b + 3 * (i - 1)
        assert Path(cfg.cluster.cluster_secret_file) == run.root / "secret"
        assert read_ready(run.root / f"n{i}").pid == pids[i - 1]  # type: ignore[union-attr]
    assert run.down() == (0, "objcache cluster down: 3 nodes stopped\n", "")
    assert not any(alive(p) for p in pids)
    assert not (run.root / "cluster.json").exists()
    assert all(read_ready(run.root / f"n{i}") is None for i in (1, 2, 3))
    rc, out, _ = run.down()  # idempotent
    assert rc == 0 and "no cluster running" in out


def test_json_and_groups_of_two(tmp_path: Path) -> None:
    run = Run(tmp_path, 4, 2, as_json=True, node_argv=stand_in())
    try:
        assert run.rc == 0, run.err.getvalue()
        doc = json.loads(run.out.getvalue())
        assert [(n["node_id"], n["group"]) for n in doc["nodes"]] == [(1, 1), (2, 1), (3, 2),
                                                                      (4, 2)]
        assert doc["nodes"][3]["metrics"] == f"127.0.0.1:{run.base + 11}"
        assert doc["nodes"][0]["pid"] == run.pids()[0]
        assert doc["mount"].startswith("mount -t nfs") and doc["data_dir"] == str(run.root)
    finally:
        run.down()


def test_a_node_that_fails_stops_the_others(tmp_path: Path) -> None:
    run = Run(tmp_path, 3, node_argv=stand_in({2: "fail"}))
    assert run.rc == 1
    err = run.err.getvalue()
    assert "node 2" in err and "exited with code 3 before it was ready" in err
    assert "boom: cannot start" in err
    assert not (run.root / "cluster.json").exists()
    assert len(run.started) == 3 and not any(alive(p) for p in run.started)


def test_a_node_that_never_gets_ready_times_out(tmp_path: Path) -> None:
    run = Run(tmp_path, 2, node_argv=stand_in({1: "never-ready"}), timeout_s=1.0)
    assert run.rc == 1
    assert "node 1" in run.err.getvalue() and "was not ready after 1 s" in run.err.getvalue()
    assert "stand-in node 1 starting" in run.err.getvalue()
    assert len(run.started) == 2 and not any(alive(p) for p in run.started)


def test_down_kills_a_node_that_ignores_sigterm(tmp_path: Path) -> None:
    run = Run(tmp_path, 2, node_argv=stand_in({2: "ignore-term"}))
    assert run.rc == 0, run.err.getvalue()
    pids = run.pids()
    rc, out, err = run.down(timeout_s=0.5)
    assert rc == 1 and "some had to be killed" in out
    assert f"node pid {pids[1]} (n2) ignored SIGTERM" in err
    assert not any(alive(p) for p in pids)
    assert read_ready(run.root / "n2") is None


def test_refusals(tmp_path: Path) -> None:
    run = Run(tmp_path, 2, node_argv=stand_in())
    try:
        assert run.rc == 0
        err = io.StringIO()
        assert launcher.up(run.root, 2, 1, run.base, err=err, node_argv=stand_in()) == 2
        assert "a cluster is running in" in err.getvalue()
    finally:
        run.down()
    err = io.StringIO()  # stopped: the same shape restarts, another one is refused
    assert launcher.up(run.root, 3, 1, run.base, err=err, node_argv=stand_in()) == 2
    assert "another shape" in err.getvalue()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", run.base + 1))
        busy.listen()
        err = io.StringIO()
        assert launcher.up(run.root, 2, 1, run.base, err=err, node_argv=stand_in()) == 2
        assert f"ports in use: {run.base + 1}" in err.getvalue()
    again = launcher.up(run.root, 2, 1, run.base, out=io.StringIO(), node_argv=stand_in())
    assert again == 0
    assert run.down()[0] == 0


def test_down_from_the_command_line(tmp_path: Path) -> None:
    """`down` in another process: the nodes are not its children (it must not wait for
    exits it cannot reap: an exited node stays a zombie until this process reaps it)."""
    run = Run(tmp_path, 2, node_argv=stand_in())
    assert run.rc == 0
    pids = run.pids()
    cmd = [sys.executable, "-m", "server.cli", "cluster", "down", "--data-dir", str(run.root)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "2 nodes stopped" in res.stdout
    assert not any(alive(p) for p in pids)
    bad = [sys.executable, "-m", "server.cli", "cluster", "up", "--nodes", "4", "--replicas",
           "3", "--data-dir", str(tmp_path / "x")]
    res = subprocess.run(bad, capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 2 and "not a multiple" in res.stderr
