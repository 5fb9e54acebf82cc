"""storage/raftlog.py: LogStorage over LevelDB (Raft paper §5.3 log matching, §7 compaction)."""

from __future__ import annotations

import threading
import time

import cbor2
import plyvel
import pytest
import trio

from raft.log_storage import Compacted, Unavailable
from raft.types import ConfState, Entry, EntryType, HardState, SnapshotMeta
from storage import raftlog
from storage.raftlog import LogCorrupted, RaftLogConfig, RaftLogStorage, StorageFailed

PREFIX = b"raft/"


def ents(lo: int, hi: int, term: int, size: int = 8) -> list[Entry]:
    return [Entry(term=term, index=i, data=bytes([i % 256]) * size) for i in range(lo, hi)]


@pytest.fixture
def db(tmp_path):
    d = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    yield d
    if not d.closed:
        d.close()


def reopen(db_, tmp_path) -> plyvel.DB:
    db_.close()
    return plyvel.DB(str(tmp_path / "db"))


def entry_key(index: int) -> bytes:
    return PREFIX + b"e" + index.to_bytes(8, "big")


async def test_fresh_log_has_sentinel(db):
    s = await RaftLogStorage.open(db)
    assert s.initial_state() == (HardState(), None)
    assert (s.first_index(), s.last_index(), s.term(0)) == (1, 0, 0)
    with pytest.raises(Unavailable):
        s.term(1)


async def test_round_trip_and_restart(db, tmp_path):
    s = await RaftLogStorage.open(db)
    batch = [*ents(1, 11, term=1), Entry(term=2, index=11, type=EntryType.NOOP)]
    await s.save(HardState(term=2, vote=3, commit=7), batch)
    assert s.last_index() == 11 and s.term(11) == 2 and s.term(5) == 1
    assert s.entries(1, 12, 1 << 20) == batch
    db = reopen(db, tmp_path)
    s2 = await RaftLogStorage.open(db)
    assert s2.initial_state() == (HardState(term=2, vote=3, commit=7), None)
    assert s2.entries(1, 12, 1 << 20) == batch
    db.close()


async def test_entries_respects_max_bytes_but_returns_one(db):
    s = await RaftLogStorage.open(db)
    await s.save(HardState(term=1), ents(1, 6, term=1, size=100))
    assert len(s.entries(1, 6, 0)) == 1
    assert len(s.entries(1, 6, 250)) == 2
    with pytest.raises(Unavailable):
        s.entries(1, 7, 1000)


async def test_reads_below_tail_cache_come_from_disk(db, tmp_path):
    # A cache of ~2 entries: most reads miss and go to LevelDB (the documented sync read).
    cfg = RaftLogConfig(entry_cache_bytes=300)
    s = await RaftLogStorage.open(db, config=cfg)
    batch = ents(1, 21, term=1, size=100)
    await s.save(HardState(term=1), batch)
    assert s.entries(1, 21, 1 << 20) == batch
    assert s.entries(3, 9, 350) == batch[2:5]
    db = reopen(db, tmp_path)
    s2 = await RaftLogStorage.open(db, config=cfg)
    assert s2.entries(1, 21, 1 << 20) == batch
    db.close()


async def test_conflicting_suffix_is_truncated(db, tmp_path):
    # §5.3: an appended entry that conflicts deletes it and everything after it.
    s = await RaftLogStorage.open(db)
    await s.save(HardState(term=1), ents(1, 11, term=1))
    await s.save(HardState(term=2), ents(6, 8, term=2))
    assert s.last_index() == 7 and s.term(7) == 2 and s.term(5) == 1
    db = reopen(db, tmp_path)
    s2 = await RaftLogStorage.open(db)
    assert s2.last_index() == 7
    assert [e.term for e in s2.entries(1, 8, 1 << 20)] == [1] * 5 + [2] * 2
    assert db.get(entry_key(8)) is None
    db.close()


async def test_compaction(db, tmp_path):
    s = await RaftLogStorage.open(db)
    await s.save(HardState(term=3, commit=10), ents(1, 6, term=2) + ents(6, 11, term=3))
    await s.compact(7)
    assert (s.first_index(), s.last_index(), s.term(7)) == (8, 10, 3)
    with pytest.raises(Compacted):
        s.term(6)
    with pytest.raises(Compacted):
        s.entries(7, 9, 100)
    await s.compact(3)  # below the first index: nothing to do
    db = reopen(db, tmp_path)
    s2 = await RaftLogStorage.open(db)
    assert (s2.first_index(), s2.last_index(), s2.term(7)) == (8, 10, 3)
    assert [e.index for e in s2.entries(8, 11, 1 << 20)] == [8, 9, 10]
    assert db.get(entry_key(7)) is None
    db.close()


