"""The data path over the bucket (server/cluster/bucket.py), in one process: a real group
(Raft, LevelDB, chunk files), the gateway, and a real object store (a local directory here;
the SeaweedFS tests run the same paths over S3). Files are bound to their objects with
SetOrigin directly, so these tests do not depend on how listings are loaded.

- Cold reads return the object's bytes; a second read sends no GET; sequential readers make
  the owner fetch the next chunks ahead.
- Writes into a cold object materialize the chunk first: base + new bytes read back, and the
  chunk is never evicted; truncating and growing reads zeros past the cut.
- An object changed behind our back is never read as a mix: the read is refused (JUKEBOX).
- A cache far smaller than the working set: every read is right, no written byte is lost.
- `admin warm` / `admin evict` jobs fill and drop the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from bucketnode import CS, STORE, CountingStore, one_node, result_bytes

from nfs_gateway.backend import (
    CreateMode,
    Cred,
    FileId,
    FileSlice,
    Jukebox,
    SetAttrs,
    StableHow,
)
from server.cluster import group_reads
from server.cluster import protocol as p
from server.cluster.bucket import BucketConfig
from server.cluster.bucket_admin import BucketAdmin
from server.cluster.gateway import ClusterBackend
from server.cluster.gateway_plan import Plan
from server.fs import keys
from server.fs.records import SetOrigin
from storage.objstore.localdir import LocalDirStore

pytestmark = pytest.mark.integration

ROOT = Cred(0, 0)


async def bound_file(fs: ClusterBackend, name: bytes, key: str) -> FileId:
    """A file in / bound to object `key` (what the listing loader does for each object)."""
    root = await fs.export_root("/")
    fid = (await fs.create(ROOT, root, name, CreateMode.GUARDED, SetAttrs(), None)).fid
    await rebind(fs, fid, key)
    return fid


async def rebind(fs: ClusterBackend, fid: FileId, key: str) -> None:
    """Bind the file to the object's current version."""
    info = await fs.stores[STORE].head(key)
    assert info is not None

    async def build() -> Plan:
        inode = await fs._get(fid)
        plan = Plan(fs.ring.group_of_inode(fid.ino), {fid.ino: inode})
        plan.add(plan.coordinator, SetOrigin(fid.ino, STORE, key.encode(), info.etag.encode(),
                                             info.size, info.mtime_ns))
        return plan

    await fs._change(build)


async def read_all(fs: ClusterBackend, fid: FileId, size: int, step: int = 128 << 10) -> bytes:
    out = bytearray()
    while len(out) < size:
        r = await fs.read(ROOT, fid, len(out), step)
        out += r.data
        if r.eof:
            break
    return bytes(out)


def blob(n: int, seed: int = 1) -> bytes:
    out = bytearray()
    while len(out) < n:
        out += hashlib.sha256(b"%d:%d" % (seed, len(out))).digest()
    return bytes(out[:n])


async def put(store: Any, key: str, data: bytes) -> None:
    await store.put(key, data)


