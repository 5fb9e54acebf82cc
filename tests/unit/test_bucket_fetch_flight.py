"""BucketReads: a chunk's fetch belongs to the owner node, not to the request that started it
(server/cluster/bucket_reads.py): a caller whose deadline passes leaves the fetch running and
its retry joins it, so a GET slower than one try still ends (a real directory store, a real
chunk cache on LevelDB)."""

from __future__ import annotations

from pathlib import Path

import trio

from server.cluster import protocol as p
from server.cluster.bucket_reads import BucketReads, Origin
from server.config import CacheConfig
from server.rpc.frames import RemoteError
from storage.chunkcache import ChunkCache
from storage.chunks import ChunkStore
from storage.kv import KvConfig, KvStore
from storage.objstore.localdir import LocalDirStore

CS = 4096


class SlowStore(LocalDirStore):
    """A directory store whose ranged GETs wait for `gate` and are counted."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gate = trio.Event()
        self.gets = 0

    async def get_range(self, key: str, start: int, end: int, *,
                        if_match: str | None = None) -> bytes:
        self.gets += 1
        await self.gate.wait()
        return await super().get_range(key, start, end, if_match=if_match)


async def test_a_retry_joins_the_fetch_its_first_try_gave_up_on(tmp_path: Path) -> None:
    store = SlowStore(tmp_path / "bucket")
    data = bytes(range(256)) * (CS // 256)
    etag = await store.put("model/shard", data)
    kv = KvStore.open_sync(tmp_path / "db", KvConfig())
    cache = ChunkCache(kv, ChunkStore(tmp_path / "chunks"), 1 << 20, lambda i, x: False, b"b")
    cache.open_sync()
    reads = BucketReads({1: store}, cache, CacheConfig(), trio.Lock())
    origin = Origin(store=1, okey=b"model/shard", etag=etag.encode(), obase=len(data),
                    chunk_size=CS)
    async with trio.open_nursery() as nursery:
        reads.nursery = nursery
        with trio.move_on_after(0.2) as first_try:
            await reads.fill(7, 0, origin)
        assert first_try.cancelled_caught  # the store had not answered: the try gave up
        assert store.gets == 1
        store.gate.set()
        got = await reads.fill(7, 0, origin)  # the retry
        assert got == data or (got is None and cache.valid(7, 0, origin.etag, count=False))
        assert store.gets == 1, "the retry joined the first fetch instead of a new GET"
    assert cache.valid(7, 0, origin.etag, count=False)  # and the bytes were kept
    kv.close_sync()


async def test_a_failed_fetch_is_its_callers_error_and_the_next_try_fetches_again(
        tmp_path: Path) -> None:
    store = SlowStore(tmp_path / "bucket")
    store.gate.set()
    etag = await store.put("k", b"x" * CS)
    kv = KvStore.open_sync(tmp_path / "db", KvConfig())
    cache = ChunkCache(kv, ChunkStore(tmp_path / "chunks"), 1 << 20, lambda i, x: False, b"b")
    cache.open_sync()
    reads = BucketReads({1: store}, cache, CacheConfig(), trio.Lock())
    stale = Origin(store=1, okey=b"k", etag=b'"not-the-etag"', obase=CS, chunk_size=CS)
    async with trio.open_nursery() as nursery:
        reads.nursery = nursery
        try:
            await reads.fill(7, 0, stale)
            raise AssertionError("a GET with a stale If-Match must fail")
        except RemoteError as e:
            assert e.code == p.ORIGIN_CHANGED, e
        fresh = Origin(store=1, okey=b"k", etag=etag.encode(), obase=CS, chunk_size=CS)
        assert await reads.fill(7, 0, fresh) == b"x" * CS
        assert store.gets == 2
    kv.close_sync()
