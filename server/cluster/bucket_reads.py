"""The owner's side of backed chunks (bucket.py): serve them from the ChunkCache, fetch the
missing ones from the bucket with parallel ranged GETs, keep what was fetched.

Rules:
- queries.py answers ReadHead / ReadChunk in a worker thread. For a backed chunk it calls
  `backed_bytes`: the bytes when the chunk is materialized (None: read the chunk file as
  usual), a clean copy of the right version, or bytes fetched for this request; otherwise it
  raises NeedFetch. `answer` (on the trio thread) catches that, fetches, and asks again.
- Fetches are single-flight per (inode, chunk, etag): concurrent readers and read-ahead share
  one. Every GET carries If-Match on the etag the inode names; a PreconditionFailed or a short
  object means the object changed under us: RemoteError(ORIGIN_CHANGED), and the gateway
  revalidates the file. Store outages: RemoteError(UNAVAILABLE) (the client hears JUKEBOX).
- Admission to the cache runs under the group's apply lock and only when the chunk is still
  not materialized, so a clean copy never overwrites bytes a write just applied.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from server.cluster import protocol as p
from server.cluster.bucket import BucketConfig, backed_len, first_leaf
from server.fs import keys
from server.fs.keys import decode_u64
from server.rpc.frames import RemoteError
from storage.chunkcache import ChunkCache
from storage.chunkio import ChunkIOError
from storage.objstore.base import (
    NoSuchKey,
    ObjectStore,
    PreconditionFailed,
    StoreError,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from server.cluster.group import GroupRuntime

log = logging.getLogger("objcache.bucket")

MAX_FETCH_ROUNDS = 4  # a chunk evicted between its fetch and the re-read: fetch again


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a backed chunk's bytes are: what a ReadChunk carries from the inode."""

    store: int
    okey: bytes
    etag: bytes
    obase: int
    chunk_size: int


