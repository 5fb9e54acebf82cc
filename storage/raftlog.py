"""Raft log storage in LevelDB (plyvel): implements raft.log_storage.LogStorage.

Rules:
- Everything lives under one key prefix, so the log can share a LevelDB with the state machine
  (DESIGN.md: state machine + applied index in the same DB, a snapshot is a LevelDB iteration).
    prefix + b"h"              hard state          [term, vote, commit]
    prefix + b"s"              snapshot metadata   [index, term, voters, learners]
    prefix + b"c"              compaction marker   [index, term] of the last discarded entry
    prefix + b"e" + u64 BE     one entry           [index, term, type, data]
- Every value is `version (1 byte) | crc32 of body (4 bytes BE) | CBOR body` (the format and
  the checks are in raftlog_format.py). The checksum is verified on every read from disk
  (assert after reading), and the whole log is verified at open: a corrupt record, a gap, a
  tail shorter than the persisted commit index, or a hard state that contradicts the log
  raises LogCorrupted naming the key, the index and the reason. We refuse to start rather
  than serve from damaged state.
- `save()` is group commit: concurrent callers append their writes to one open batch; a single
  writer at a time writes a batch with sync=True through `trio.to_thread.run_sync` (bounded by a
  CapacityLimiter), and every caller returns only once its batch is on disk (STYLE habit 2).
- A store marked `lone_voter` (a one-voter group's log) writes its batch on the event
  loop's thread instead, when no other plyvel call is in a worker thread and either nothing
  else could run meanwhile or synced batches have lately been fast (a moving average under
  RaftLogConfig.inline_sync_below_s). The hand-off to a worker thread and back costs about
  as much CPU as a short fsync and delays the commit by ~150 µs; blocking the loop for a
  fast fsync costs the node's other tasks less (measured on 3 one-group nodes, 16 clients
  creating files: 1 280 -> 1 420 creates/s, node CPU per create 1.36 -> 1.20 ms). A slow
  disk (fsyncs of milliseconds) moves the average up and the writes back to the thread, so
  the loop keeps serving reads while they run.
- Any other store (a group with followers) writes inline only when both hold: nothing else
  could run and synced batches have lately been fast. Then the thread's round trip is pure
  delay, paid by every commit twice over (leader and follower saves are both on its path);
  a follower's loop is idle during most of its saves. Measured with bench/raft.py's
  3-member, 64-proposer cell: ~+20 % puts/s. Always inline (tasks waiting or not) was no
  better than always in the thread: the leader's loop has proposals and acks to take in
  during its save.
- One exception to "synced before save() returns", as etcd's MustSync: a save that only moves
  the commit index (no entries, no snapshot, same term and vote) is neither synced nor written
  at once: its op joins the open batch and reaches disk with the next batch (or `flush()`),
  and save() returns without waiting. The commit index is not needed for safety (a restarted
  member relearns it from the leader, and raft.log takes commit >= applied), every entry at or
  below it was synced earlier, and the batch order keeps the newest hard state last. It saves
  one fsync and one worker-thread round trip per commit on every member.
- `defer_write(ops)` lets the other user of the shared DB (the state machine, whose writes are
  unsynced anyway and replayed from the log after a crash) put its ops into the open batch the
  same way. Batches are numbered; `written_seq` is the last one on disk, so a user can serve
  its own reads from memory until then.
- The in-memory view (terms of every retained entry, unsynced entries, a bounded cache of the
  tail) is updated when a save is *queued*, in call order, so the next save can compute which
  suffix it truncates. The core only reads it after awaiting save(), which is what the driver does.
  If a write fails the store is poisoned: a failed fsync cannot be retried safely, so every later
  call raises StorageFailed and the node must restart (and re-verify at open).
- The core's reads are synchronous. term(), first_index(), last_index() always come from memory.
  entries() comes from memory unless the range is older than the tail cache (a follower far
  behind, or the driver applying committed entries after a restart); then it does a *synchronous*
  plyvel read on the event loop thread. Why: the LogStorage protocol is synchronous (the core is
  sans-I/O and cannot await), the read is bounded by max_bytes, and LevelDB serves it from its
  block cache or the page cache in well under a millisecond for the sizes the core asks for.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import plyvel
import trio

from raft.log_storage import Compacted, Unavailable
from raft.types import ConfState, Entry, HardState, SnapshotMeta
from storage.kv import KvStore, loop_is_idle, write_batch
from storage.raftlog_format import (
    ENTRY_OVERHEAD_BYTES,
    INDEX,
    Loaded,
    LogCorrupted,
    decode_entry,
    encode_record,
    entry_body,
    load_and_verify,
    snapshot_body,
)

__all__ = ["LogCorrupted", "RaftLogConfig", "RaftLogStorage", "StorageFailed", "encode_record"]


class StorageFailed(Exception):
    """An earlier write failed; the log's durable state is unknown until a restart."""


