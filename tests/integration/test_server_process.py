"""`objcache serve` as an operator sees it: it starts, answers, stops on SIGTERM with exit 0,
restarts on the same data and port, and refuses loudly to start on a busy port."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from serverproc import ObjcacheServer, ServerError, nfs_cat, nfs_cp, nfs_ls, tcp_answers

pytestmark = pytest.mark.integration


def test_sigterm_exit_zero_then_restart_on_same_port(tmp_path: Path) -> None:
    srv = ObjcacheServer(tmp_path / "data", log_path=tmp_path / "log").start()
    try:
        (tmp_path / "f").write_bytes(b"kept")
        nfs_cp(tmp_path / "f", srv.url("/f"))
        port = srv.nfs_port
        assert srv.stop() == 0
        assert not tcp_answers(port)
        srv.start()
        assert srv.nfs_port == port
        assert nfs_cat(srv.url("/f")) == b"kept"
        assert [e.name for e in nfs_ls(srv.url("/"))] == ["f"]
    finally:
        srv.stop()
    assert srv.log_text().count("objcache: serving") == 2


def test_busy_port_fails_fast(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        srv = ObjcacheServer(
            tmp_path / "data", nfs_port=s.getsockname()[1], log_path=tmp_path / "log"
        )
        t0 = time.monotonic()
        with pytest.raises(ServerError, match="exited with"):
            srv.start(timeout_s=60)
        assert time.monotonic() - t0 < 30, "a bind failure must stop the start, not hang"
    assert srv.proc is not None and srv.proc.returncode not in (0, None)


def test_a_cluster_node_refuses_a_standalone_nodes_data(tmp_path: Path) -> None:
    """The two keep different state machines in the same layout: mixing them would serve
    garbage, so the cluster node refuses at start and says why."""
    import subprocess
    import sys

    from serverproc import REPO, free_port

    data = tmp_path / "data"
    srv = ObjcacheServer(data).start()
    srv.stop()
    secret = tmp_path / "secret"
    secret.write_text("s" * 32)
    rpc = free_port()
    res = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--data-dir", str(data), "--nfs-listen",
         f"127.0.0.1:{free_port()}", "--portmap-listen", "off", "--node-id", "1", "--listen",
         f"127.0.0.1:{rpc}", "--peers", f"1=127.0.0.1:{rpc}", "--cluster-secret-file",
         str(secret)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert res.returncode == 1
    assert "holds a standalone node's data" in res.stderr


@pytest.mark.nodes(1)
def test_a_busy_node_runs_its_cyclic_collector_rarely(cluster) -> None:
    """server/gctune.py: a node's garbage is freed by reference counting, and each run of the
    cyclic collector walks objects that are nearly all alive. With CPython's defaults, 4
    clients creating 4 000 files ran the youngest generation ~215 times (every 700 net
    allocations) and a full collection once; `objcache serve` runs it after 10 000: ~6 and none."""
    from concurrent.futures import ThreadPoolExecutor

    from serverproc import nfsmeta

    def collections(generation: int) -> float:
        return cluster.metric(1, "python_gc_collections_total", f'generation="{generation}"')

    before = [collections(g) for g in range(3)]
    assert before[0] > 0, "the node exports python_gc_collections_total"
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda i: nfsmeta(cluster.export_url(1), "mkfiles", f"/d{i}", 1000),
                             range(4)))
    assert [d["create"]["ops"] for d in done] == [1000] * 4
    ran = [collections(g) - before[g] for g in range(3)]
    assert ran[0] <= 40, ran  # a run per 100 creates at most
    assert ran[2] <= 1, ran