class _Flight:
    """One fetch that concurrent readers of the same chunk version wait for."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: bytes | BaseException | None = None


class NeedFetch(Exception):
    def __init__(self, ino: int, index: int, origin: Origin) -> None:
        super().__init__(f"chunk {index} of {ino} is not cached")
        self.ino, self.index, self.origin = ino, index, origin


Fetched = dict[tuple[int, int], bytes]


class BucketReads:
    def __init__(self, stores: Mapping[int, ObjectStore], cache: ChunkCache,
                 config: BucketConfig, apply_lock: trio.Lock) -> None:
        self.stores = stores
        self.cache = cache
        self.config = config
        self.apply_lock = apply_lock
        self._inflight: dict[tuple[int, int, bytes], _Flight] = {}
        self.nursery: trio.Nursery | None = None  # background admissions (the node's)
        self.stats = {"fetches": 0, "fetched_bytes": 0, "gets": 0}

    # -- worker thread (queries.py) ---------------------------------------------------------

    def backed_bytes(self, view: Any, ino: int, index: int, origin: Origin,
                     fetched: Fetched | None, offset: int, count: int) -> bytes | None:
        """The object's bytes at [offset, offset+count) of chunk `index`, clipped at obase
        (shorter: zeros follow), or None when the chunk is materialized (the chunk file is
        the truth). Raises NeedFetch."""
        if decode_u64(view.get(keys.materialized_key(ino, index))):
            return None
        end = min(offset + count, backed_len(origin.obase, origin.chunk_size, index))
        if end <= offset:
            return b""
        got = (fetched or {}).get((ino, index))
        if got is not None:
            return got[offset:end]
        if self.cache.valid(ino, index, origin.etag):
            data = self.cache.chunks.pread_sync(ino, origin.chunk_size,
                                                index * origin.chunk_size + offset, end - offset)
            return bytes(data)
        raise NeedFetch(ino, index, origin)

    # -- trio thread ------------------------------------------------------------------------

    async def answer(self, ask: Callable[[Fetched], Awaitable[Any]]) -> Any:
        """ask(fetched) until it needs nothing more from the bucket."""
        fetched: Fetched = {}
        for _ in range(MAX_FETCH_ROUNDS):
            try:
                return await ask(fetched)
            except NeedFetch as nf:
                data = await self.fill(nf.ino, nf.index, nf.origin)
                if data is not None:
                    fetched[(nf.ino, nf.index)] = data
        raise RemoteError(p.UNAVAILABLE, "chunk kept being evicted while read")

    async def fill(self, ino: int, index: int, origin: Origin) -> bytes | None:
        """Fetch chunk `index` (single-flight) and keep it in the cache if it fits. The bytes
        are answered as soon as they arrive; keeping them (a write of up to 16 MiB) goes on
        in the background when the node gave a nursery, and the flight stays until then so
        a reader meanwhile takes its bytes instead of fetching again. None: the chunk is
        cached now (a fetch ended after the caller looked), read it from there."""
        key = (ino, index, origin.etag)
        flight = self._inflight.get(key)
        started = flight is None
        if flight is None:
            if self.cache.valid(ino, index, origin.etag, count=False):
                return None  # a fetch that ended since the caller looked: ask again
            flight = self._inflight[key] = _Flight()
            if self.nursery is None:
                await self._fly(key, index, origin, flight)
            else:
                # The fetch is the node's, not this request's: a caller whose deadline passes
                # (a 16 MiB GET from a slow or shared link can outlast one try) leaves it
                # running, and its retry joins the flight instead of starting the GET over.
                self.nursery.start_soon(self._fly, key, index, origin, flight)
        await flight.done.wait()
        result = flight.result
        if result is not None and not isinstance(result, BaseException):
            return result
        if started and isinstance(result, Exception):
            raise result  # the fetch's own error (ORIGIN_CHANGED: the gateway revalidates)
        raise RemoteError(p.UNAVAILABLE, f"fetching chunk {index} of {ino}: {result}")

    async def _fly(self, key: tuple[int, int, bytes], index: int, origin: Origin,
                   flight: _Flight) -> None:
        """Run one flight: fetch, tell the waiters, keep the bytes (module rules). A failed
        fetch is the flight's result, for its waiters; only a cancellation propagates."""
        try:
            data = await self._fetch(index, origin)
        except BaseException as e:
            flight.result = _as_remote(e)
            flight.done.set()
            del self._inflight[key]
            if not isinstance(e, Exception):
                raise
            return
        flight.result = data
        flight.done.set()
        await self._admit(key, data)

    async def _fetch(self, index: int, origin: Origin) -> bytes:
        store = self.stores.get(origin.store)
        if store is None:
            raise RemoteError(p.UNAVAILABLE, f"no object store {origin.store} on this node")
        cs = origin.chunk_size
        start = index * cs
        n = backed_len(origin.obase, cs, index)
        data = await self.fetch_range(store, origin.okey.decode(), origin.etag.decode(),
                                      start, start + n)
        self.stats["fetches"] += 1
        self.stats["fetched_bytes"] += len(data)
        return data

    async def _admit(self, key: tuple[int, int, bytes], data: bytes) -> None:
        ino, index, etag = key

        def admit_unless_pinned() -> None:
            if not self.cache.is_pinned(ino, index):
                self.cache.admit_sync(ino, index, etag, data)

        try:
            async with self.apply_lock:
                await trio.to_thread.run_sync(admit_unless_pinned)
        except (OSError, ChunkIOError) as e:  # a full or failing disk: the bytes were served
            log.warning("caching chunk %d of %d: %s", index, ino, e)
        finally:
            self._inflight.pop(key, None)

    async def drop(self, ino: int) -> int:
        """Forget every clean copy of ino's chunks here (admin evict); the bytes freed."""
        async with self.apply_lock:
            return await trio.to_thread.run_sync(self.cache.forget_sync, ino)

    async def fetch_range(self, store: ObjectStore, key: str, etag: str, start: int,
                          end: int) -> bytes:
        """[start, end) of the object at version `etag`, in parallel ranged GETs."""
        step = max(1, self.config.fetch_part_bytes)
        ranges = [(a, min(a + step, end)) for a in range(start, end, step)]
        parts: list[bytes] = [b""] * len(ranges)
        limiter = trio.CapacityLimiter(max(1, self.config.fetch_parallel))

        async def get(i: int, a: int, b: int) -> None:
            async with limiter:
                self.stats["gets"] += 1
                parts[i] = await store.get_range(key, a, b, if_match=etag)

        try:
            async with trio.open_nursery() as nursery:
                for i, (a, b) in enumerate(ranges):
                    nursery.start_soon(get, i, a, b)
        except BaseExceptionGroup as eg:
            raise _as_remote(first_leaf(eg)) from eg
        except StoreError as e:
            raise _as_remote(e) from e
        data = b"".join(parts)
        if len(data) != end - start:
            raise RemoteError(p.ORIGIN_CHANGED,
                              f"{key}: {len(data)} bytes at {start}, expected {end - start}")
        return data