async def test_snapshot_from_the_leader_replaces_the_log(db):
    # As raft.memory_storage: the core restores its log to end at the snapshot.
    s = await RaftLogStorage.open(db)
    await s.save(HardState(term=1), ents(1, 11, term=1))
    snap = SnapshotMeta(index=5, term=1, conf=ConfState(frozenset({1, 2, 3})))
    await s.save(HardState(term=1, commit=5), [], snap)
    assert (s.first_index(), s.last_index(), s.term(5)) == (6, 5, 1)
    assert s.initial_state()[1] == snap
    assert db.get(entry_key(7)) is None


async def test_create_snapshot_then_compact(db, tmp_path):
    s = await RaftLogStorage.open(db)
    await s.save(HardState(term=2, commit=9), ents(1, 4, term=1) + ents(4, 11, term=2))
    meta = await s.create_snapshot(8, ConfState(frozenset({1, 2})))
    assert meta == SnapshotMeta(8, 2, ConfState(frozenset({1, 2})))
    assert s.last_index() == 10 and s.first_index() == 1  # the log is kept
    await s.compact(8)
    db = reopen(db, tmp_path)
    s2 = await RaftLogStorage.open(db)
    assert s2.initial_state()[1] == meta
    assert (s2.first_index(), s2.last_index(), s2.term(8)) == (9, 10, 2)
    db.close()


async def test_snapshot_beyond_log_discards_it(db, tmp_path):
    s = await RaftLogStorage.open(db)
    await s.save(HardState(term=1), ents(1, 4, term=1))
    snap = SnapshotMeta(index=20, term=4, conf=ConfState(frozenset({1}), frozenset({4})))
    await s.save(HardState(term=4, commit=20), ents(21, 23, term=4), snap)
    assert (s.first_index(), s.last_index(), s.term(20)) == (21, 22, 4)
    db = reopen(db, tmp_path)
    s2 = await RaftLogStorage.open(db)
    assert s2.initial_state() == (HardState(term=4, commit=20), snap)
    assert (s2.first_index(), s2.last_index(), s2.term(20)) == (21, 22, 4)
    db.close()


async def save_in_order(s: RaftLogStorage, i: int, *, task_status) -> None:
    # started() first: save() queues its writes before its first checkpoint, so the saves are
    # queued in the order the tasks were started (index i by the i-th task).
    task_status.started()
    await s.save(HardState(term=1), ents(i, i + 1, term=1))


async def test_concurrent_saves_coalesce_into_few_synced_batches(db, tmp_path):
    s = await RaftLogStorage.open(db)
    n = 50
    async with trio.open_nursery() as nursery:
        for i in range(1, n + 1):
            await nursery.start(save_in_order, s, i)
    assert s.saves == n
    assert s.batches_written < n // 2, f"{s.batches_written} batches for {n} saves"
    db = reopen(db, tmp_path)
    s2 = await RaftLogStorage.open(db)
    assert s2.last_index() == n
    db.close()


async def test_saves_queued_while_writing_all_become_durable(db, tmp_path):
    s = await RaftLogStorage.open(db)
    async with trio.open_nursery() as nursery:
        for i in range(1, 201):
            await nursery.start(save_in_order, s, i)
            if i % 7 == 0:
                await trio.sleep(0)  # let some batches finish while others queue
    db = reopen(db, tmp_path)
    s2 = await RaftLogStorage.open(db)
    assert [e.index for e in s2.entries(1, 201, 1 << 30)] == list(range(1, 201))
    db.close()


# ---- corruption: refuse to start, say what was found ----


async def _prepared(db) -> None:
    s = await RaftLogStorage.open(db)
    await s.save(HardState(term=1, commit=8), ents(1, 11, term=1))


async def test_corrupt_value_refused(db):
    await _prepared(db)
    db.put(entry_key(4), b"\x01ga")
    with pytest.raises(LogCorrupted) as info:
        await RaftLogStorage.open(db)
    assert info.value.index == 4 and info.value.key == entry_key(4)
    assert "index 4" in str(info.value) and "shorter than its header" in str(info.value)


