"""The metadata store of one node: caches over LevelDB, and the single writer that applies records.

Rules:
- Readers (getattr, lookup, readdir) never take a lock: they read the caches, else LevelDB in a
  worker thread. The `*_nowait` readers answer from the caches only (NOT_CACHED otherwise), for
  the gateway's path that answers without a task or a thread. Cached values are immutable
  (frozen dataclasses), so a reader sees either the value before a change or after it.
- Writers hold the lock (`writing()`) from their first check to `commit()` returning, so what
  they checked is what they change (one writer at a time, as one Raft group applies one entry at
  a time).
- `commit()` runs `state.apply` against the caches (a miss loads the key and applies again: apply
  is pure), updates the caches before the LevelDB write so that no reader can see a value older
  than one it already saw, then writes the batch. A commit that must be durable fsyncs in that
  write when no other writer waits, else in one shared fsync after the lock is released (group
  commit): `writing()` returns only when it is on disk. LevelDB calls run on the event loop's
  thread when nothing else could run meanwhile (storage/kv.py, inline_when_idle).
- WRITE's metadata (size, mtime), and the bytes of small inline files, are pending in memory
  until the next commit or flush, which turns them into WriteMeta / WriteInline records; readers
  see them through `inode()` and `inline()`. Losing them in a crash is what the write verifier
  announces (RFC 1813 §3.3.7).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import trio

from nfs_gateway.backend import FileType, IOError_
from server.fs import keys
from server.fs.changes import Changes, StateError
from server.fs.config import FsConfig
from server.fs.dirindex import CompleteDirs
from server.fs.keys import decode_u64
from server.fs.record_codec import RecordError, decode
from server.fs.records import Dirent, Inode, Multi, WriteInline, WriteMeta, replace_inode
from server.fs.state import apply
from storage.kv import KvError, KvStore

K = TypeVar("K")
V = TypeVar("V")
_MISSING = object()
NOT_CACHED: object = _MISSING  # what the *_nowait readers return when they would need LevelDB
_SUID_SGID = 0o6000
_MAX_APPLY_ATTEMPTS = 16  # each retry loads what the previous attempt missed


async def acquire_lock(lock: trio.Lock) -> None:
    """`lock.acquire()` without its scheduling round when the lock is free: a free lock is
    taken at once (still a checkpoint when it is not). Every metadata change and WRITE takes
    one or two locks, and each round costs a pass of the event loop."""
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()


class InoLock:
    """The lock of inode `ino` in `table`, kept there only while some task holds or waits for
    it: a plain async context manager (entered by every WRITE: LocalBackend._ino_lock, and
    the cluster gateway's WRITEs to one file, server/cluster/gateway_data.py)."""

    __slots__ = ("_ino", "_lock", "_table")

    def __init__(self, table: dict[int, tuple[trio.Lock, int]], ino: int) -> None:
        self._table = table
        self._ino = ino

    async def __aenter__(self) -> None:
        lock, users = self._table.get(self._ino) or (trio.Lock(), 0)
        self._table[self._ino] = (lock, users + 1)
        self._lock = lock
        try:
            await acquire_lock(lock)
        except BaseException:
            self._leave()
            raise

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> bool:
        self._lock.release()
        self._leave()
        return False

    def _leave(self) -> None:
        lock, users = self._table[self._ino]
        if users == 1:
            del self._table[self._ino]
        else:
            self._table[self._ino] = (lock, users - 1)


class MetaIOError(IOError_):
    """LevelDB failed under the metadata (NFS3ERR_IO); after a failed write the caches were
    reset."""


def decode_value(raw: bytes) -> object:
    try:
        return decode(raw)
    except RecordError as e:  # a damaged value on disk is a hard I/O error, not a bug here
        raise MetaIOError(f"corrupt metadata: {e}") from e


class Lru(Generic[K, V]):
    def __init__(self, capacity: int) -> None:
        assert capacity >= 1
        self.capacity = capacity
        self._d: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, default: object = _MISSING) -> V | object:
        v = self._d.get(key, _MISSING)
        if v is not _MISSING:
            self._d.move_to_end(key)
            return v
        return default

    def put(self, key: K, value: V) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.capacity:
            self._d.popitem(last=False)

    def clear(self) -> None:
        self._d.clear()

    def __len__(self) -> int:
        return len(self._d)


