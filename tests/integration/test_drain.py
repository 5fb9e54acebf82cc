"""Drain to zero and cold start (issue 6): three node processes over SeaweedFS, changed through
libnfs, then `objcache admin drain`.

- Files of several sizes (inline, one chunk, a multipart one), a directory tree, a file and a
  directory renamed and a file deleted after an earlier write-back: the drain exits 0, every
  node process exits 0, the bucket holds exactly the tree byte for byte (boto3 reads), and a
  new, empty cluster over the same bucket serves the same tree byte for byte.
- The S3 server (through a proxy) refuses the uploads of some files (403): the drain exits 1
  and names exactly those paths with the store's error; while it ran, writes were fenced
  (NFS3ERR_JUKEBOX); afterwards every node still serves, unfenced, the files read back and
  are still dirty. An object changed behind the cluster's back (another size and ETag) fails
  the next drain the same way; put back, and the faults lifted, a drain succeeds and the nodes
  exit 0.

Node exit codes: `cluster up` starts the nodes in their own sessions and exits, so this process
makes itself their subreaper (prctl PR_SET_CHILD_SUBREAPER) to wait for them.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clusterproc import LocalCluster
from nfsclient import LibNfs
from s3server import ACCESS_KEY, SECRET_KEY
from serverproc import REPO, nfs_cat, nfs_cp, nfs_ls, wait_for
from tools.s3faultproxy import RefusingProxy

pytestmark = pytest.mark.integration

CHUNK = 16 << 20  # the default chunk size
PR_SET_CHILD_SUBREAPER = 36
NODE_EXIT_S = 60.0


def blob(n: int, seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Orphans of our children (the nodes, once `cluster up` exited) become our children."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0, ctypes.get_errno()
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def exit_codes(c: LocalCluster, timeout_s: float = NODE_EXIT_S) -> dict[int, int | None]:
    """Each node's exit code, waiting up to `timeout_s`; None: still running then."""
    out: dict[int, int | None] = {}
    deadline = time.monotonic() + timeout_s
    for node_id, node in sorted(c.nodes.items()):
        out[node_id] = None
        while out[node_id] is None:
            pid, status = os.waitpid(node["pid"], os.WNOHANG)  # ChildProcessError: no subreaper
            if pid:
                out[node_id] = os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                break
            else:
                time.sleep(0.05)
    return out


def alive(c: LocalCluster) -> dict[int, bool]:
    return {i: os.waitpid(n["pid"], os.WNOHANG)[0] == 0 for i, n in sorted(c.nodes.items())}