async def test_bad_checksum_refused(db):
    await _prepared(db)
    value = bytearray(db.get(entry_key(6)))
    value[-1] ^= 0xFF  # flip a bit of the payload
    db.put(entry_key(6), bytes(value))
    with pytest.raises(LogCorrupted, match=r"index 6.*checksum mismatch"):
        await RaftLogStorage.open(db)


async def test_missing_middle_entry_refused(db):
    await _prepared(db)
    db.delete(entry_key(5))
    with pytest.raises(LogCorrupted, match=r"index 5.*found 6, entry 5 is missing") as info:
        await RaftLogStorage.open(db)
    assert info.value.index == 5


async def test_truncated_tail_refused(db):
    await _prepared(db)  # commit 8 of 10 entries
    for i in (8, 9, 10):
        db.delete(entry_key(i))
    with pytest.raises(LogCorrupted, match=r"commit 8 is beyond the last entry 7"):
        await RaftLogStorage.open(db)


async def test_hard_state_term_below_log_refused(db):
    s = await RaftLogStorage.open(db)
    await s.save(HardState(term=5), ents(1, 3, term=5))
    await s.save(HardState(term=5), [])
    from storage.raftlog import encode_record

    db.put(PREFIX + b"h", encode_record([2, 0, 0]))
    with pytest.raises(LogCorrupted, match="above the hard state term 2"):
        await RaftLogStorage.open(db)


async def test_unknown_record_version_refused(db):
    await _prepared(db)
    value = db.get(entry_key(2))
    db.put(entry_key(2), b"\x09" + value[1:])
    with pytest.raises(LogCorrupted, match="unknown record version 9"):
        await RaftLogStorage.open(db)


async def test_other_prefixes_are_ignored(db):
    # The state machine shares the DB under its own prefix.
    db.put(b"sm/inode/1", b"anything")
    await _prepared(db)
    s = await RaftLogStorage.open(db)
    assert s.last_index() == 10


async def test_failed_write_poisons_the_store(db, monkeypatch):
    # A failed fsync cannot be retried safely: every later call fails until a restart.
    s = await RaftLogStorage.open(db)

    def broken(ops, sync):
        raise OSError("disk full")

    monkeypatch.setattr(s, "_write_sync", broken)
    with pytest.raises(StorageFailed):
        await s.save(HardState(term=1), ents(1, 2, term=1))
    with pytest.raises(StorageFailed):
        s.term(1)
    with pytest.raises(StorageFailed):
        await s.save(HardState(term=1), [])


async def test_a_one_voter_log_writes_on_the_loop_while_its_fsyncs_are_fast(db, monkeypatch):
    # Module rules: with other tasks ready to run (the loop is never idle here), a synced
    # batch still goes on the event loop's thread while synced writes average under
    # inline_sync_below_s; slow ones move the writes to a worker thread until the average
    # comes down again.
    monkeypatch.setattr(raftlog, "loop_is_idle", lambda limiter=None: False)
    s = await RaftLogStorage.open(db, config=RaftLogConfig(inline_sync_below_s=0.02))
    s.lone_voter = True
    loop_thread, threads, delay_s = threading.get_ident(), [], [0.0]
    write = s._write_sync

    def recorded(ops, sync):
        threads.append(threading.get_ident())
        time.sleep(delay_s[0])
        write(ops, sync)

    monkeypatch.setattr(s, "_write_sync", recorded)
    index = iter(range(1, 100))

    async def save_one() -> bool:
        """Save one entry; whether it was written on the loop's thread."""
        i = next(index)
        await s.save(HardState(term=1), ents(i, i + 1, term=1))
        return threads[-1] == loop_thread

    assert [await save_one() for _ in range(3)] == [True] * 3
    assert s.batches_inline == 3
    delay_s[0] = 0.15  # a slow disk: the average passes 20 ms after one such write
    assert [await save_one() for _ in range(2)] == [True, False]
    delay_s[0] = 0.0
    back = [await save_one() for _ in range(8)]
    assert back[0] is False and back[-1] is True, back
    assert s.sync_seconds_avg < 0.02
    assert s.batches_written == s.batches_synced == 13
    # A store of a group with followers: inline only when the loop is idle too.
    s.lone_voter = False
    assert await save_one() is False  # tasks could run (loop_is_idle is False here)
    monkeypatch.setattr(raftlog, "loop_is_idle", lambda limiter=None: True)
    assert await save_one() is True
    delay_s[0] = 0.15
    assert [await save_one() for _ in range(2)] == [True, False]  # slow: the thread
    delay_s[0] = 0.0


