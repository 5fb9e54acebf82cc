"""The bucket behind a real cluster: three node processes (`objcache cluster up --store`)
over SeaweedFS, read and written through libnfs on different nodes.

- A bucket pre-filled with a tree (nested directories, an empty file, 1 byte, exactly one
  chunk, one chunk plus one byte, a 200 MiB object, names with spaces and non-ASCII): the
  listing and every file's checksum are the objects'; a second read, from the same node or
  another, sends no GET (the nodes' fetch counters).
- What a client writes reaches the bucket byte for byte after `objcache admin flush`, and
  `admin evict` / `admin warm` drop and refill the cache.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from clusterproc import LocalCluster
from s3server import ACCESS_KEY, SECRET_KEY
from serverproc import nfs_cat, nfs_cp, nfs_ls

pytestmark = pytest.mark.integration

CHUNK = 16 << 20  # the default chunk size


def blob(n: int) -> bytes:
    return os.urandom(n)  # distinct chunks: a misplaced chunk cannot read back right


TREE = {
    "models/llm/config.json": b'{"layers": 2}',
    "models/llm/shard 00.bin": blob(CHUNK),
    "models/llm/shard-01.bin": blob(CHUNK + 1),
    "models/llm/big.bin": blob(200 << 20),
    "models/llm/empty": b"",
    "models/one": b"x",
    "caf\u00e9/\u65e5\u672c/notes.txt": blob(5000),
    "top.txt": blob(123),
}


def url(c: LocalCluster, node: int, path: str) -> str:
    return c.url(node, path)  # libnfs takes the path as it is (no percent-decoding)


def gets(c: LocalCluster) -> float:
    return sum(c.metric(n, "objcache_bucket_fetch_total", 'event="gets"') for n in c.nodes)


def test_a_bucket_tree_through_three_nodes(tmp_path: Path, s3_bucket: Any,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = s3_bucket.client()
    for key, data in TREE.items():
        s3.put_object(Bucket=s3_bucket.name, Key=f"data/{key}", Body=data)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    c = LocalCluster(tmp_path / "c", nodes=3, up_args=(
        "--store", f"{s3_bucket.url}/data", "--s3-endpoint", s3_bucket.server.endpoint,
        "--flush-delay", "3600", "--ttl", "3600"))
    c.up()
    try:
        listing = {e.name: e for e in nfs_ls(url(c, 2, "/"), recursive=True)}
        files = {name: e.size for name, e in listing.items() if not e.mode.startswith("d")}
        assert files == {k: len(v) for k, v in TREE.items()}
        dirs = {name for name, e in listing.items() if e.mode.startswith("d")}
        assert dirs == {"models", "models/llm", "caf\u00e9", "caf\u00e9/\u65e5\u672c"}
        for key, data in TREE.items():
            assert hashlib.sha256(nfs_cat(url(c, 1, key))).digest() == (
                hashlib.sha256(data).digest()), key
        fetched = gets(c)
        assert fetched > 0
        for node in (1, 3):  # the same node again, then another: served from the cache
            for key, data in TREE.items():
                assert nfs_cat(url(c, node, key)) == data, key
        assert gets(c) == fetched
        # Evict one file's clean copies, read it again: fetched again; warm refills all.
        assert c.admin("evict", "/models/llm/big.bin").returncode == 0
        assert nfs_cat(url(c, 2, "models/llm/big.bin")) == TREE["models/llm/big.bin"]
        refetched = gets(c)
        assert refetched > fetched
        assert c.admin("evict", "/").returncode == 0
        warm = c.admin("warm", "/models", "--json")
        assert warm.returncode == 0, warm.stderr
        assert '"ok": true' in warm.stdout
        after_warm = gets(c)
        assert after_warm > refetched
        for key in ("models/llm/big.bin", "models/one"):
            assert nfs_cat(url(c, 3, key)) == TREE[key]
        assert gets(c) == after_warm
        # Writes through node 2, flushed: the bucket holds them.
        local = tmp_path / "new.bin"
        local.write_bytes(blob(3 * CHUNK + 77))
        nfs_cp(local, url(c, 2, "models/new.bin"))
        flush = c.admin("flush", "/")
        assert flush.returncode == 0, flush.stdout + flush.stderr
        got = s3.get_object(Bucket=s3_bucket.name, Key="data/models/new.bin")["Body"].read()
        assert got == local.read_bytes()
        report = c.fsck()
        assert report["ok"], report["problems"]
    finally:
        c.down()


def test_dirty_files_survive_kill_9_and_reach_the_bucket(tmp_path: Path, s3_bucket: Any,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Files written through every node, then every node killed with -9 before any write-back
    (the delay is an hour): after a restart `admin flush` puts each one in the bucket, byte
    for byte. Dirty state is replicated state; nothing lives only in a flusher's memory."""
    s3 = s3_bucket.client()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    c = LocalCluster(tmp_path / "c", nodes=3, up_args=(
        "--store", f"{s3_bucket.url}/k9", "--s3-endpoint", s3_bucket.server.endpoint,
        "--flush-delay", "3600"))
    c.up()
    try:
        files = {f"n{node}-f{i}.bin": blob(1000 + i + (CHUNK + 5 if i == 0 else 0))
                 for node in (1, 2, 3) for i in range(3)}
        local = tmp_path / "src"
        for name, data in files.items():
            local.write_bytes(data)
            nfs_cp(local, url(c, int(name[1]), name))
        for node in (1, 2, 3):
            c.kill9(node)
        listed = s3.list_objects_v2(Bucket=s3_bucket.name, Prefix="k9/")
        assert listed.get("KeyCount", 0) == 0  # nothing was written back before the kill
        for node in (1, 2, 3):
            c.restart(node)
        flush = c.admin("flush", "/")
        assert flush.returncode == 0, flush.stdout + flush.stderr
        for name, data in files.items():
            got = s3.get_object(Bucket=s3_bucket.name, Key=f"k9/{name}")["Body"].read()
            assert got == data, name
        report = c.fsck()
        assert report["ok"], report["problems"]
    finally:
        c.down(check=False)