def bucket_tree(s3: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object under `prefix` (the prefix cut off) and its bytes, through boto3."""
    out: dict[str, bytes] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", ()):
            out[o["Key"][len(prefix):]] = s3.get_object(Bucket=bucket, Key=o["Key"])[
                "Body"].read()
    return out


def admin_json(res: subprocess.CompletedProcess) -> dict:
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON from admin (exit {res.returncode}):\n{res.stdout}\n{res.stderr}"
    return json.loads(lines[-1])


def write_files(c: LocalCluster, files: dict[str, bytes], tmp: Path) -> None:
    """Each file through a different node in turn (nfs-cp)."""
    for i, (path, data) in enumerate(sorted(files.items())):
        src = tmp / f"src{i}"
        src.write_bytes(data)
        nfs_cp(src, c.url(1 + i % len(c.nodes), path))
        src.unlink()


def cluster(root: Path, bucket: Any, prefix: str, endpoint: str = "") -> LocalCluster:
    return LocalCluster(root, nodes=3, up_args=(
        "--store", f"{bucket.url}/{prefix}", "--s3-endpoint", endpoint or bucket.server.endpoint,
        "--flush-delay", "3600", "--ttl", "3600"))


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)


# -- drain, then cold start --------------------------------------------------------------------


def test_drain_to_zero_then_a_new_cluster_serves_the_same_tree(
        tmp_path: Path, s3_bucket: Any, s3_env: None, subreaper: None) -> None:
    s3 = s3_bucket.client()
    c = cluster(tmp_path / "c1", s3_bucket, "z")
    c.up()
    try:
        nfs = LibNfs(c.url(1, "/"))
        for d in ("/docs", "/docs/deep", "/old dir", "/empty", "/gone dir"):
            nfs.mkdir(d)
        early = {"/old dir/in.bin": blob(70_000, 1), "/gone.bin": blob(3000, 2),
                 "/docs/to-move.bin": blob(200_000, 3), "/top.bin": blob(100_000, 4)}
        write_files(c, early, tmp_path)
        flush = c.admin("flush", "/", "--json")  # these reach the bucket before the changes
        assert flush.returncode == 0, flush.stdout + flush.stderr
        assert set(bucket_tree(s3, s3_bucket.name, "z/")) >= {k[1:] for k in early}
        late = {"/empty-file": b"", "/one": b"x", "/docs/a.txt": blob(5000, 5),
                "/docs/deep/b.bin": blob(1 << 20, 6), "/big/multi.bin": blob(2 * CHUNK + 123, 7),
                "/top.bin.new": blob(150_000, 8)}
        nfs.mkdir("/big")
        write_files(c, late, tmp_path)
        # Changes of what is in the bucket already: a delete, two renames (a file across
        # directories, a directory with its file), an overwrite by rename, a removed directory.
        nfs.unlink("/gone.bin")
        nfs.rename("/docs/to-move.bin", "/docs/deep/moved.bin")
        nfs.rename("/old dir", "/new dir")
        nfs.rename("/top.bin.new", "/top.bin")
        nfs.rmdir("/gone dir")
        nfs.close()
        tree = {**late, "/top.bin": late["/top.bin.new"], "/docs/deep/moved.bin":
                early["/docs/to-move.bin"], "/new dir/in.bin": early["/old dir/in.bin"]}
        del tree["/top.bin.new"]
        dirs = {"/docs", "/docs/deep", "/new dir", "/empty", "/big"}

        res = c.admin("drain", "--json", node_id=2)
        doc = admin_json(res)
        assert res.returncode == 0 and doc["ok"], res.stdout + res.stderr + c.log_tails()
        assert doc["problem_count"] == 0 and doc["verified"] >= len(tree)
        codes = exit_codes(c)
        assert codes == {1: 0, 2: 0, 3: 0}, c.log_tails()

        got = bucket_tree(s3, s3_bucket.name, "z/")
        want = {k[1:]: v for k, v in tree.items()} | {d[1:] + "/": b"" for d in dirs}
        assert sorted(got) == sorted(want)
        for key, data in want.items():
            assert got[key] == data, key
        uploads = s3.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", [])
        assert uploads == []
    finally:
        c.down(check=False)

    # A new cluster, fresh data directories, over the same bucket.
    c2 = cluster(tmp_path / "c2", s3_bucket, "z")
    c2.up()
    try:
        listing = {"/" + e.name: e for e in nfs_ls(c2.url(3, "/"), recursive=True)}
        assert {p for p, e in listing.items() if e.mode.startswith("d")} == dirs
        assert {p: e.size for p, e in listing.items() if not e.mode.startswith("d")} == {
            p: len(d) for p, d in tree.items()}
        for i, (path, data) in enumerate(sorted(tree.items())):
            assert nfs_cat(c2.url(1 + i % 3, path)) == data, path
    finally:
        c2.down(check=False)


# -- a drain that cannot upload everything -----------------------------------------------------


def test_a_drain_that_cannot_upload_fails_keeps_the_data_and_a_second_one_succeeds(
        tmp_path: Path, s3_bucket: Any, s3_env: None, subreaper: None) -> None:
    s3 = s3_bucket.client()
    with RefusingProxy(s3_bucket.server.endpoint, refuse=".bad") as proxy:
        c = cluster(tmp_path / "c", s3_bucket, "f", endpoint=proxy.endpoint)
        c.up()
        try:
            nfs = LibNfs(c.url(3, "/"))
            nfs.mkdir("/sub")
            files = {"/ok.bin": blob(80_000, 11), "/sub/ok2.bin": blob(3000, 12),
                     "/x.bad": blob(70_000, 13), "/sub/y.bad": blob(300_000, 14)}
            write_files(c, files, tmp_path)
            drain = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "admin", "drain", "--json", "--node",
                 f"1={c.nodes[1]['rpc']}", "--admin-token-file", str(c.root / "admin-token")],
                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            # An upload is being refused (held): the drain is flushing, so writes are fenced.
            wait_for(lambda: proxy.refused > 0, timeout_s=60, what="a refused upload")
            with pytest.raises(OSError, match="JUKEBOX"):
                nfs.create("/during-drain")
            proxy.release.set()
            out, err = drain.communicate(timeout=300)
            assert drain.returncode == 1, out + err
            doc = json.loads(out.strip().splitlines()[-1])
            assert not doc["ok"]
            why = {p["path"]: p["why"] for p in doc["problems"] if p["path"]}
            assert set(why) == {"/x.bad", "/sub/y.bad"}, doc
            for text in why.values():
                assert "AccessDenied" in text, text  # the store's own error

            # Nothing stopped, nothing lost, writes unfenced; the refused files stay dirty.
            assert alive(c) == {1: True, 2: True, 3: True}
            for i, (path, data) in enumerate(sorted(files.items())):
                assert nfs_cat(c.url(1 + i % 3, path)) == data, path
            nfs.create("/after.bin")
            nfs.close()
            status = admin_json(c.admin("status", "--json", node_id=2))
            assert sum(n["dirty_files"] for n in status["nodes"]) >= 3  # 2 refused, after.bin
            assert "x.bad" not in bucket_tree(s3, s3_bucket.name, "f/")

            # Another client changed an object the cluster wrote: its ETag is not the one the
            # state records, and the drain refuses to stop on it.
            ok_bin = s3.get_object(Bucket=s3_bucket.name, Key="f/ok.bin")["Body"].read()
            assert ok_bin == files["/ok.bin"]  # written back by the failed drain
            s3.put_object(Bucket=s3_bucket.name, Key="f/ok.bin", Body=b"not this")
            proxy.refusing = False
            res = c.admin("drain", "--json", node_id=2)
            doc = admin_json(res)
            assert res.returncode == 1 and not doc["ok"], res.stdout + res.stderr
            why = {p["path"]: p["why"] for p in doc["problems"] if p["path"]}
            assert list(why) == ["/ok.bin"] and "8 bytes" in why["/ok.bin"], doc
            assert alive(c) == {1: True, 2: True, 3: True}

            s3.put_object(Bucket=s3_bucket.name, Key="f/ok.bin", Body=ok_bin)  # same ETag
            # A directory's marker the bucket lost while the directory stays there implicitly
            # (SeaweedFS then answers HEAD sub/ with ETag "<md5>-0"): the drain writes it again.
            assert "sub/" in bucket_tree(s3, s3_bucket.name, "f/")
            s3.delete_object(Bucket=s3_bucket.name, Key="f/sub/")
            assert "sub/" not in bucket_tree(s3, s3_bucket.name, "f/")
            res = c.admin("drain", "--json", node_id=3)
            assert res.returncode == 0 and admin_json(res)["ok"], res.stdout + res.stderr
            assert exit_codes(c) == {1: 0, 2: 0, 3: 0}, c.log_tails()
            got = bucket_tree(s3, s3_bucket.name, "f/")
            want = {k[1:]: v for k, v in files.items()} | {"after.bin": b"", "sub/": b""}
            assert got == want
        finally:
            c.down(check=False)