async def test_commit_only_saves_are_not_synced(db):
    # As etcd's MustSync: moving only the commit index needs no fsync; term, vote, entries do.
    # A commit-only save is not even written at once: it rides with the next batch.
    s = await RaftLogStorage.open(db)
    await s.save(HardState(term=1, vote=1), ents(1, 3, term=1))
    assert (s.batches_written, s.batches_synced) == (1, 1)
    await s.save(HardState(term=1, vote=1, commit=2), [])
    assert (s.batches_written, s.batches_synced) == (1, 1)
    assert s.initial_state()[0] == HardState(term=1, vote=1, commit=2)
    await s.save(HardState(term=2, vote=0, commit=2), [])
    assert (s.batches_written, s.batches_synced) == (2, 2)
    assert s.initial_state()[0] == HardState(term=2, vote=0, commit=2)


async def test_deferred_commit_reaches_disk_with_the_next_batch_or_flush(db):
    s = await RaftLogStorage.open(db)
    await s.save(HardState(term=1, vote=1), ents(1, 5, term=1))
    await s.save(HardState(term=1, vote=1, commit=2), [])
    await s.save(HardState(term=1, vote=1, commit=3), ents(5, 6, term=1))  # written together
    assert (await RaftLogStorage.open(db)).initial_state()[0].commit == 3
    await s.save(HardState(term=1, vote=1, commit=5), [])
    assert (await RaftLogStorage.open(db)).initial_state()[0].commit == 3  # not yet written
    await s.flush()
    assert (s.batches_written, s.batches_synced) == (3, 2)
    assert (await RaftLogStorage.open(db)).initial_state()[0].commit == 5


async def test_deferred_writes_of_the_other_user_ride_with_the_next_batch(db):
    # The state machine sharing the DB queues its unsynced ops; they are written, in order,
    # with the log's next batch, and written_seq tells when.
    s = await RaftLogStorage.open(db)
    seq = s.defer_write([(b"kv/a", b"1"), (b"kv/b", b"2")])
    assert s.written_seq < seq and db.get(b"kv/a") is None
    s.defer_write([(b"kv/b", None)])
    await s.save(HardState(term=1, vote=1), ents(1, 2, term=1))
    assert s.written_seq >= seq and s.batches_written == 1
    assert (db.get(b"kv/a"), db.get(b"kv/b")) == (b"1", None)
    seq = s.defer_write([(b"kv/c", b"3")])
    await s.flush()
    assert s.written_seq == seq and db.get(b"kv/c") == b"3"
    with pytest.raises(AssertionError):
        s.defer_write([(b"raft/h", b"x")])


async def test_state_machine_applies_into_the_log_batch_and_reads_its_overlay(tmp_path):
    # server.raft_kv.KvStateMachine with the log: an apply is no write of its own; reads see
    # it at once; the next log batch writes it; a snapshot iteration sees everything.
    from server.raft_kv import KvStateMachine, encode_put
    from storage.kv import KvStore

    store = await KvStore.open(tmp_path / "db")
    try:
        log = await RaftLogStorage.open_on_store(store)
        sm = KvStateMachine(store, log)
        await sm.apply([Entry(1, 1, EntryType.NORMAL, encode_put("a", b"1"))])
        assert log.batches_written == 0 and await store.get(b"kv/a") is None
        assert await sm.get("a") == b"1"
        await log.save(HardState(term=1, vote=1), ents(1, 3, term=1))
        assert await store.get(b"kv/a") == b"1" and await sm.applied_index() == 1
        await sm.apply([Entry(1, 2, EntryType.NORMAL, encode_put("a", b"2"))])
        assert await sm.get("a") == b"2"
        assert cbor2.loads(await sm.snapshot_bytes())[1] == [[b"a", b"2"]]
        assert await sm.applied_index() == 2
    finally:
        await store.close()


# ---- conformance: the same operations on raft.memory_storage give the same log ----

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from raft.memory_storage import MemoryStorage  # noqa: E402

ops_strategy = st.lists(st.one_of(
    st.tuples(st.just("append"), st.floats(0, 1), st.integers(1, 6), st.integers(0, 2)),
    st.tuples(st.just("compact"), st.floats(0, 1)),
    st.tuples(st.just("snapshot"), st.integers(1, 4), st.integers(0, 2)),
), max_size=25)