@dataclass(frozen=True, slots=True)
class RaftLogConfig:
    entry_cache_bytes: int = 64 * 1024 * 1024  # tail entries kept in memory for entries()
    max_batch_bytes: int = 64 * 1024 * 1024  # an open batch this large makes savers wait
    io_threads: int = 2  # concurrent plyvel calls in worker threads
    # A lone_voter store writes on the loop's thread, even with tasks waiting to run, while
    # its synced batches average less than this; any store when nothing else could run and
    # they do (module rules).
    inline_sync_below_s: float = 0.001


@dataclass(slots=True)
class _Batch:
    ops: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    nbytes: int = 0
    seq: int = 0
    sync: bool = False  # fsync the batch: some op in it needs to be durable on return
    written: bool = False
    error: BaseException | None = None


class RaftLogStorage:
    """LogStorage over a plyvel DB, under `prefix`. Create with `await RaftLogStorage.open(...)`."""

    def __init__(self, db: plyvel.DB, prefix: bytes, config: RaftLogConfig,
                 limiter: trio.CapacityLimiter, loaded: Loaded):
        self._db = db
        self._store: KvStore | None = None  # set by open_on_store: write through it
        self._prefix = prefix
        self._config = config
        self._limiter = limiter
        self._hard_state = loaded.hard_state
        self._snapshot = loaded.snapshot
        self._marker_index, self._marker_term = loaded.marker
        self._terms = loaded.terms  # terms[i] is the term of entry first_index() + i
        self._sizes = loaded.sizes  # and sizes[i] its stored bytes (for the log_bytes metric)
        self.log_bytes = sum(self._sizes)
        self._unsynced: dict[int, Entry] = {}  # queued, not yet on disk: never evicted
        self._cache: OrderedDict[int, Entry] = OrderedDict()  # ascending index
        self._cache_bytes = 0
        for e in loaded.tail:
            self._cache_put(e)
        self._open_batch = _Batch(seq=1)
        self.written_seq = 0  # batches 1..written_seq are written
        self._writing = False
        self._written = trio.Event()  # replaced after every batch write
        self._failed: BaseException | None = None
        # Set by the owner of a one-voter group, where the save is the whole commit latency
        # and the ~170 µs thread round trip is pure cost: its batches go on the event loop's
        # thread while the disk is fast even if other tasks wait (module rules). Left off
        # when followers' answers could arrive during the fsync (measured: writing inline
        # regardless cost a 3-member group 64 B throughput).
        self.lone_voter = False
        self.sync_seconds_avg = 0.0  # moving average of a synced batch's write
        self.batches_written = 0  # counters, for tests and metrics
        self.batches_synced = 0
        self.batches_inline = 0  # written on the event loop's thread
        self.saves = 0

    # ---- opening ----

    @classmethod
    async def open(cls, db: plyvel.DB, *, prefix: bytes = b"raft/",
                   config: RaftLogConfig | None = None,
                   limiter: trio.CapacityLimiter | None = None) -> RaftLogStorage:
        """Load and verify the log; raises LogCorrupted if it is damaged."""
        config = config or RaftLogConfig()
        limiter = limiter or trio.CapacityLimiter(config.io_threads)
        loaded = await trio.to_thread.run_sync(
            load_and_verify, db, prefix, config.entry_cache_bytes, limiter=limiter)
        return cls(db, prefix, config, limiter, loaded)

    @classmethod
    async def open_on_store(cls, store: KvStore, *, prefix: bytes = b"raft/",
                            config: RaftLogConfig | None = None) -> RaftLogStorage:
        """Share the node's one LevelDB with the state machine (LevelDB allows one handle per
        process, and DESIGN.md wants log and state in one DB)."""
        config = config or RaftLogConfig()
        storage = await cls.open(store.handle(), prefix=prefix, config=config)
        storage._store = store  # writes go through the store: its journal sees them all
        return storage

    # ---- LogStorage: synchronous reads ----

    def initial_state(self) -> tuple[HardState, SnapshotMeta | None]:
        return self._hard_state, self._snapshot

    def first_index(self) -> int:
        return self._marker_index + 1

    def last_index(self) -> int:
        return self._marker_index + len(self._terms)

    def term(self, index: int) -> int:
        self._check_ok()
        if index == self._marker_index:
            return self._marker_term
        if index < self._marker_index:
            raise Compacted(index)
        if index > self.last_index():
            raise Unavailable(index)
        return self._terms[index - self.first_index()]

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        self._check_ok()
        if lo < self.first_index():
            raise Compacted(lo)
        if hi > self.last_index() + 1:
            raise Unavailable(hi)
        out: list[Entry] = []
        size = 0
        i = lo
        while i < hi:
            e = self._unsynced.get(i) or self._cache.get(i)
            if e is None:
                # Older than the tail cache: a synchronous read (see the module header for why).
                batch = self._read_range(i, hi, max_bytes - size)
                if not batch:
                    break
                run = batch
            else:
                run = [e]
            for e in run:
                size += len(e.data)
                if out and size > max_bytes:
                    return out
                out.append(e)
            i = out[-1].index + 1
        return out

    def _read_range(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries from disk, from `lo` up to the first one held in memory (a newer version)."""
        out: list[Entry] = []
        size = 0
        with self._db.iterator(start=self._entry_key(lo), stop=self._entry_key(hi)) as it:
            for expect, (key, value) in enumerate(it, start=lo):
                if expect in self._unsynced or expect in self._cache:
                    break
                if key != self._entry_key(expect):
                    break
                e = decode_entry(key, value, expect)  # verifies the checksum
                out.append(e)
                size += len(e.data)
                if size > max_bytes:
                    break
        if not out:
            raise LogCorrupted("entry missing on disk", key=self._entry_key(lo), index=lo)
        return out

    # ---- LogStorage: durable writes ----

    async def save(self, hard_state: HardState | None, entries: Sequence[Entry],
                   snapshot: SnapshotMeta | None = None) -> None:
        await self._wait_for_room()
        previous = self._hard_state
        must_sync = bool(entries) or snapshot is not None or (
            hard_state is not None
            and (hard_state.term, hard_state.vote) != (previous.term, previous.vote))
        ops: list[tuple[bytes, bytes | None]] = []
        if snapshot is not None:
            self._plan_snapshot(snapshot, ops)
        if entries:
            self._plan_entries(entries, ops)
        if hard_state is not None:
            self._hard_state = hard_state
            ops.append((self._prefix + b"h", encode_record(
                [hard_state.term, hard_state.vote, hard_state.commit])))
        self.saves += 1
        if not must_sync:
            self._defer(ops)  # commit index only: rides with the next batch (module header)
            return
        await self._commit(ops, entries, sync=must_sync)

    def defer_write(self, ops: list[tuple[bytes, bytes | None]]) -> int:
        """Queue ops of the DB's other user (outside our prefix) to be written, unsynced, with
        the next batch; returns that batch's number (on disk once written_seq reaches it)."""
        self._check_ok()
        assert not any(k.startswith(self._prefix) for k, _ in ops), "ops inside the log's prefix"
        self._defer(ops)
        return self._open_batch.seq

    @property
    def unwritten_bytes(self) -> int:
        """Bytes queued in the open batch (the caller of defer_write bounds this with flush)."""
        return self._open_batch.nbytes

    async def flush(self) -> None:
        """Write whatever waits in the open batch (a deferred commit index), unsynced."""
        await self._wait_for_room()
        if self._open_batch.ops:
            await self._commit([], sync=False)

    async def create_snapshot(self, index: int, conf: ConfState) -> SnapshotMeta:
        """Record that the state machine holds a snapshot at `index` (its applied index, in the
        same DB) with membership `conf`; the log is kept. Call before compact(index): after a
        restart the core takes the membership before the first retained entry from it.
        (Additive to the LogStorage protocol, like raft.memory_storage.create_snapshot.)"""
        await self._wait_for_room()
        meta = SnapshotMeta(index, self.term(index), conf)
        ops: list[tuple[bytes, bytes | None]] = []
        self._record_snapshot(meta, ops)
        await self._commit(ops)
        return meta

    async def compact(self, index: int) -> None:
        """Discard entries up to and including `index`; a no-op below the first index."""
        await self._wait_for_room()
        if index < self.first_index():
            return
        assert index <= self.last_index(), f"compact({index}) beyond last {self.last_index()}"
        term = self.term(index)
        ops: list[tuple[bytes, bytes | None]] = []
        self._discard_through(index, term, ops)
        await self._commit(ops)

    def _plan_snapshot(self, snap: SnapshotMeta, ops: list[tuple[bytes, bytes | None]]) -> None:
        # A snapshot from the leader replaces the whole log (as raft.memory_storage and etcd
        # do): the core has restored its log to end at the snapshot, and entries we kept past it
        # could conflict with the leader's (log matching says nothing after the matching entry).
        assert snap.index > self._marker_index, "snapshot older than the log's start"
        self._truncate_after(self._marker_index, ops)
        self._marker_index, self._marker_term = snap.index, snap.term
        ops.append((self._prefix + b"c", encode_record([snap.index, snap.term])))
        self._record_snapshot(snap, ops)

    def _record_snapshot(self, snap: SnapshotMeta, ops: list[tuple[bytes, bytes | None]]) -> None:
        self._snapshot = snap
        ops.append((self._prefix + b"s", encode_record(snapshot_body(snap))))

    def _plan_entries(self, entries: Sequence[Entry], ops: list[tuple[bytes, bytes | None]]):
        # Entries already compacted are committed, so identical: skip them (as etcd does).
        entries = [e for e in entries if e.index > self._marker_index]
        if not entries:
            return
        first = entries[0].index
        assert first <= self.last_index() + 1, f"gap: append at {first}, last {self.last_index()}"
        for a, b in itertools.pairwise(entries):
            assert b.index == a.index + 1 and b.term >= a.term, "entries not contiguous"
        assert entries[0].term >= self.term(first - 1), "entry term below its predecessor's"
        self._truncate_after(first - 1, ops)  # §5.3: a conflicting suffix is deleted
        for e in entries:
            record = encode_record(entry_body(e))
            self._terms.append(e.term)
            self._sizes.append(len(record))
            self.log_bytes += len(record)
            self._unsynced[e.index] = e
            self._cache_put(e)
            ops.append((self._entry_key(e.index), record))

    def _truncate_after(self, index: int, ops: list[tuple[bytes, bytes | None]]) -> None:
        for i in range(index + 1, self.last_index() + 1):
            ops.append((self._entry_key(i), None))
            self._unsynced.pop(i, None)
            self._cache_drop(i)
        cut = index + 1 - self.first_index()
        del self._terms[cut:]
        self.log_bytes -= sum(self._sizes[cut:])
        del self._sizes[cut:]

    def _discard_through(self, index: int, term: int,
                         ops: list[tuple[bytes, bytes | None]]) -> None:
        for i in range(self.first_index(), index + 1):
            ops.append((self._entry_key(i), None))
            self._unsynced.pop(i, None)
            self._cache_drop(i)
        cut = index + 1 - self.first_index()
        del self._terms[:cut]
        self.log_bytes -= sum(self._sizes[:cut])
        del self._sizes[:cut]
        self._marker_index, self._marker_term = index, term
        ops.append((self._prefix + b"c", encode_record([index, term])))

    # ---- group commit ----

    async def _wait_for_room(self) -> None:
        self._check_ok()
        while self._open_batch.nbytes >= self._config.max_batch_bytes and self._writing:
            await self._written.wait()
            self._check_ok()

    def _defer(self, ops: list[tuple[bytes, bytes | None]]) -> None:
        batch = self._open_batch
        batch.ops.extend(ops)
        batch.nbytes += sum(len(k) + len(v or b"") for k, v in ops)

    async def _commit(self, ops: list[tuple[bytes, bytes | None]],
                      entries: Sequence[Entry] = (), *, sync: bool = True) -> None:
        batch = self._open_batch
        batch.sync = batch.sync or sync
        batch.ops.extend(ops)
        batch.entries.extend(entries)
        batch.nbytes += sum(len(k) + len(v or b"") for k, v in ops)
        while not batch.written:
            if self._writing:
                await self._written.wait()
                continue
            # Nobody is writing: this caller writes the open batch (which holds its own ops).
            await self._write_open_batch()
        if batch.error is not None:
            raise StorageFailed("raft log write failed") from batch.error

    async def _write_open_batch(self) -> None:
        self._writing = True
        batch, self._open_batch = self._open_batch, _Batch(seq=self._open_batch.seq + 1)
        try:
            if self._may_write_inline():
                self.batches_inline += 1
                self._write_timed(batch.ops, batch.sync)
            else:
                # Not abandoned on cancel: the thread finishes and the outcome is known.
                await trio.to_thread.run_sync(self._write_timed, batch.ops, batch.sync,
                                              limiter=self._limiter)
        except BaseException as exc:
            self._failed = batch.error = exc
            if isinstance(exc, Exception):
                raise StorageFailed("raft log write failed") from exc
            raise
        finally:
            batch.written = True
            self._writing = False
            self._written.set()
            self._written = trio.Event()
        self.written_seq = batch.seq
        self.batches_written += 1
        self.batches_synced += batch.sync
        for e in batch.entries:
            if self._unsynced.get(e.index) is e:  # not replaced by a later, unsynced save
                del self._unsynced[e.index]

    def _may_write_inline(self) -> bool:
        """Module rules: no plyvel call in a thread, and for a lone_voter store either a fast
        disk lately or nothing else to run; for any other store both."""
        if self._limiter.borrowed_tokens:
            return False
        fast = self.sync_seconds_avg < self._config.inline_sync_below_s
        if self.lone_voter:
            return fast or loop_is_idle()  # the limiter is free: checked above
        return fast and loop_is_idle()

    def _write_timed(self, ops: list[tuple[bytes, bytes | None]], sync: bool) -> None:
        """_write_sync, timed into sync_seconds_avg when synced (from either thread: one
        writer at a time)."""
        if not sync:
            self._write_sync(ops, sync)
            return
        start = time.perf_counter()
        self._write_sync(ops, sync)
        self.sync_seconds_avg += 0.2 * (time.perf_counter() - start - self.sync_seconds_avg)

    def _write_sync(self, ops: list[tuple[bytes, bytes | None]], sync: bool) -> None:
        if self._store is not None:
            self._store.write_sync(ops, sync=sync)
            return
        write_batch(self._db, ops, sync)

    def _check_ok(self) -> None:
        if self._failed is not None:
            raise StorageFailed("an earlier raft log write failed") from self._failed

    # ---- cache ----

    def _cache_put(self, e: Entry) -> None:
        self._cache_drop(e.index)
        self._cache[e.index] = e
        self._cache_bytes += len(e.data) + ENTRY_OVERHEAD_BYTES
        while self._cache_bytes > self._config.entry_cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)  # the oldest index: the tail stays hot
            self._cache_bytes -= len(old.data) + ENTRY_OVERHEAD_BYTES

    def _cache_drop(self, index: int) -> None:
        old = self._cache.pop(index, None)
        if old is not None:
            self._cache_bytes -= len(old.data) + ENTRY_OVERHEAD_BYTES

    def _entry_key(self, index: int) -> bytes:
        return self._prefix + b"e" + INDEX.pack(index)
