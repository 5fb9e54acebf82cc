"""Regression tests for what the fault campaign (campaign.py) found, in the normal suite.

Each test names the scenario that found the failure and checks the smallest thing that shows
it, with real node processes (LocalCluster, loopback: no namespaces needed).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from clusterproc import LocalCluster, _alive
from serverproc import nfs_cat, nfs_cp, wait_for

pytestmark = pytest.mark.integration


def _garbage(c: LocalCluster) -> list[str]:
    return [f"n{i}: {line}" for i in c.nodes
            for line in (c.root / f"n{i}" / "node.log").read_text(errors="replace").splitlines()
            if "sent garbage" in line]


def test_a_restarted_replica_decodes_its_peers_raft_and_txn_messages(tmp_path: Path) -> None:
    """Scenario stale-one-member, seed 2: a restarted node's plane listened before its group
    member registered the Raft and txn codec tags, so its peers' heartbeats and decision
    notices arriving in that moment were "garbage" and their connections were closed (the
    restart then stalled on connection churn). Every tag must be known before the plane
    listens."""
    c = LocalCluster(tmp_path / "c", nodes=3, replicas=3).up()
    try:
        src = tmp_path / "f"
        src.write_bytes(b"x" * 5000)
        nfs_cp(src, c.url(1, "f"))
        for _ in range(2):
            c.kill9(3)
            c.restart(3)
        assert nfs_cat(c.url(3, "f")) == b"x" * 5000
        assert _garbage(c) == []
    finally:
        c.down(check=False)


def _start_exits(c: LocalCluster, node: int, timeout_s: float = 60.0) -> tuple[int, str]:
    proc = c.start(node)
    try:
        code = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"node {node} serves on an old data directory:\n"
                             f"{c.log_tail(node)}") from None
    return code, c.log_tail(node, 10)


@pytest.mark.parametrize("replicas", [1, 3])
def test_a_node_on_an_old_copy_of_its_data_directory_is_refused(tmp_path: Path,
                                                                replicas: int) -> None:
    """Scenarios stale-one-member and stale-replica: a node started on an old copy of its data
    directory served it (a one-member group: an old file system; a replica: a Raft member
    that forgot its log and votes). Now it exits 1 with the reason, the peers count the
    refusal, and on its real directory it serves again (server/cluster/freshness.py)."""
    c = LocalCluster(tmp_path / "c", nodes=3, replicas=replicas).up()
    try:
        d = c.root / "n2"
        c.kill9(2)
        shutil.copytree(d, tmp_path / "old")
        c.restart(2)
        src = tmp_path / "f"
        for i in range(3):
            src.write_bytes(b"%d" % i * 3000)
            nfs_cp(src, c.url(2, f"f{i}"))
        # Its second advance: the first (above the copy's counter) has reached its peers.
        wait_for(lambda: c.metric(2, "objcache_freshness_total", 'event="advances"') >= 2,
                 timeout_s=30, what="node 2 to report its counter")
        c.kill9(2)
        d.rename(tmp_path / "new")
        (tmp_path / "old").rename(d)
        (d / "ready.json").unlink(missing_ok=True)
        code, log = _start_exits(c, 2)
        assert code == 1, log
        assert "data directory is older than what node" in log, log
        refused = sum(c.metric(i, "objcache_freshness_total", 'event="stale_refused"')
                      for i in (1, 3))
        assert refused >= 1
        shutil.rmtree(d)
        (tmp_path / "new").rename(d)
        c.restart(2)
        for i in range(3):
            assert nfs_cat(c.url(2, f"f{i}")) == b"%d" % i * 3000
    finally:
        c.down(check=False)


def test_an_empty_data_directory_under_a_used_node_id_is_refused(tmp_path: Path) -> None:
    """The same hole, extreme case: a replica's data directory wiped and the node started
    under its old id would join its group with no log and no vote."""
    c = LocalCluster(tmp_path / "c", nodes=3, replicas=3).up()
    try:
        wait_for(lambda: c.metric(3, "objcache_freshness_total", 'event="advances"') >= 2,
                 timeout_s=30, what="node 3 to report its counter")
        c.kill9(3)
        d = c.root / "n3"
        config = (d / "node.toml").read_text()
        shutil.rmtree(d)
        d.mkdir()
        (d / "node.toml").write_text(config)
        code, log = _start_exits(c, 3)
        assert code == 1 and "older than what node" in log, log
    finally:
        c.down(check=False)


@pytest.mark.parametrize("size", [300_000, 40_000])
def test_a_full_cache_disk_stalls_the_group_instead_of_stopping_the_node(
        tmp_path: Path, size: int) -> None:
    """Scenario quick, seed 7: a node's cache disk (its chunk directory, a small tmpfs) filled
    up; applying a committed write then failed with ENOSPC, the node stopped (GroupStateError)
    and every restart applied the same entry into the same full disk and stopped again. Now
    the apply waits for space (the effects are idempotent and nothing of the batch is written
    yet), and once there is space the node goes on, with every acknowledged write.
    40 000 bytes: a chunk write small enough to be applied on the event loop's thread when it
    is idle (statemachine.inline_ok), which must hand the batch to a worker thread to wait
    (tests/unit/test_group_apply_inline.py checks that hand-over itself)."""
    root = tmp_path / "c"
    chunks = root / "n1" / "chunks"
    chunks.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(chunks)], check=True)
    try:
        c = LocalCluster(root, nodes=1).up()
        try:
            _fill_and_free(c, chunks, size)
        finally:
            c.down(check=False)
    finally:
        subprocess.run(["umount", "-l", str(chunks)], check=False)


def _fill_and_free(c: LocalCluster, chunks: Path, size: int) -> None:

    from faultinject import fill
    from faultnfs import FaultNfs

    nfs = FaultNfs(c.export_url(1))
    before = b"a" * 200_000
    nfs.write_file("/before", before)
    fill(chunks / "ballast")  # the disk full, to the last block
    writer, outcome = _write_in_background(c, "/during", b"b" * size)
    wait_for(lambda: "applying waits for space" in c.log_tail(1, 200), timeout_s=60,
             what="the apply to wait for space")
    (chunks / "ballast").unlink()
    writer.join(120)
    assert outcome, "the write did not return"
    assert _alive(c.nodes[1]["pid"]), c.log_tail(1)
    assert nfs.read_file("/before") == before
    if outcome == ["ok"]:
        assert nfs.read_file("/during") == b"b" * size
    nfs.close()
    report = c.fsck()
    assert report["ok"], report["problems"]
    c.kill9(1)
    c.restart(1)
    again = FaultNfs(c.export_url(1))
    assert again.read_file("/before") == before
    again.close()


def test_a_full_cache_disk_evicts_clean_copies_and_a_waiting_apply_stops(tmp_path: Path
                                                                       ) -> None:
    """Scenario quick (seed 7, S3 faults added), FINDINGS.md 7: a replica's cache disk filled
    and its apply waited for space for good: the clean copies that filled it could only go
    through the periodic trim, which waits for the apply lock the waiting apply holds, and
    the node then ignored SIGTERM (the wait ran in a worker thread trio cannot cancel). Now
    the waiting apply evicts clean copies itself, and a node stopping ends the wait (the
    batch is unwritten: the restart applies it again)."""
    import os
    import signal

    from faultinject import fill
    from faultnfs import FaultNfs

    root = tmp_path / "c"
    chunks = root / "n1" / "chunks"
    chunks.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(chunks)], check=True)
    try:
        # A long write-back delay: only `admin flush` makes a file clean here.
        bucket = tmp_path / "bucket"
        bucket.mkdir()
        c = LocalCluster(root, nodes=1, up_args=(
            "--store", f"file://{bucket}", "--flush-delay", "3600",
            "--cache-capacity", str(2 << 20))).up()
        try:
            nfs = FaultNfs(c.export_url(1))
            clean, after = b"c" * 1_500_000, b"a" * 300_000
            nfs.write_file("/clean", clean)
            assert c.admin("flush", "/").returncode == 0
            wait_for(lambda: c.metric(1, "objcache_cache_clean_bytes") >= len(clean),
                     timeout_s=30, what="the written-back chunks to become clean copies")
            fill(chunks / "ballast")
            nfs.write_file("/after", after)  # room from the clean copies, with the ballast
            assert "evicted" in c.log_tail(1, 50), c.log_tail(1)
            assert c.metric(1, "objcache_cache_clean_bytes") < len(clean)

            # With nothing clean left the next write's apply waits, and SIGTERM ends the wait.
            assert c.admin("evict", "/clean").returncode == 0
            assert c.metric(1, "objcache_cache_clean_bytes") == 0
            fill(chunks / "ballast2")  # what the eviction freed
            writer, outcome = _write_in_background(c, "/stuck", b"s" * 300_000)
            wait_for(lambda: "applying waits for space" in c.log_tail(1, 50), timeout_s=60,
                     what="the apply to wait for space")
            pid = c.nodes[1]["pid"]
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not _alive(pid), timeout_s=30,
                     what="the node to stop while its apply waits for space")
            assert "node 1 stopped" in c.log_tail(1, 20), c.log_tail(1)
            nfs.close()
            writer.join(90)
            (chunks / "ballast").unlink()
            (chunks / "ballast2").unlink()
            c.restart(1)
            again = FaultNfs(c.export_url(1))
            assert again.read_file("/clean") == clean  # from the bucket: its copies went
            assert again.read_file("/after") == after
            if outcome == ["ok"]:
                assert again.read_file("/stuck") == b"s" * 300_000
            again.close()
            report = c.fsck()
            assert report["ok"], report["problems"]
        finally:
            c.down(check=False)
    finally:
        subprocess.run(["umount", "-l", str(chunks)], check=False)


def _write_in_background(c: LocalCluster, path: str, data: bytes
                         ) -> tuple[threading.Thread, list[object]]:
    """Write `path` through node 1 in a thread; its outcome: ["ok"], or the error (a write
    not acknowledged is allowed)."""
    from faultnfs import FaultNfs

    outcome: list[object] = []

    def write() -> None:
        other = FaultNfs(c.export_url(1), timeout_ms=60_000)
        try:
            other.write_file(path, data)
            outcome.append("ok")
        except OSError as e:
            outcome.append(e)
        finally:
            other.close()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    return writer, outcome


def test_a_drain_waits_for_a_write_back_already_under_way(tmp_path: Path, s3_bucket) -> None:
    """Scenarios quick (seed 7) and stale-one-member (seed 2): the drain's forced write-back
    rounds skipped a file whose upload a background round had under way (its key busy) and
    counted that as no progress, so two rounds 0.2 s apart ended the drain with "write-back
    stopped making progress ... not written back (still dirty)" while the upload was still
    going. A busy key is progress yet to come, not a stall."""
    import os

    from s3server import ACCESS_KEY, SECRET_KEY
    from tools.s3faultproxy import FaultProxy

    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    with FaultProxy(s3_bucket.server.endpoint) as proxy:
        c = LocalCluster(tmp_path / "c", nodes=1, up_args=(
            "--store", f"{s3_bucket.url}/dr", "--s3-endpoint", proxy.endpoint,
            "--flush-delay", "0.2"))
        c.up()
        try:
            data = b"d" * 100_000
            src = tmp_path / "f"
            src.write_bytes(data)
            proxy.delay_s = 4.0  # a slow bucket: the background upload takes a while
            seen = proxy.counts["requests"]
            nfs_cp(src, c.url(1, "f"))
            wait_for(lambda: proxy.counts["requests"] > seen, timeout_s=30,
                     what="the background write-back to start")
            res = c.admin("drain", "--json", timeout_s=120)
            assert res.returncode == 0, res.stdout + res.stderr
            c.wait_exit(1)
            got = s3_bucket.client().get_object(Bucket=s3_bucket.name, Key="dr/f")
            assert got["Body"].read() == data
        finally:
            c.down(check=False)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