def same_view(mem: MemoryStorage, disk: RaftLogStorage) -> None:
    first, last = mem.first_index(), mem.last_index()
    assert (disk.first_index(), disk.last_index()) == (first, last)
    assert [disk.term(i) for i in range(first - 1, last + 1)] == [
        mem.term(i) for i in range(first - 1, last + 1)]
    if first <= last:
        assert disk.entries(first, last + 1, 1 << 30) == mem.entries(first, last + 1, 1 << 30)


async def apply_op(op, mem: MemoryStorage, disk: RaftLogStorage, top_term: list[int]) -> None:
    first, last = mem.first_index(), mem.last_index()
    if op[0] == "append":
        _, where, n, bump = op
        start = first + int(where * (last + 1 - first))
        term = max(mem.term(start - 1), top_term[0] if bump else 0) + bump
        top_term[0] = max(top_term[0], term)
        batch = [Entry(term=term, index=i, data=b"%d" % i) for i in range(start, start + n)]
        mem.save_sync(HardState(term=top_term[0]), batch)
        await disk.save(HardState(term=top_term[0]), batch)
    elif op[0] == "compact":
        index = first - 1 + int(op[1] * (last + 1 - first))
        mem.compact_sync(index)
        await disk.compact(index)
    else:
        _, ahead, bump = op
        top_term[0] += bump
        snap = SnapshotMeta(last + ahead, top_term[0], ConfState(frozenset({1})))
        hs = HardState(term=top_term[0], commit=snap.index)
        mem.save_sync(hs, [], snap)
        await disk.save(hs, [], snap)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops_strategy)
def test_same_log_as_memory_storage(tmp_path_factory, ops) -> None:
    path = str(tmp_path_factory.mktemp("conf"))

    async def scenario() -> None:
        db = plyvel.DB(path, create_if_missing=True)
        mem, disk = MemoryStorage(), await RaftLogStorage.open(db, config=RaftLogConfig(
            entry_cache_bytes=200))  # a tiny cache: reads also come from LevelDB
        top_term = [1]
        for op in ops:
            await apply_op(op, mem, disk, top_term)
            same_view(mem, disk)
        db.close()
        db = plyvel.DB(path)
        same_view(mem, await RaftLogStorage.open(db))  # and after a restart
        db.close()

    trio.run(scenario)


async def test_corruption_found_on_a_read_from_disk(db):
    # Checksums are verified on every read from LevelDB, not only at open.
    s = await RaftLogStorage.open(db, config=RaftLogConfig(entry_cache_bytes=300))
    await s.save(HardState(term=1), ents(1, 21, term=1, size=100))
    value = bytearray(db.get(entry_key(3)))
    value[-1] ^= 0x01
    db.put(entry_key(3), bytes(value))
    assert len(s.entries(19, 21, 1 << 20)) == 2  # the cached tail is fine
    with pytest.raises(LogCorrupted, match=r"index 3.*checksum mismatch"):
        s.entries(1, 5, 1 << 20)


def stored_entry_bytes(db_) -> int:
    return sum(len(v) for _, v in db_.iterator(prefix=PREFIX + b"e"))


async def test_log_bytes_is_what_the_retained_entries_take_on_disk(db, tmp_path):
    # The objcache_raft_log_bytes gauge: kept up to date through appends, a conflicting
    # suffix, compaction, a leader's snapshot, and a restart.
    s = await RaftLogStorage.open(db)
    assert s.log_bytes == 0
    await s.save(HardState(term=1), ents(1, 11, term=1, size=100))
    assert s.log_bytes == stored_entry_bytes(db) > 1000
    await s.save(HardState(term=2), ents(6, 8, term=2, size=7000))
    assert s.log_bytes == stored_entry_bytes(db)
    await s.compact(3)
    assert s.log_bytes == stored_entry_bytes(db)
    db = reopen(db, tmp_path)
    s = await RaftLogStorage.open(db)
    assert s.log_bytes == stored_entry_bytes(db) > 14000
    snap = SnapshotMeta(index=9, term=2, conf=ConfState(frozenset({1})))
    await s.save(HardState(term=2, commit=9), [], snap)
    assert s.log_bytes == stored_entry_bytes(db) == 0
    db.close()
