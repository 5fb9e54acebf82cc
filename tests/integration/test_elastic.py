"""Growing and shrinking a running cluster (issue 6): node processes on loopback joined with
`objcache serve --join` and removed with `objcache admin leave`, driven through libnfs.

- 1 -> 2 -> 3 groups while files are written and read; then 3 -> 2 -> 1. At every step
  every file reads back byte for byte through every node still running, the namespace is
  consistent (`objcache admin fsck`), and a node that left has exited.
- A client writing during a change: every write it was acknowledged reads back.
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from clusterproc import LocalCluster
from serverproc import ClientError, nfs_cat, nfs_cp, nfs_ls, nfsmeta

pytestmark = [pytest.mark.integration, pytest.mark.nodes(1)]

MiB = 1 << 20


def _write_tree(cluster: LocalCluster, tmp_path: Path, node: int, prefix: str,
                sizes: list[int], seed: int) -> dict[str, str]:
    rng = random.Random(seed)
    src = tmp_path / f"src-{prefix}"
    src.mkdir()
    nfsmeta(cluster.export_url(node), "mkdir", f"/{prefix}")
    want = {}
    for i, size in enumerate(sizes):
        data = rng.randbytes(size)
        (src / f"f{i}").write_bytes(data)
        nfs_cp(src / f"f{i}", cluster.url(node, f"/{prefix}/f{i}"))
        want[f"/{prefix}/f{i}"] = hashlib.sha256(data).hexdigest()
    return want


def _check(cluster: LocalCluster, want: dict[str, str], nodes: list[int]) -> None:
    for node in nodes:
        for path, digest in sorted(want.items()):
            got = nfs_cat(cluster.url(node, path))
            assert hashlib.sha256(got).hexdigest() == digest, (node, path, len(got))
    report = cluster.fsck()
    assert report["ok"], report


def _ring(cluster: LocalCluster, node: int) -> tuple[int, list[int]]:
    res = cluster.admin("status", "--json", node_id=node)
    assert res.returncode == 0, res.stdout + res.stderr
    import json

    st = json.loads(res.stdout)
    return st["ring_version"], sorted({n["group"] for n in st["nodes"]})


def test_grow_to_three_groups_and_shrink_back_keeps_every_file(cluster, tmp_path):
    sizes = [0, 100, (16 << 10) + 1, 3 * MiB + 7, 20 * MiB + 3]  # up to two 16 MiB chunks
    want = _write_tree(cluster, tmp_path, 1, "a", sizes, 1)
    want |= _write_tree(cluster, tmp_path, 1, "many", [4096] * 40, 2)

    cluster.add_node(2)
    _check(cluster, want, [1, 2])
    # The coordinator (node 1) counts the change and the bytes its group sent.
    assert cluster.metric(1, "objcache_membership_changes_total", 'kind="join"') == 1
    assert cluster.metric(1, "objcache_migrated_bytes_total") > 3 * MiB
    want |= _write_tree(cluster, tmp_path, 2, "b", sizes, 3)

    cluster.add_node(3)
    _check(cluster, want, [1, 2, 3])
    assert _ring(cluster, 3) == (3, [1, 2, 3])
    want |= _write_tree(cluster, tmp_path, 3, "c", sizes, 4)
    names = {e.name for e in nfs_ls(cluster.url(2, "/"))}
    assert names == {"a", "b", "c", "many"}

    res = cluster.admin("leave", "2", node_id=1)
    assert res.returncode == 0, res.stdout + res.stderr + cluster.log_tails()
    cluster.wait_exit(2)
    del cluster.nodes[2]
    _check(cluster, want, [1, 3])

    res = cluster.admin("leave", "3", node_id=1)
    assert res.returncode == 0, res.stdout + res.stderr + cluster.log_tails()
    cluster.wait_exit(3)
    del cluster.nodes[3]
    _check(cluster, want, [1])
    assert _ring(cluster, 1) == (5, [1])

    # Node 2 returns with an empty data directory: its new inode ids stay clear of the ones
    # it handed out before (inodes of /b live on, now in group 1).
    shutil.rmtree(cluster.root / "n2")
    cluster.add_node(2)
    want |= _write_tree(cluster, tmp_path, 2, "d", [10, 20_000] + [100] * 20, 5)
    m = re.search(r"a new inode counter: ids from (\d+) \(the highest held: (\d+)\)",
                  cluster.log_tail(2, 400))
    assert m is not None, cluster.log_tail(2)
    assert int(m.group(1)) == int(m.group(2)) + 1 > 16  # above the ids of /b's files
    _check(cluster, want, [1, 2])


def test_the_last_group_cannot_leave(cluster):
    res = cluster.admin("leave", "1")
    assert res.returncode == 1
    assert "drain" in res.stderr


def test_writes_during_a_join_are_all_kept(cluster, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    nfsmeta(cluster.export_url(1), "mkdir", "/w")
    acked: dict[str, str] = {}
    stop = threading.Event()
    stalls: list[float] = []
    failures: list[str] = []

    def writer() -> None:
        rng = random.Random(7)
        i = 0
        while not stop.is_set():
            data = rng.randbytes(rng.choice([10, 5000, 70_000]))
            f = src / f"w{i}"
            f.write_bytes(data)
            start = time.monotonic()
            try:
                nfs_cp(f, cluster.url(1, f"/w/w{i}"))
            except ClientError as e:  # no error may reach a client during a change
                failures.append(f"w{i}: {e}")
                i += 1
                continue
            stalls.append(time.monotonic() - start)
            acked[f"/w/w{i}"] = hashlib.sha256(data).hexdigest()
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(2)
        cluster.add_node(2)
        time.sleep(2)
    finally:
        stop.set()
        t.join()
    assert not failures, failures
    assert len(acked) > 10
    _check(cluster, acked, [1, 2])


def _wait_log(cluster: LocalCluster, node: int, text: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in cluster.log_tail(node, 400):
        assert time.monotonic() < deadline, f"node {node} never logged {text!r}:\n" + (
            cluster.log_tails())
        time.sleep(0.1)


def test_join_whose_coordinator_is_killed_before_the_commit_rolls_back_then_joins(
        tmp_path, monkeypatch):
    monkeypatch.setenv("OBJCACHE_FAILPOINTS", "ring.before_commit=30")
    c = LocalCluster(tmp_path / "cluster", nodes=1).up()
    try:
        want = _write_tree(c, tmp_path, 1, "a", [100, 70_000, 3 * MiB + 1] + [5000] * 30, 1)
        joiner = c.add_node(2, wait=False)
        _wait_log(c, 1, "failpoint ring.before_commit")
        c.kill9(1)
        monkeypatch.delenv("OBJCACHE_FAILPOINTS")
        c.restart(1)
        # The coordinator's group aborts the change it no longer drives; the joiner learns it,
        # drops what it imported, and asks again: this time the join completes.
        c.wait_ready(2, joiner, timeout_s=180)
        assert "has no driver: aborting" in c.log_tail(1, 400)
        assert "aborted (learned from group 1)" in c.log_tail(2, 400)
        _check(c, want, [1, 2])
        assert _ring(c, 2) == (2, [1, 2])  # the aborted version 2 was never installed
    finally:
        c.down(check=False)


def test_join_whose_new_node_is_killed_after_the_commit_point_completes(tmp_path, monkeypatch):
    monkeypatch.setenv("OBJCACHE_FAILPOINTS", "ring.after_commit=15")
    c = LocalCluster(tmp_path / "cluster", nodes=1).up()
    try:
        want = _write_tree(c, tmp_path, 1, "a", [100, 70_000, 3 * MiB + 1] + [5000] * 30, 1)
        c.add_node(2, wait=False)
        _wait_log(c, 1, "failpoint ring.after_commit")
        c.kill9(2)
        monkeypatch.delenv("OBJCACHE_FAILPOINTS")
        c.restart(2, timeout_s=180)  # it learns the commit from group 1 (or is told it)
        _check(c, want, [1, 2])
        assert _ring(c, 1) == (2, [1, 2])
    finally:
        c.down(check=False)


def test_replicas_join_a_group_serve_through_the_loss_of_one_and_leave(cluster, tmp_path):
    """Adding a replica is a Raft membership change in its group (nothing moves); a group of
    three serves on with one member killed; a removed replica stops."""
    want = _write_tree(cluster, tmp_path, 1, "a", [100, 70_000, 3 * MiB + 1] + [5000] * 20, 1)
    cluster.add_node(2, group=1)
    cluster.add_node(3, group=1)
    assert _ring(cluster, 1) == (3, [1])
    _check(cluster, want, [1, 2, 3])
    res = cluster.admin("status", "--json")
    import json

    rows = json.loads(res.stdout)["nodes"]
    assert sorted(r["node_id"] for r in rows if r["group"] == 1) == [1, 2, 3]
    cluster.kill9(1)  # the founder (and likely leader): the other two elect one and serve
    want |= _write_tree(cluster, tmp_path, 2, "b", [10, 40_000], 2)
    for path, digest in sorted(want.items()):
        assert hashlib.sha256(nfs_cat(cluster.url(3, path))).hexdigest() == digest, path
    cluster.restart(1)
    res = cluster.admin("leave", "2", node_id=3)
    assert res.returncode == 0, res.stdout + res.stderr + cluster.log_tails()
    cluster.wait_exit(2)
    del cluster.nodes[2]
    assert _ring(cluster, 1) == (4, [1])
    _check(cluster, want, [1, 3])


def test_admin_join_adds_a_waiting_node_as_a_group_and_as_a_replica(cluster, tmp_path):
    """`objcache admin join`: a node started with --await-join serves nothing until an admin
    names the member to join through; then it joins like `serve --join` (a new group, or a
    replica of its cluster.group). An order to a node that waits for none (one not started
    with --await-join, or one that joined already) is refused with that reason."""
    import json

    want = _write_tree(cluster, tmp_path, 1, "a", [100, 70_000, MiB + 1] + [5000] * 10, 1)
    res = cluster.admin("join", "1=" + cluster.nodes[1]["rpc"])
    assert res.returncode == 1 and "not waiting to join" in res.stderr, res.stderr
    proc = _start_waiting(cluster, 2)
    try:
        assert not (cluster.root / "n2" / "ready.json").exists()  # serves nothing yet
        res = cluster.admin("join", "--json", "2=" + cluster.nodes[2]["rpc"])
        assert res.returncode == 0, res.stdout + res.stderr + cluster.log_tails()
        out = json.loads(res.stdout)
        assert out["joined"] == 2 and out["group"] == 2 and out["groups"] == [1, 2], out
        cluster.wait_ready(2, proc)
    except BaseException:
        proc.kill()
        raise
    assert _ring(cluster, 1) == (out["ring_version"], [1, 2])
    res = cluster.admin("join", "2=" + cluster.nodes[2]["rpc"])  # a second order
    assert res.returncode == 1 and "a member already" in res.stderr, res.stderr
    want |= _write_tree(cluster, tmp_path, 2, "b", [10, 300_000], 2)
    _check(cluster, want, [1, 2])

    # A replica of group 2, joining through node 1 (not a member of its group).
    proc = _start_waiting(cluster, 3, group=2)
    try:
        res = cluster.admin("join", "3=" + cluster.nodes[3]["rpc"], node_id=1)
        assert res.returncode == 0, res.stdout + res.stderr + cluster.log_tails()
        assert "joined group 2" in res.stdout, res.stdout
        cluster.wait_ready(3, proc)
    except BaseException:
        proc.kill()
        raise
    rows = json.loads(cluster.admin("status", "--json").stdout)["nodes"]
    assert sorted(r["node_id"] for r in rows if r["group"] == 2) == [2, 3]
    _check(cluster, want, [1, 2, 3])

    # A waiting node stops on SIGTERM like any other, having joined nothing.
    proc = _start_waiting(cluster, 4)
    proc.terminate()
    assert proc.wait(30) == 0, cluster.log_tail(4)
    del cluster.nodes[4]
    assert _ring(cluster, 1)[1] == [1, 2]


def _start_waiting(cluster: LocalCluster, node: int, group: int = 0) -> subprocess.Popen:
    """Start `node` with --await-join; return once it logs that it waits (alive till then)."""
    proc = cluster.add_node(node, group=group, await_join=True)
    deadline = time.monotonic() + 60
    while "waiting for `objcache admin join`" not in cluster.log_tail(node):
        assert proc.poll() is None, cluster.log_tail(node)
        assert time.monotonic() < deadline, cluster.log_tail(node)
        time.sleep(0.1)
    return proc
