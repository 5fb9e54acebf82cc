"""ChunkCache: the node's clean copies of bucket chunks, bounded in bytes, evicted LRU.

Rules:
- A clean copy is a chunk file (ChunkStore's layout) holding bytes read from the bucket, named
  by (inode, chunk index) and valid only for the object version (ETag) it was read from. It is
  node-local: never replicated, never in a snapshot's meaning, always re-readable from the
  bucket, so dropping one loses nothing.
- The index lives in the node's LevelDB under `lc.c` (outside the replicated `fs.` state):
  the chunk file is written before its index entry, and the entry is deleted before the file,
  so an entry never names bytes the kernel does not hold.
- A copy is not fsynced when it is admitted (a cold read would pay an fsync per chunk for
  bytes the bucket still has). The page cache keeps it across a crash of the process, not of
  the machine, so the index records the boot it was written in (`lc.boot`, synced before the
  first admission): `close_sync` fsyncs the copies of this run and clears the mark, and an
  `open_sync` that finds the mark of another boot (the machine went down under a running
  node) drops every copy rather than trust bytes that may not have reached the disk.
- Capacity counts clean copies plus the bytes this cache cannot drop (materialized and written
  chunks, `pinned`, refreshed from the disk by `refresh_pinned_sync`). Admitting a copy evicts
  least-recently-used clean copies until it fits; when it cannot fit, the caller serves the
  bytes without keeping them.
- A chunk file the replicated state writes, trims or deletes stops being a clean copy at once
  (`untrack`, wired to ChunkStore.changed_hook): eviction never deletes bytes a write put
  there. `is_pinned(ino, index)` (the replicated "materialized" mark) is asked too, as a
  second guard, before a file is deleted.
- An apply that meets a full cache disk asks `make_room_sync` to evict clean copies: it holds
  the group's apply lock, which the periodic trim waits for, so nothing else would.
- Blocking (worker threads); one lock guards the in-memory LRU.
- `stats` counts for metrics: lookups that found the version asked for (hits) or not
  (misses), copies kept (admitted) or refused, and copies dropped: to make room (evicted) or
  because they were asked to go (forgotten: admin evict, an inode whose bytes are gone, a
  copy replaced by a newer version).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cbor2

from storage.chunks import ChunkStore
from storage.kv import KvStore

log = logging.getLogger("objcache.chunkcache")

PREFIX = b"lc.c"
BOOT_KEY = b"lc.boot"  # the boot whose unsynced copies the index may name (see the rules)
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


def current_boot_id() -> bytes:
    """This boot of the machine; elsewhere a value of this process (every start then counts
    as a new boot, so an unclean stop always drops the copies)."""
    try:
        return BOOT_ID_PATH.read_bytes().strip()
    except OSError:
        return os.urandom(16).hex().encode()


def _key(ino: int, index: int) -> bytes:
    return PREFIX + ino.to_bytes(8, "big") + index.to_bytes(8, "big")


def _parse(key: bytes) -> tuple[int, int]:
    return int.from_bytes(key[4:12], "big"), int.from_bytes(key[12:20], "big")


@dataclass(slots=True)
class _Copy:
    etag: bytes
    nbytes: int


class ChunkCache:
    def __init__(self, kv: KvStore, chunks: ChunkStore, capacity_bytes: int,
                 is_pinned: Callable[[int, int], bool] = lambda ino, index: False,
                 boot_id: bytes | None = None) -> None:
        self.kv = kv
        self.boot_id = boot_id if boot_id is not None else current_boot_id()
        self._unsynced: set[tuple[int, int]] = set()  # admitted by this run, not fsynced
        self.chunks = chunks
        self.capacity = capacity_bytes
        self.is_pinned = is_pinned
        self._lock = threading.Lock()
        self._lru: OrderedDict[tuple[int, int], _Copy] = OrderedDict()
        self.clean_bytes = 0
        self.pinned_bytes = 0
        self.stats = {"hits": 0, "misses": 0, "admitted": 0, "evicted": 0, "forgotten": 0,
                      "refused": 0}

    def open_sync(self) -> None:
        """Load the index (oldest entries first is unknown after a restart: key order); drop
        it whole when the machine went down while a run had unsynced copies."""
        self._load_index()
        marked = self.kv.get_sync(BOOT_KEY)
        if marked is not None and marked != self.boot_id and self._lru:
            log.warning("chunk cache: the machine restarted while copies were not synced; "
                        "dropping %d clean copies (%d bytes), the bucket still has them",
                        len(self._lru), self.clean_bytes)
            for key in list(self._lru):
                self._drop(*key, "forgotten")
        elif marked is not None:  # a run of this boot stopped uncleanly: its copies are ours
            self._unsynced.update(self._lru)  # to sync at our clean stop
        self.kv.write_sync([(BOOT_KEY, self.boot_id)], sync=True)
        self.refresh_pinned_sync()

    def close_sync(self) -> None:
        """Make this run's copies durable and clear the boot mark (a clean stop): the index
        is then trusted after a reboot too."""
        with self._lock:
            todo = sorted(self._unsynced)
            self._unsynced.clear()
        self.chunks.sync_files_sync(todo)
        self.kv.write_sync([(BOOT_KEY, None)], sync=True)

    def _load_index(self) -> None:
        start = PREFIX
        while True:
            rows = self.kv.iterate_sync(prefix=PREFIX, start=start)
            for key, value in rows:
                etag, nbytes = cbor2.loads(value)
                self._lru[_parse(key)] = _Copy(etag, nbytes)
                self.clean_bytes += nbytes
            if len(rows) < self.kv.config.max_scan_items:
                break
            start = rows[-1][0] + b"\0"

    def refresh_pinned_sync(self) -> None:
        """Recount the chunk bytes on disk that are not clean copies."""
        total = 0
        for dirent in os.scandir(self.chunks.root):
            if not dirent.is_dir():
                continue
            try:
                files = list(os.scandir(dirent.path))
            except FileNotFoundError:
                continue  # an apply deleted the inode meanwhile (the start-up counts unlocked)
            for f in files:
                try:
                    total += f.stat().st_size
                except FileNotFoundError:
                    pass
        with self._lock:
            self.pinned_bytes = max(0, total - self.clean_bytes)

    def valid(self, ino: int, index: int, etag: bytes, *, count: bool = True) -> bool:
        """Whether a clean copy of that version is here (and mark it recently used).
        `count=False`: a second look by the same read, not another hit or miss."""
        with self._lock:
            c = self._lru.get((ino, index))
            if c is None or c.etag != etag:
                if count:
                    self.stats["misses"] += 1
                return False
            self._lru.move_to_end((ino, index))
            if count:
                self.stats["hits"] += 1
            return True

    def admit_sync(self, ino: int, index: int, etag: bytes, data: bytes) -> bool:
        """Keep `data` as the clean copy of chunk (ino, index) at `etag`. False: it does not
        fit even after evicting every clean copy (the caller serves it uncached)."""
        need = len(data)
        with self._lock:
            fits = need <= self.capacity - self.pinned_bytes  # with every clean copy gone
        for v in self._victims(need, (ino, index)) if fits else ():
            self._drop(*v)
        if self.clean_bytes + self.pinned_bytes + need > self.capacity:
            with self._lock:
                self.stats["refused"] += 1
            return False
        self.forget_sync(ino, index)
        self.chunks.write_chunk_file_sync(ino, index, data)
        self.kv.write_sync([(_key(ino, index), cbor2.dumps([etag, need]))], sync=False)
        with self._lock:
            self._unsynced.add((ino, index))
            self._lru[(ino, index)] = _Copy(etag, need)
            self.clean_bytes += need
            self.stats["admitted"] += 1
        return True

    def _victims(self, need: int, keep: tuple[int, int] | None = None
                 ) -> list[tuple[int, int]]:
        """Clean copies to evict, least recently used first, so that `need` more bytes fit
        (never `keep`)."""
        with self._lock:
            out = []
            free = self.capacity - self.pinned_bytes - self.clean_bytes
            for key, c in self._lru.items():
                if free >= need:
                    break
                if key != keep:
                    out.append(key)
                    free += c.nbytes
            return out

    def _drop(self, ino: int, index: int, why: str = "evicted") -> int:
        """Forget one copy (`why`: its stats counter); delete its file unless the replicated
        state owns it now."""
        with self._lock:
            c = self._lru.pop((ino, index), None)
            if c is None:
                return 0
            self._unsynced.discard((ino, index))
            self.clean_bytes -= c.nbytes
            self.stats[why] += 1
        self.kv.write_sync([(_key(ino, index), None)], sync=False)
        if self.is_pinned(ino, index):
            with self._lock:
                self.pinned_bytes += c.nbytes
            return 0
        self.chunks.delete_chunk_sync(ino, index)
        return c.nbytes

    def untrack(self, ino: int, first: int, last: int | None) -> None:
        """Chunks [first, last] of ino (all from first on if last is None) were changed by the
        replicated state (ChunkStore.changed_hook): they are not clean copies any more. Their
        index entries go (the files stay); called under the group's apply lock."""
        with self._lock:
            keys = [k for k in self._lru
                    if k[0] == ino and k[1] >= first and (last is None or k[1] <= last)]
            for k in keys:
                c = self._lru.pop(k)
                self.clean_bytes -= c.nbytes
                self.pinned_bytes += c.nbytes
        if keys:
            self.kv.write_sync([(_key(*k), None) for k in keys], sync=False)

    def adopt(self, ino: int, index: int, etag: bytes) -> None:
        """A chunk file the replicated state held is a clean copy of `etag` now (write-back
        uploaded it; ChunkStore.adopted_hook): it counts as clean and may be evicted."""
        try:
            nbytes = os.stat(self.chunks.chunk_path(ino, index)).st_size
        except FileNotFoundError:
            return
        with self._lock:
            old = self._lru.pop((ino, index), None)
            if old is not None:
                self.clean_bytes -= old.nbytes
            self._lru[(ino, index)] = _Copy(etag, nbytes)
            self.clean_bytes += nbytes
            self.pinned_bytes = max(0, self.pinned_bytes - nbytes)
        self.kv.write_sync([(_key(ino, index), cbor2.dumps([etag, nbytes]))], sync=False)

    def trim_sync(self) -> int:
        """Evict least-recently-used clean copies until everything fits the capacity."""
        return sum(self._drop(*k) for k in self._victims(0))

    def expect_pinned(self, nbytes: int) -> None:
        """A transaction carrying `nbytes` of chunk bytes was admitted: count them pinned now
        rather than at the next recount (`refresh_pinned_sync`, which replaces the estimate
        with the disk's figure). Without this the admission let seconds of writes through
        past a full cache, and a replica's small cache disk filled (FINDINGS.md 7)."""
        with self._lock:
            self.pinned_bytes += nbytes

    def make_room_sync(self, need: int) -> int:
        """Evict clean copies, least recently used first, until `need` bytes are freed or none
        is left: the cache disk is full and an apply waits for space. Returns the bytes
        freed."""
        freed = 0
        while freed < need:
            with self._lock:
                victim = next(iter(self._lru), None)
            if victim is None:
                break
            freed += self._drop(*victim)
        return freed

    def full(self) -> bool:
        """Nothing more fits and nothing clean is left to evict: only write-back frees room."""
        with self._lock:
            return self.pinned_bytes >= self.capacity

    def pressed(self, share: float = 0.9) -> bool:
        """Bytes the cache cannot drop fill `share` of it: write-back should not wait."""
        with self._lock:
            return self.pinned_bytes >= share * self.capacity

    def forget_sync(self, ino: int, index: int | None = None) -> int:
        """Drop the clean copies of ino (one chunk, or all): `objcache admin evict`, or an
        inode whose bytes are gone. Returns the bytes freed."""
        with self._lock:
            if index is not None:  # every admission asks: no scan of the whole cache
                keys = [(ino, index)] if (ino, index) in self._lru else []
            else:
                keys = [k for k in self._lru if k[0] == ino]
        return sum(self._drop(*k, "forgotten") for k in keys)

    def inodes(self) -> list[int]:
        with self._lock:
            return sorted({k[0] for k in self._lru})

    def usage(self) -> dict[str, int]:
        with self._lock:
            return {"capacity_bytes": self.capacity, "clean_bytes": self.clean_bytes,
                    "pinned_bytes": self.pinned_bytes, "clean_chunks": len(self._lru),
                    **self.stats}
