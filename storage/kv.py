"""LevelDB adapter: the only module that calls plyvel.

Rules:
- Blocking calls run in worker threads through `trio.to_thread.run_sync`, limited by one
  CapacityLimiter per store (STYLE.md habit 5). The exception, asked for per call with
  `inline_when_idle=True`: when nothing else could use the event loop meanwhile (no runnable
  task, no call of this store in a thread), the call runs on the loop's thread. A worker-thread
  round trip costs about 170 µs on the 2-core VMs we run on (four thread wake-ups), as much as
  the fsync of a synced write: paying it buys something only when someone else could run.
  The `*_sync` variants are for code that already runs in a worker thread (the Raft apply
  loop, bulk loaders); never call them from the trio thread.
- A write is a batch: an iterable of (key, value) pairs where value None deletes the key. The batch
  is applied atomically; `sync=True` returns only once the batch and every earlier write of this
  store are durable.
- How a synced write becomes durable: through the journal (storage/journal.py, a ring file in
  the LevelDB directory) when it fits in one record: the record holds the batch and the unsynced
  batches written since the last record, is written with one direct synced write, and then the
  batch goes to LevelDB unsynced. Every synced batch carries JOURNAL_SEQ, the seq of its record;
  at open, the records above the JOURNAL_SEQ LevelDB holds are written again, in order (LevelDB
  keeps a prefix of its writes after a crash, and batches replayed in order are idempotent).
  Larger batches, and all of them with `journal_bytes=0`, sync LevelDB's own log, which makes
  the earlier writes durable too (the log is sequential). A LevelDB caveat for that path: when
  a full memtable switches to a new log file, the old file is closed without fsync and is
  durable only once its memtable is compacted into a (synced) table, milliseconds later.
  `checkpoint` (before the ring wraps, at open and at close) also fdatasyncs those files.
- All writes of the database go through `write_sync` (storage/raftlog.py's too, when it shares
  the store): the journal must see every unsynced batch.
- Keys and values are bytes. What they mean is the caller's business (server/fs/keys.py, ...).
- Iteration results are materialised lists with a limit, so no LevelDB iterator outlives a call
  or crosses threads.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import plyvel
import trio

from storage.journal import BLOCK, Journal, JournalError, read_records

Batch = Iterable[tuple[bytes, bytes | None]]

log = logging.getLogger("objcache.kv")

JOURNAL_FILE = "objcache-journal"  # a name LevelDB leaves alone in its directory
JOURNAL_SEQ = b"kv.journal_seq"  # -> u64: the seq of the last journaled batch LevelDB holds
_U64 = struct.Struct(">Q")


def loop_is_idle(limiter: trio.CapacityLimiter | None = None) -> bool:
    """Whether a short blocking call may run on the event loop's thread (module rules): no call
    under `limiter` (if given) is in a worker thread and no task waits to run."""
    if limiter is not None and limiter.borrowed_tokens:
        return False
    return trio.lowlevel.current_statistics().tasks_runnable == 0


class KvError(Exception):
    """LevelDB failed (corruption, I/O error, already open elsewhere)."""


@dataclass(frozen=True, slots=True)
class KvConfig:
    threads: int = 4  # concurrent blocking LevelDB calls
    block_cache_bytes: int = 64 << 20
    write_buffer_bytes: int = 16 << 20
    max_open_files: int = 500
    max_scan_items: int = 100_000  # upper bound on one iterate() call
    journal_bytes: int = 4 << 20  # the synced-write ring (module rules); 0: LevelDB syncs
    journal_record_bytes: int = 256 << 10  # larger synced batches sync LevelDB's log instead

    def __post_init__(self) -> None:
        if self.journal_bytes:
            # storage/journal.py: whole blocks, and at least two records in the ring.
            if self.journal_bytes % BLOCK or self.journal_record_bytes % BLOCK:
                raise ValueError(f"journal_bytes and journal_record_bytes must be multiples "
                                 f"of {BLOCK}")
            if not BLOCK <= self.journal_record_bytes <= self.journal_bytes // 2:
                raise ValueError("journal_record_bytes must lie between one block and half "
                                 "of journal_bytes")


class KvStore:
    """One LevelDB database. Create with `await KvStore.open(path)` or `KvStore.open_sync`."""

    def __init__(self, db: plyvel.DB, config: KvConfig, path: Path | None = None,
                 journal: Journal | None = None) -> None:
        self._db: plyvel.DB | None = db
        self.config = config
        self._limiter = trio.CapacityLimiter(config.threads)
        assert journal is None or path is not None, "a journal lives in the store's directory"
        self._path = path
        self._journal = journal
        # One writer at a time while journaling: a record's batches must be in LevelDB's order.
        self._write_lock = threading.Lock()
        # Synced batches by how they became durable, for tests and metrics: "journal" (a
        # record), "leveldb" (too large for one, or no journal); ring wraps.
        self.synced_writes = {"journal": 0, "leveldb": 0, "journal_wraps": 0}

    # -- life cycle -------------------------------------------------------------------------

    @classmethod
    def open_sync(cls, path: Path, config: KvConfig | None = None) -> KvStore:
        config = config or KvConfig()
        path.mkdir(parents=True, exist_ok=True)
        try:
            db = plyvel.DB(
                str(path),
                create_if_missing=True,
                paranoid_checks=True,
                lru_cache_size=config.block_cache_bytes,
                write_buffer_size=config.write_buffer_bytes,
                max_open_files=config.max_open_files,
            )
        except (plyvel.Error, OSError) as e:
            raise KvError(f"cannot open LevelDB at {path}: {e}") from e
        if not config.journal_bytes:
            return cls(db, config, path)
        try:
            journal = _open_journal(db, path, config)
        except BaseException:
            db.close()
            raise
        return cls(db, config, path, journal)

    @classmethod
    async def open(cls, path: Path, config: KvConfig | None = None) -> KvStore:
        return await trio.to_thread.run_sync(cls.open_sync, path, config)

    def close_sync(self) -> None:
        if self._db is None:
            return
        try:
            with self._write_lock:
                journal, self._journal = self._journal, None
                if journal is not None:
                    try:  # the next open then has nothing to replay
                        _checkpoint(self._db, self._journal_dir(), journal.next_seq - 1)
                    finally:
                        journal.close()
        finally:
            self._db.close()
            self._db = None

    async def close(self) -> None:
        await trio.to_thread.run_sync(self.close_sync, limiter=self._limiter)

    @property
    def closed(self) -> bool:
        return self._db is None

    def _journal_dir(self) -> Path:
        assert self._path is not None  # __init__: a store with a journal has its path
        return self._path

    def handle(self) -> plyvel.DB:
        """The plyvel handle, for other adapters in this package that share the database
        (storage/raftlog.py) to read with; their writes go through write_sync (module rules).
        Nothing outside storage/ may call plyvel."""
        return self._live()

    def _live(self) -> plyvel.DB:
        if self._db is None:
            raise KvError("store is closed")
        return self._db

    # -- sync API (worker threads only) -----------------------------------------------------

    def get_sync(self, key: bytes) -> bytes | None:
        try:
            return self._live().get(key)
        except plyvel.Error as e:
            raise KvError(f"get failed: {e}") from e

    def get_many_sync(self, keys: Iterable[bytes]) -> list[bytes | None]:
        db = self._live()
        try:
            return [db.get(k) for k in keys]
        except plyvel.Error as e:
            raise KvError(f"get failed: {e}") from e

    def iterate_sync(
        self,
        *,
        prefix: bytes | None = None,
        start: bytes | None = None,
        stop: bytes | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        """Items with start <= key < stop (and key starting with prefix), in key order."""
        return _iterate(self._live(), self.config.max_scan_items, prefix, start, stop, limit,
                        reverse)

    def snapshot_sync(self) -> KvSnapshot:
        """A view of the store as it is now, for reads spread over several calls that must
        agree with each other (fsck's pages). Close it when done: LevelDB keeps what it shows."""
        try:
            return KvSnapshot(self._live().snapshot(), self.config.max_scan_items)
        except plyvel.Error as e:
            raise KvError(f"snapshot failed: {e}") from e

    def write_sync(self, batch: Batch, *, sync: bool) -> None:
        db = self._live()
        if self._journal is None:
            write_batch(db, batch, sync)
            self.synced_writes["leveldb"] += sync
            return
        items = batch if isinstance(batch, list) else list(batch)
        with self._write_lock:
            journal = self._journal
            if journal is None:  # closed, or given up after an error, meanwhile
                write_batch(self._live(), items, sync)
                self.synced_writes["leveldb"] += sync
                return
            if not sync:
                write_batch(db, items, False)
                journal.note(items)
                return
            seq = journal.next_seq
            items = [*items, (JOURNAL_SEQ, _U64.pack(seq))]
            try:
                journaled = journal.append(
                    items, lambda: _checkpoint(db, self._journal_dir(), seq - 1))
            except JournalError as e:
                # Records after a failed one could never be read back: stop journaling. This
                # batch's LevelDB sync covers everything before it.
                log.warning("%s; synced writes go through LevelDB's log from now on", e)
                self._journal = None
                journal.close()
                journaled = False
            if journaled:
                self.synced_writes["journal_wraps"] = journal.wraps
                write_batch(db, items, False)
                self.synced_writes["journal"] += 1
                return
            write_batch(db, items, True)
            journal.next_seq = seq + 1
            journal.covered()
            self.synced_writes["leveldb"] += 1

    # -- async API (trio thread) ------------------------------------------------------------

    async def run_sync(self, fn, *args):  # type: ignore[no-untyped-def]
        """Run fn(*args) in a worker thread under this store's limiter (it may use *_sync)."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def get(self, key: bytes, *, inline_when_idle: bool = False) -> bytes | None:
        if inline_when_idle and loop_is_idle(self._limiter):
            return self.get_sync(key)
        return await self.run_sync(self.get_sync, key)

    async def get_many(
        self, keys: list[bytes], *, inline_when_idle: bool = False
    ) -> list[bytes | None]:
        if inline_when_idle and loop_is_idle(self._limiter):
            return self.get_many_sync(keys)
        return await self.run_sync(self.get_many_sync, keys)

    async def iterate(
        self,
        *,
        prefix: bytes | None = None,
        start: bytes | None = None,
        stop: bytes | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        def scan() -> list[tuple[bytes, bytes]]:
            return self.iterate_sync(
                prefix=prefix, start=start, stop=stop, limit=limit, reverse=reverse
            )

        return await self.run_sync(scan)

    async def write(self, batch: Batch, *, sync: bool, inline_when_idle: bool = False) -> None:
        # Materialise first: the caller's iterable must not be consumed from another thread.
        items = list(batch)
        if inline_when_idle and loop_is_idle(self._limiter):
            self.write_sync(items, sync=sync)
            return
        await self.run_sync(lambda: self.write_sync(items, sync=sync))


def write_batch(db: plyvel.DB, batch: Batch, sync: bool) -> None:
    """One atomic LevelDB batch on a plyvel handle, outside any journal: KvStore's own writes
    and those of a RaftLogStorage opened on a bare handle (tests)."""
    try:
        with db.write_batch(sync=sync) as wb:
            for key, value in batch:
                if value is None:
                    wb.delete(key)
                else:
                    wb.put(key, value)
    except plyvel.Error as e:
        raise KvError(f"write failed: {e}") from e


def _checkpoint(db: plyvel.DB, path: Path, seq: int) -> None:
    """Make everything written to `db` durable in LevelDB itself (module rules): a synced
    write, then an fdatasync of each of its log files (an older one, switched away from with
    a full memtable, was closed without one)."""
    write_batch(db, [(JOURNAL_SEQ, _U64.pack(seq))], True)
    for name in os.listdir(path):
        if not name.endswith(".log"):
            continue
        try:
            fd = os.open(path / name, os.O_RDONLY)
        except FileNotFoundError:
            continue  # compacted into a table meanwhile (LevelDB synced that)
        try:
            os.fdatasync(fd)
        except OSError as e:
            raise KvError(f"fdatasync {path / name}: {e}") from e
        finally:
            os.close(fd)


def _open_journal(db: plyvel.DB, path: Path, config: KvConfig) -> Journal:
    """Replay the journal's records that LevelDB lacks (module rules), make LevelDB hold them
    on disk, and open the ring for new records."""
    ring = path / JOURNAL_FILE
    try:
        records = read_records(ring)
    except JournalError as e:
        raise KvError(str(e)) from e
    raw = db.get(JOURNAL_SEQ)
    held = _U64.unpack(raw)[0] if raw is not None else 0
    last = held
    replayed = 0
    for seq, ops in records:
        last = max(last, seq)
        if seq > held:
            write_batch(db, [*ops, (JOURNAL_SEQ, _U64.pack(seq))], False)
            replayed += 1
    _checkpoint(db, path, last)
    if replayed:
        log.info("%s: replayed %d journaled batches (%d..%d) that LevelDB had lost", path,
                 replayed, held + 1, last)
    try:
        journal = Journal.open(ring, config.journal_bytes, config.journal_record_bytes)
    except JournalError as e:
        raise KvError(str(e)) from e
    journal.restart(last + 1)
    return journal


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key that starts with `prefix` (None: no bound)."""
    b = bytearray(prefix)
    while b and b[-1] == 0xFF:
        b.pop()
    if not b:
        return None
    b[-1] += 1
    return bytes(b)


class KvSnapshot:
    """A point-in-time view of a KvStore (a LevelDB snapshot). Reads may come from any thread;
    after close(), or after the store closed, they raise KvError."""

    def __init__(self, snap: plyvel.Snapshot, max_scan_items: int) -> None:
        self._snap = snap
        self._max = max_scan_items

    def iterate_sync(self, *, prefix: bytes | None = None, start: bytes | None = None,
                     stop: bytes | None = None, limit: int | None = None,
                     reverse: bool = False) -> list[tuple[bytes, bytes]]:
        """As KvStore.iterate_sync, over the view."""
        return _iterate(self._snap, self._max, prefix, start, stop, limit, reverse)

    def close(self) -> None:
        self._snap.close()


def _iterate(source: plyvel.DB | plyvel.Snapshot, max_items: int, prefix: bytes | None,
             start: bytes | None, stop: bytes | None, limit: int | None,
             reverse: bool) -> list[tuple[bytes, bytes]]:
    """iterate_sync of a store or a snapshot: at most `limit` items (default and bound:
    max_items)."""
    limit = max_items if limit is None else limit
    assert 0 <= limit <= max_items, limit
    out: list[tuple[bytes, bytes]] = []
    if limit == 0:
        return out
    kwargs: dict[str, bytes | bool] = {"reverse": reverse}
    if prefix is not None:
        kwargs["prefix"] = prefix
    if start is not None or stop is not None:
        # plyvel refuses prefix together with start/stop: clip the range to the prefix.
        assert prefix is None or all(
            b is None or b.startswith(prefix) for b in (start, stop)
        ), "start/stop must lie inside the prefix"
        kwargs.pop("prefix", None)
        kwargs["start"] = start if start is not None else (prefix or b"")
        if stop is not None:
            kwargs["stop"] = stop
        elif prefix is not None:
            end = prefix_end(prefix)
            if end is not None:
                kwargs["stop"] = end
    try:
        with source.iterator(**kwargs) as it:
            for item in it:
                out.append(item)
                if len(out) >= limit:
                    break
    except (plyvel.Error, RuntimeError) as e:  # RuntimeError: the view or store was closed
        raise KvError(f"iterate failed: {e}") from e
    return out