ADMIT_CHECK_BYTES = 64 << 10  # transactions carrying less are never refused for space
HOUSEKEEPING_S = 2.0  # how often the pinned bytes on disk are recounted


def admission(cache: ChunkCache, stalled: Callable[[], bool]) -> Callable[[int], None]:
    """The group's admission check of data-carrying transactions: a full cache (only bytes
    write-back must upload first) answers UNAVAILABLE, which the router retries while the
    write-back makes room (flush first), and NOSPC once write-back cannot free anything."""

    def admit(nbytes: int) -> None:
        if nbytes < ADMIT_CHECK_BYTES or not cache.full():
            cache.expect_pinned(nbytes)
            return
        if stalled():
            raise RemoteError(p.NOSPC, "the cache is full and write-back cannot free it")
        raise RemoteError(p.UNAVAILABLE, "the cache is full; writing back to make room")

    return admit


async def housekeeping(reads: BucketReads, interval_s: float = HOUSEKEEPING_S) -> None:
    """Now and then: recount the pinned bytes (writes grow them without telling the cache)
    and evict clean copies down to the capacity (write-back's unpinned chunks join the
    clean copies without passing through an admission). Under the apply lock: a chunk file
    is never deleted while an apply writes it."""
    while True:
        await trio.sleep(interval_s)
        async with reads.apply_lock:
            await trio.to_thread.run_sync(reads.cache.refresh_pinned_sync)
            await trio.to_thread.run_sync(reads.cache.trim_sync)


async def attach(runtime: GroupRuntime, stores: Mapping[int, ObjectStore],
                 config: BucketConfig) -> BucketReads:
    """Give a group member its ChunkCache and bucket reads (the node does this at start)."""
    kv, chunks = runtime.kv, runtime.sm.chunks

    def pinned(ino: int, index: int) -> bool:
        return bool(decode_u64(kv.get_sync(keys.materialized_key(ino, index))))

    cache = ChunkCache(kv, chunks, config.capacity_bytes, pinned)
    await trio.to_thread.run_sync(cache.open_sync)
    chunks.changed_hook = cache.untrack
    chunks.adopted_hook = cache.adopt
    runtime.sm.make_room = cache.make_room_sync
    disk = await trio.to_thread.run_sync(_disk_bytes, chunks.root)
    if disk < config.capacity_bytes:
        log.warning("the cache directory's file system (%d bytes) is smaller than "
                    "cache.capacity_bytes (%d): when it fills, this node's applies wait for "
                    "write-back to free room", disk, config.capacity_bytes)
    runtime.bucket = BucketReads(stores, cache, config, runtime.apply_lock)
    return runtime.bucket


def _disk_bytes(path: Path) -> int:
    """The size of the file system holding `path`."""
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def _as_remote(e: BaseException) -> BaseException:
    if isinstance(e, RemoteError):
        return e
    if isinstance(e, PreconditionFailed):
        return RemoteError(p.ORIGIN_CHANGED, str(e))
    if isinstance(e, StoreUnavailable):
        return RemoteError(p.UNAVAILABLE, f"object store: {e}")
    if isinstance(e, StoreError):
        log.warning("object store error: %s", e)
        code = p.ORIGIN_CHANGED if isinstance(e, NoSuchKey) else p.UNAVAILABLE
        return RemoteError(code, f"object store: {type(e).__name__}: {e}")
    return e