async def test_cold_read_then_cached_then_read_ahead(tmp_path: Path) -> None:
    store = CountingStore(LocalDirStore(tmp_path / "bucket"))
    data = blob(10 * CS + 123)
    await put(store, "model/shard-0", data)
    bucket = BucketConfig(capacity_bytes=64 * CS, readahead_chunks=3, fetch_part_bytes=CS // 4)
    async with one_node(tmp_path / "n1", store, bucket) as (fs, runtime, _):
        fid = await bound_file(fs, b"shard", "model/shard-0")
        attr = await fs.getattr(fid)
        assert attr.size == len(data)
        assert await read_all(fs, fid, len(data)) == data
        gets = store.calls["get_range"]
        assert gets >= 11 * 4 - 3  # every chunk fetched, in parallel parts
        assert runtime.bucket is not None and runtime.bucket.stats["fetches"] == 11
        assert await read_all(fs, fid, len(data), step=50_000) == data  # warm: no GET
        assert store.calls["get_range"] == gets
        # Read-ahead: after two sequential reads of chunk 0 of a fresh file, chunks 1..3
        # are fetched without being read.
        await put(store, "model/shard-1", data)
        fid2 = await bound_file(fs, b"shard1", "model/shard-1")
        await fs.read(ROOT, fid2, 0, 1000)
        await fs.read(ROOT, fid2, 1000, 1000)
        with trio.fail_after(10):
            while runtime.bucket.stats["fetches"] < 11 + 4:
                await trio.sleep(0.01)
        before = runtime.bucket.stats["fetches"]
        assert (await fs.read(ROOT, fid2, 2 * CS, 1000)).data == data[2 * CS:2 * CS + 1000]
        assert runtime.bucket.stats["fetches"] == before


async def kept(runtime: Any, ino: int, etag: bytes, *indexes: int) -> None:
    """Wait until the cache holds copies of these chunks at `etag` (kept in the background
    after the read that fetched them)."""
    cache = runtime.bucket.cache
    with trio.fail_after(10):
        while not all(cache.valid(ino, i, etag, count=False) for i in indexes):
            await trio.sleep(0.01)


async def test_the_fast_path_reads_a_clean_copy_of_this_version_only(tmp_path: Path) -> None:
    # READ on the event loop (read_nowait) serves a chunk fetched from the bucket straight
    # from its cached copy, without a request; whatever it cannot answer now (not fetched,
    # across chunks, dropped) is None, and the async path reads. A written chunk is read from
    # its chunk file.
    store = CountingStore(LocalDirStore(tmp_path / "bucket"))
    data = blob(2 * CS + 77)
    await put(store, "m/f", data)
    async with one_node(tmp_path / "n1", store, BucketConfig(capacity_bytes=64 * CS)) as (
            fs, runtime, _):
        fid = await bound_file(fs, b"f", "m/f")
        await fs.getattr(fid)  # checked against the bucket: its attributes are not due
        assert fs.read_nowait(ROOT, fid, 0, 1000) is None  # not fetched yet
        assert (await fs.read(ROOT, fid, 0, 1000)).data == data[:1000]
        etag = (await fs._get(fid)).etag
        await kept(runtime, fid.ino, etag, 0)
        gets = store.calls["get_range"]
        small = fs.read_nowait(ROOT, fid, 10, 1000)
        assert small is not None and result_bytes(small) == data[10:1010] and not small.eof
        assert small.attr == (await fs.read(ROOT, fid, 10, 1000)).attr
        big = fs.read_nowait(ROOT, fid, 0, CS)
        assert big is not None and isinstance(big.data, FileSlice)  # sent with sendfile
        assert result_bytes(big) == data[:CS]
        assert fs.read_nowait(ROOT, fid, CS - 10, 20) is None  # across two chunks
        assert fs.read_nowait(ROOT, fid, CS, 100) is None  # chunk 1 was not fetched
        assert store.calls["get_range"] == gets
        # The object changes and the file is bound to the new version (as a revalidation
        # does): the copy on disk is of the old one, so the fast path declines.
        new = blob(len(data), seed=2)
        await put(store, "m/f", new)
        await rebind(fs, fid, "m/f")
        assert fs.read_nowait(ROOT, fid, 10, 1000) is None
        assert (await fs.read(ROOT, fid, 10, 1000)).data == new[10:1010]
        await runtime.bucket.drop(fid.ino)
        assert fs.read_nowait(ROOT, fid, 10, 1000) is None  # no copy any more
        data = new
        await fs.write(ROOT, fid, 5, memoryview(b"NEW"), StableHow.FILE_SYNC)
        got = fs.read_nowait(ROOT, fid, 0, 100)  # materialized: the chunk file is the truth
        assert got is not None and result_bytes(got) == data[:5] + b"NEW" + data[8:100]


async def test_a_peer_gateways_read_is_answered_now_from_a_copy_of_its_version_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What another node's gateway sends for a READ (ReadHead to the inode's group, ReadChunk
    # to the chunk's) is answered on the event loop from the page cache when the chunk is
    # cached at the version the request names (read_now), with exactly the bytes the thread
    # path gives; anything else is None and handle() answers it.
    store = CountingStore(LocalDirStore(tmp_path / "bucket"))
    data = blob(2 * CS + 77)
    await put(store, "m/f", data)
    async with one_node(tmp_path / "n1", store, BucketConfig(capacity_bytes=64 * CS)) as (
            fs, runtime, _):
        fid = await bound_file(fs, b"f", "m/f")
        inode = await fs._get(fid)
        ring = runtime.ring_version()

        def chunk(index: int, inner: int, n: int, **kw: Any) -> Any:
            req = fs._chunk_request(inode, index, inner, n)
            return dataclasses.replace(req, **{"ring_version": ring, **kw})

        assert runtime.read_now(chunk(1, 10, 1000)) is None  # not fetched yet
        assert (await fs.read(ROOT, fid, CS, 1000)).data == data[CS:CS + 1000]
        assert (await fs.read(ROOT, fid, 0, 1000)).data == data[:1000]
        await kept(runtime, fid.ino, inode.etag, 0, 1)
        gets = store.calls["get_range"]
        got = runtime.read_now(chunk(1, 10, 1000))
        assert isinstance(got, p.ReadChunkReply) and bytes(got.data) == data[CS + 10:CS + 1010]
        assert bytes(got.data) == (await runtime.handle(chunk(1, 10, 1000))).data
        assert runtime.read_now(chunk(1, 10, 1000, prefetch=True)) is None  # only fetches
        assert runtime.read_now(chunk(1, 10, 1000, etag=b"another")) is None  # not that version
        assert runtime.read_now(chunk(1, 10, 1000, ring_version=ring + 1)) is None
        assert runtime.read_now(chunk(2, 0, 77)) is None  # chunk 2 was not fetched
        head = runtime.read_now(p.ReadHead(ring, fid.ino, 10, 1000))
        assert isinstance(head, p.ReadHeadReply) and bytes(head.data) == data[10:1010]
        slow = await runtime.handle(p.ReadHead(ring, fid.ino, 10, 1000))
        assert head.inode == slow.inode and bytes(head.data) == slow.data
        past = runtime.read_now(p.ReadHead(ring, fid.ino, 2 * CS, 1000))  # past chunk 0
        assert past == p.ReadHeadReply(slow.inode, data=b"")
        assert runtime.read_now(p.GetInodes(ring, (fid.ino,))) is None  # not a READ's
        # A copy bigger than one READ is left to a worker thread (the loop is not held).
        monkeypatch.setattr(group_reads, "COPY_NOW_MAX_BYTES", 999)
        assert runtime.read_now(chunk(1, 10, 1000)) is None
        assert runtime.read_now(p.ReadHead(ring, fid.ino, 10, 1000)) is None
        assert runtime.read_now(chunk(1, 10, 999)) is not None
        monkeypatch.undo()
        assert store.calls["get_range"] == gets
        # A write materializes chunk 1: its chunk file is the truth, whatever the copy holds.
        await fs.write(ROOT, fid, CS + 5, memoryview(b"NEW"), StableHow.FILE_SYNC)
        got = runtime.read_now(chunk(1, 0, 100))
        want = data[CS:CS + 5] + b"NEW" + data[CS + 8:CS + 100]
        assert got is not None and bytes(got.data) == want
        await runtime.bucket.drop(fid.ino)
        assert runtime.read_now(chunk(0, 0, 100)) is None  # no copy of chunk 0 any more
        assert runtime.read_now(p.ReadHead(ring, fid.ino, 0, 100)) is None


async def test_writes_into_a_cold_object_materialize_its_chunk(tmp_path: Path) -> None:
    store = LocalDirStore(tmp_path / "bucket")
    data = blob(4 * CS + 10)
    await put(store, "big", data)
    bucket = BucketConfig(capacity_bytes=64 * CS)
    async with one_node(tmp_path / "n1", store, bucket) as (fs, runtime, _):
        fid = await bound_file(fs, b"big", "big")
        mid = 2 * CS + 1000
        w = await fs.write(ROOT, fid, mid, memoryview(b"NEW" * 100), StableHow.UNSTABLE)
        assert w.count == 300
        expect = data[:mid] + b"NEW" * 100 + data[mid + 300:]
        assert await read_all(fs, fid, len(expect)) == expect
        kv = runtime.kv
        assert await kv.get(keys.materialized_key(fid.ino, 2)) is not None
        assert await kv.get(keys.materialized_key(fid.ino, 1)) is None
        # A second write to the same chunk needs no base (the gateway knows it is local).
        gets = runtime.bucket.stats["gets"]
        await fs.write(ROOT, fid, mid + 300, memoryview(b"x"), StableHow.UNSTABLE)
        assert runtime.bucket.stats["gets"] == gets
        expect = expect[:mid + 300] + b"x" + expect[mid + 301:]
        # Truncate into chunk 1, grow again: zeros past the cut, the base before it.
        await fs.setattr(ROOT, fid, SetAttrs(size=CS + 5), None)
        await fs.setattr(ROOT, fid, SetAttrs(size=3 * CS), None)
        got = await read_all(fs, fid, 3 * CS)
        assert got == expect[:CS + 5] + bytes(3 * CS - CS - 5)
        # Evicting everything clean keeps what the replicated state owns.
        freed = await runtime.bucket.drop(fid.ino)
        assert freed >= 0
        assert await read_all(fs, fid, 3 * CS) == got


async def test_an_object_changed_behind_our_back_is_never_read_mixed(tmp_path: Path) -> None:
    store = LocalDirStore(tmp_path / "bucket")
    old = blob(3 * CS, seed=1)
    await put(store, "f", old)
    async with one_node(tmp_path / "n1", store, BucketConfig()) as (fs, _runtime, _):
        fid = await bound_file(fs, b"f", "f")
        assert (await fs.read(ROOT, fid, 0, 100)).data == old[:100]  # chunk 0 cached
        await put(store, "f", blob(3 * CS, seed=2))  # another writer replaces it
        assert (await fs.read(ROOT, fid, 0, 100)).data == old[:100]  # the cached version
        with pytest.raises(Jukebox):
            await fs.read(ROOT, fid, CS, 100)  # chunk 1 of the old version is gone


async def test_a_small_cache_serves_a_large_working_set(tmp_path: Path) -> None:
    store = LocalDirStore(tmp_path / "bucket")
    files = {f"ws/{i}": blob(4 * CS, seed=i) for i in range(8)}  # 32 chunks
    for k, v in files.items():
        await put(store, k, v)
    bucket = BucketConfig(capacity_bytes=6 * CS, readahead_chunks=1)
    async with one_node(tmp_path / "n1", store, bucket) as (fs, runtime, _):
        fids = {k: await bound_file(fs, k.replace("/", "-").encode(), k) for k in files}
        # Dirty bytes (a write into file 0's chunk 3) must survive all the eviction below.
        f0 = fids["ws/0"]
        await fs.write(ROOT, f0, 3 * CS + 7, memoryview(b"KEEP"), StableHow.FILE_SYNC)
        expect0 = files["ws/0"][:3 * CS + 7] + b"KEEP" + files["ws/0"][3 * CS + 11:]
        for _ in range(2):
            for k, fid in fids.items():
                want = expect0 if k == "ws/0" else files[k]
                assert await read_all(fs, fid, len(want)) == want
        usage = runtime.bucket.cache.usage()
        assert usage["clean_bytes"] <= 6 * CS and usage["evicted"] > 0
        assert await read_all(fs, f0, len(expect0)) == expect0


async def test_warm_and_evict_jobs(tmp_path: Path) -> None:
    store = CountingStore(LocalDirStore(tmp_path / "bucket"))
    data = {f"m{i}": blob(2 * CS + i, seed=i) for i in range(3)}
    for k, v in data.items():
        await put(store, k, v)
    async with one_node(tmp_path / "n1", store, BucketConfig()) as (fs, runtime, nursery):
        fids = {k: await bound_file(fs, k.encode(), k) for k in data}
        admin = BucketAdmin(fs, runtime.plane)
        admin.serve(nursery)
        job = admin.start("warm", "/")
        with trio.fail_after(20):
            while not job.finished:
                await trio.sleep(0.01)
        assert job.errors == [] and job.files == 3
        assert job.done_bytes == job.total_bytes == sum(len(v) for v in data.values())
        gets = store.calls["get_range"]
        for k, fid in fids.items():
            assert await read_all(fs, fid, len(data[k])) == data[k]
        assert store.calls["get_range"] == gets  # everything was cached by the warm
        job = admin.start("evict", "/m1")
        with trio.fail_after(20):
            while not job.finished:
                await trio.sleep(0.01)
        assert job.errors == [] and job.files == 1 and job.done_bytes == len(data["m1"])
        assert await read_all(fs, fids["m1"], len(data["m1"])) == data["m1"]
        assert store.calls["get_range"] > gets



async def test_capacity_64_mib_under_a_512_mib_working_set(tmp_path: Path) -> None:
    """The issue's numbers: every read right, the cache within its capacity, the one dirty
    chunk never dropped."""
    store = LocalDirStore(tmp_path / "bucket")
    mib = 1 << 20
    files = {f"w{i}": os.urandom(64 * mib) for i in range(8)}
    for k, v in files.items():
        await put(store, k, v)
    bucket = BucketConfig(capacity_bytes=64 * mib, readahead_chunks=1)
    async with one_node(tmp_path / "n1", store, bucket, chunk_size=16 * mib,
                        bind_root=True) as (fs, runtime, _):
        root = await fs.export_root("/")
        fids = {k: (await fs.lookup(ROOT, root, k.encode())).fid for k in files}
        w0 = fids["w0"]
        await fs.write(ROOT, w0, 40 * mib + 3, memoryview(b"DIRTY"), StableHow.FILE_SYNC)
        files["w0"] = files["w0"][:40 * mib + 3] + b"DIRTY" + files["w0"][40 * mib + 8:]
        for _ in range(2):
            for k, fid in fids.items():
                got = await read_all(fs, fid, len(files[k]), step=mib)
                assert hashlib.sha256(got).digest() == hashlib.sha256(files[k]).digest(), k
        usage = runtime.bucket.cache.usage()
        assert usage["clean_bytes"] <= 64 * mib and usage["evicted"] >= 20
        got = await fs.read(ROOT, w0, 40 * mib, 16)
        assert got.data == files["w0"][40 * mib:40 * mib + 16]