@dataclass(slots=True)
class _Pending:
    inode: Inode  # what readers see
    end: int
    time_ns: int
    clear_suid: bool
    since: float  # trio time of the oldest write folded in
    blob: bytes | None = None  # inline files: all of their bytes

    def record(self) -> WriteMeta | WriteInline:
        if self.blob is not None:
            return WriteInline(self.inode.ino, 0, self.blob, self.time_ns, self.clear_suid)
        return WriteMeta(self.inode.ino, self.end, self.time_ns, self.clear_suid)


class _Miss(Exception):
    def __init__(self, kind: str, key: object) -> None:
        self.kind = kind
        self.key = key


class _CacheView:
    """state.View over the caches; a miss aborts the apply so commit() can load and retry."""

    def __init__(self, store: MetaStore) -> None:
        self.s = store

    def inode(self, ino: int) -> Inode | None:
        v = self.s._inodes.get(ino)
        if v is _MISSING:
            raise _Miss("inode", ino)
        return v  # type: ignore[return-value]

    def dirent(self, dir_ino: int, name: bytes) -> Dirent | None:
        v = self.s._dirents.get((dir_ino, name))
        if v is _MISSING:
            if self.s.complete.has(dir_ino, name) is False:
                return None
            raise _Miss("dirent", (dir_ino, name))
        return v  # type: ignore[return-value]

    def meta_int(self, key: bytes) -> int:
        return self.s.meta[key]

    def inline(self, ino: int) -> bytes:
        v = self.s._inlines.get(ino)
        if v is _MISSING:
            raise _Miss("inline", ino)
        return v  # type: ignore[return-value]


class _Writing:
    """MetaStore.writing(): a plain async context manager, not a generator-based one (it is
    entered for every change and WRITE flush, and the generator machinery showed in profiles)."""

    __slots__ = ("_on_error", "_store")

    def __init__(
        self, store: MetaStore, on_error: Callable[[MetaIOError], Exception] | None
    ) -> None:
        self._store = store
        self._on_error = on_error

    async def __aenter__(self) -> None:
        await acquire_lock(self._store.lock)
        self._store._txn_sync_seq = 0

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
        s = self._store
        seq = s._txn_sync_seq
        s.lock.release()
        if exc is not None:
            if isinstance(exc, MetaIOError) and self._on_error is not None:
                raise self._on_error(exc) from exc
            return False
        if seq > s._durable_seq:
            try:
                await s._wait_durable(seq)
            except MetaIOError as e:
                if self._on_error is None:
                    raise
                raise self._on_error(e) from e
        return False


class MetaStore:
    META_KEYS = (keys.NEXT_INO, keys.APPLIED_INDEX, keys.INODE_COUNT)

    def __init__(self, kv: KvStore, config: FsConfig) -> None:
        self.kv = kv
        self.config = config
        self.lock = trio.Lock()
        self._inodes: Lru[int, Inode | None] = Lru(config.inode_cache_entries)
        self._dirents: Lru[tuple[int, bytes], Dirent | None] = Lru(config.dirent_cache_entries)
        self._inlines: Lru[int, bytes] = Lru(config.inline_cache_entries)
        self.complete = CompleteDirs(config.complete_dir_names)
        self._pending: dict[int, _Pending] = {}
        self._pending_bytes = 0  # inline bytes waiting in _pending
        self.meta: dict[bytes, int] = {}
        self._next_ino = 0  # ids handed out but maybe not yet committed are never reused
        self._written_seq = 0  # batches written (without fsync) in this run
        self._durable_seq = 0  # batches known to be on disk
        self._txn_sync_seq = 0  # what the current writer must see durable before replying
        self._sync_done: trio.Event | None = None  # set when the running fsync finishes

    async def load(self) -> None:
        raws = await self._get_many(list(self.META_KEYS))
        self.meta = {k: decode_u64(v) for k, v in zip(self.META_KEYS, raws, strict=True)}

    # -- reads ------------------------------------------------------------------------------

    async def inode(self, ino: int) -> Inode | None:
        p = self._pending.get(ino)
        if p is not None:
            return p.inode
        v = self._inodes.get(ino)
        if v is not _MISSING:
            return v  # type: ignore[return-value]
        raw = await self._get(keys.inode_key(ino))
        inode = None if raw is None else decode_value(raw)
        # A commit may have raced with our read: never replace what it cached meanwhile.
        v = self._inodes.get(ino)
        if v is _MISSING:
            self._inodes.put(ino, inode)
            return inode
        return v  # type: ignore[return-value]

    def inode_nowait(self, ino: int) -> Inode | object | None:
        """The inode (None: absent) if known without I/O, else NOT_CACHED."""
        p = self._pending.get(ino)
        if p is not None:
            return p.inode
        return self._inodes.get(ino)

    def dirent_nowait(self, dir_ino: int, name: bytes) -> Dirent | object | None:
        """The entry (None: absent) if known without I/O, else NOT_CACHED."""
        v = self._dirents.get((dir_ino, name))
        if v is _MISSING and self.complete.has(dir_ino, name) is False:
            return None
        return v

    def inline_nowait(self, ino: int) -> bytes | object:
        """An inline file's bytes if known without I/O, else NOT_CACHED."""
        p = self._pending.get(ino)
        if p is not None and p.blob is not None:
            return p.blob
        return self._inlines.get(ino)

    async def inodes(self, inos: list[int]) -> list[Inode | None]:
        """Many inodes with at most one worker-thread hop (READDIRPLUS)."""
        out: list[Inode | object | None] = []
        missing = []
        for ino in inos:
            p = self._pending.get(ino)
            v = p.inode if p is not None else self._inodes.get(ino)
            out.append(v)
            if v is _MISSING:
                missing.append(ino)
        if missing:
            raws = await self._get_many([keys.inode_key(i) for i in missing])
            loaded = {
                i: (None if r is None else decode_value(r))
                for i, r in zip(missing, raws, strict=True)
            }
            for i, inode in loaded.items():
                if self._inodes.get(i) is _MISSING:
                    self._inodes.put(i, inode)
            out = [loaded[i] if v is _MISSING else v for i, v in zip(inos, out, strict=True)]
        return out  # type: ignore[return-value]

    async def inline(self, ino: int) -> bytes:
        """The bytes of an inline file (b"" if it has none)."""
        p = self._pending.get(ino)
        if p is not None and p.blob is not None:
            return p.blob
        v = self._inlines.get(ino)
        if v is not _MISSING:
            return v  # type: ignore[return-value]
        await self._load_inline(ino)
        v = self._inlines.get(ino)
        return b"" if v is _MISSING else v  # type: ignore[return-value]

    async def dirent(self, dir_ino: int, name: bytes) -> Dirent | None:
        key = (dir_ino, name)
        v = self._dirents.get(key)
        if v is not _MISSING:
            return v  # type: ignore[return-value]
        if self.complete.has(dir_ino, name) is False:
            return None
        raw = await self._get(keys.dirent_key(dir_ino, name))
        d = None if raw is None else decode_value(raw)
        v = self._dirents.get(key)
        if v is _MISSING:
            self._dirents.put(key, d)
            return d
        return v  # type: ignore[return-value]

    # -- WRITE metadata ---------------------------------------------------------------------

    def note_write(self, inode: Inode, end: int, time_ns: int, clear_suid: bool) -> Inode:
        """Fold a WRITE into the pending metadata of `inode` (the current value); no I/O."""
        p = self._pending.get(inode.ino)
        mode = inode.mode & ~_SUID_SGID if clear_suid else inode.mode
        new = replace_inode(
            inode, size=max(inode.size, end), mode=mode, mtime_ns=time_ns, ctime_ns=time_ns
        )
        if p is None:
            self._pending[inode.ino] = _Pending(new, end, time_ns, clear_suid, trio.current_time())
        else:
            p.inode = new
            p.end = max(p.end, end)
            p.time_ns = time_ns
            p.clear_suid = p.clear_suid or clear_suid
        return new

    def note_inline_write(
        self, inode: Inode, blob: bytes, offset: int, data: bytes, time_ns: int, clear_suid: bool
    ) -> Inode:
        """Fold a WRITE of a small file into pending state: `blob` is the file's current bytes
        (from inline()); the new bytes wait in memory like a chunk WRITE's size. No I/O."""
        end = offset + len(data)
        new_blob = blob[:offset] + bytes(max(0, offset - len(blob))) + data + blob[end:]
        mode = inode.mode & ~_SUID_SGID if clear_suid else inode.mode
        new = replace_inode(
            inode,
            size=max(inode.size, end),
            mode=mode,
            mtime_ns=time_ns,
            ctime_ns=time_ns,
            inline=True,
        )
        p = self._pending.get(inode.ino)
        if p is not None:
            self._pending_bytes -= len(p.blob or b"")
        since = trio.current_time() if p is None else p.since
        clear = clear_suid or (p is not None and p.clear_suid)
        self._pending[inode.ino] = _Pending(new, new.size, time_ns, clear, since, new_blob)
        self._pending_bytes += len(new_blob)
        return new

    def pending_due(self) -> bool:
        if len(self._pending) >= self.config.max_pending_meta:
            return True
        if self._pending_bytes >= self.config.max_pending_inline_bytes:
            return True
        if not self._pending:
            return False
        oldest = next(iter(self._pending.values())).since  # dict order: first folded in
        return trio.current_time() - oldest >= self.config.pending_meta_max_age_s

    # -- writes -----------------------------------------------------------------------------

    def writing(self, on_error: Callable[[MetaIOError], Exception] | None = None) -> _Writing:
        """Hold the writer lock; on leaving, wait until what was committed with sync=True is
        durable. The fsync happens after the lock is released, so writers that commit while one
        fsync runs share the next one (group commit). `on_error` turns a MetaIOError raised in
        the block or by that wait into the exception to raise instead."""
        return _Writing(self, on_error)

    async def commit(self, records: list[object], *, sync: bool) -> Changes:
        """Apply records (after any pending WRITE metadata) in one batch, inside `writing()`."""
        assert self.lock.locked()
        changes = await self._apply_cached(records)
        # With no other writer queued there is nothing to group with: fsync in this write
        # (one thread hop) rather than in a barrier after it (two).
        if sync and not changes and self._durable_seq == self._written_seq:
            return changes  # everything written so far is durable already
        sync_now = sync and self.lock.statistics().tasks_waiting == 0 and self._sync_done is None
        if changes or sync_now:
            try:
                await self.kv.write(changes.batch(), sync=sync_now, inline_when_idle=True)
            except KvError as e:
                self._reset_caches()
                raise MetaIOError(str(e)) from e
            self._written_seq += 1
            if sync_now:
                self._durable_seq = self._written_seq
        if sync:
            self._txn_sync_seq = self._written_seq
        return changes

    async def _wait_durable(self, seq: int) -> None:
        """Return once batch `seq` and all before it are on disk: one LevelDB sync write
        fsyncs its log, which holds every earlier write."""
        while self._durable_seq < seq:
            if self._sync_done is not None:
                await self._sync_done.wait()
                continue
            self._sync_done = done = trio.Event()
            target = self._written_seq
            try:
                await self.kv.write(
                    [(keys.SYNC_MARK, keys.u64(target))], sync=True, inline_when_idle=True
                )
            except KvError as e:
                raise MetaIOError(str(e)) from e
            finally:
                self._sync_done = None
                done.set()
            self._durable_seq = max(self._durable_seq, target)

    async def flush(self, *, sync: bool) -> None:
        """Write pending WRITE metadata (and make everything durable when sync)."""
        async with self.writing():
            await self.commit([], sync=sync)

    async def _apply_cached(self, records: list[object]) -> Changes:
        for _ in range(_MAX_APPLY_ATTEMPTS):
            # From here to _publish nothing awaits, so the pending metadata folded into this
            # batch is exactly what is drained, and readers switch from it to the new cache
            # values in one step.
            batch: list[object] = [p.record() for p in self._pending.values()]
            batch += records
            changes = Changes()
            if not batch:
                return changes
            record = batch[0] if len(batch) == 1 else Multi(tuple(batch))
            try:
                apply(record, _CacheView(self), changes, self.meta[keys.APPLIED_INDEX] + 1)
            except _Miss as miss:
                if miss.kind == "inode":
                    await self._load_inode(miss.key)  # type: ignore[arg-type]
                elif miss.kind == "inline":
                    await self._load_inline(miss.key)  # type: ignore[arg-type]
                else:
                    await self._load_dirent(*miss.key)  # type: ignore[misc]
                continue
            self._pending = {}
            self._pending_bytes = 0
            self._publish(changes)
            return changes
        raise StateError("apply kept missing the cache")

    async def _load_inode(self, ino: int) -> None:
        raw = await self._get(keys.inode_key(ino))
        if self._inodes.get(ino) is _MISSING:
            self._inodes.put(ino, None if raw is None else decode_value(raw))

    async def _load_inline(self, ino: int) -> None:
        raw = await self._get(keys.inline_key(ino))
        if self._inlines.get(ino) is _MISSING:
            self._inlines.put(ino, raw or b"")

    async def _load_dirent(self, dir_ino: int, name: bytes) -> None:
        raw = await self._get(keys.dirent_key(dir_ino, name))
        if self._dirents.get((dir_ino, name)) is _MISSING:
            self._dirents.put((dir_ino, name), None if raw is None else decode_value(raw))

    def _publish(self, changes: Changes) -> None:
        for ino, inode in changes.inodes.items():
            old = self._inodes.get(ino)
            self._inodes.put(ino, inode)
            if inode is None:
                self.complete.removed(ino)
            elif inode.ftype == FileType.DIR and old is None:  # created by this batch
                self.complete.created(ino)
        for key, d in changes.dirents.items():
            self._dirents.put(key, d)
            if d is None:
                self.complete.unlinked(*key)
            else:
                self.complete.linked(*key)
        for ino, blob in changes.inlines.items():
            self._inlines.put(ino, blob or b"")
        self.meta.update(changes.meta)

    def _reset_caches(self) -> None:
        self._inodes.clear()
        self._dirents.clear()
        self._inlines.clear()
        self.complete.clear()
        self._pending.clear()
        self._pending_bytes = 0

    async def _get(self, key: bytes) -> bytes | None:
        try:
            return await self.kv.get(key, inline_when_idle=True)
        except KvError as e:
            raise MetaIOError(str(e)) from e

    async def _get_many(self, keys_: list[bytes]) -> list[bytes | None]:
        try:
            return await self.kv.get_many(keys_, inline_when_idle=True)
        except KvError as e:
            raise MetaIOError(str(e)) from e

    async def scan(self, start: bytes, stop: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
        """Rows with start <= key < stop (directory pages, emptiness checks)."""
        try:
            return await self.kv.iterate(start=start, stop=stop, limit=limit)
        except KvError as e:
            raise MetaIOError(str(e)) from e

    def alloc_ino(self) -> int:
        """A fresh inode id; the CreateInode that uses it advances the persisted counter."""
        ino = max(self._next_ino, self.meta[keys.NEXT_INO], 2)
        self._next_ino = ino + 1
        self._inodes.put(ino, None)  # known absent: apply need not ask LevelDB
        self._inlines.put(ino, b"")  # nor for its (absent) inline bytes
        return ino
