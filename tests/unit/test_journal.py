"""storage/journal.py and its use by storage/kv.py: the synced-write ring, against real files
and a real LevelDB in tmp_path. An OS crash that loses LevelDB's unsynced writes is played by
dropping those writes (kv.write_batch) and abandoning the store without its closing checkpoint."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import storage.kv as kv_module
from storage.journal import BLOCK, Journal, JournalError, read_records
from storage.kv import JOURNAL_FILE, JOURNAL_SEQ, KvConfig, KvStore

REPO = Path(__file__).resolve().parents[2]


def _no_checkpoint() -> None:
    raise AssertionError("the ring wrapped")


def test_records_read_back_in_order_and_a_torn_one_ends_the_ring(tmp_path: Path) -> None:
    ring = tmp_path / "ring"
    j = Journal.open(ring, 16 * BLOCK, 4 * BLOCK)
    j.restart(7)
    j.append([(b"a", b"1")], _no_checkpoint)
    j.note([(b"u", b"unsynced"), (b"gone", None)])
    j.append([(b"b", b"2" * 5000)], _no_checkpoint)  # two blocks
    j.append([(b"c", None)], _no_checkpoint)
    j.close()
    assert read_records(ring) == [
        (7, [(b"a", b"1")]),
        (8, [(b"u", b"unsynced"), (b"gone", None), (b"b", b"2" * 5000)]),
        (9, [(b"c", None)]),
    ]
    # A torn write of the second record (its second block never reached the disk).
    with open(ring, "r+b") as f:
        f.seek(2 * BLOCK)
        f.write(bytes(BLOCK))
    assert [seq for seq, _ in read_records(ring)] == [7]


def test_after_a_wrap_the_ring_reads_only_the_newest_pass(tmp_path: Path) -> None:
    ring = tmp_path / "ring"
    j = Journal.open(ring, 8 * BLOCK, 2 * BLOCK)
    j.restart(1)
    checkpoints = []
    for i in range(11):
        assert j.append([(b"k", b"%d" % i)], lambda: checkpoints.append(j.next_seq))
    j.close()
    # 8 one-block records fill the ring; the 9th starts over at 0 after a checkpoint.
    assert checkpoints == [9] and j.wraps == 1
    assert [seq for seq, _ in read_records(ring)] == [9, 10, 11]  # then seq 4: an older pass


def test_what_does_not_fit_in_a_record_is_refused_until_covered(tmp_path: Path) -> None:
    j = Journal.open(tmp_path / "ring", 16 * BLOCK, 2 * BLOCK)
    j.restart(1)
    assert not j.append([(b"big", b"x" * (2 * BLOCK))], _no_checkpoint)
    j.note([(b"u", b"y" * (3 * BLOCK))])  # noted batches too large for any record
    assert not j.append([(b"small", b"1")], _no_checkpoint)
    j.covered()  # LevelDB synced them
    assert j.append([(b"small", b"1")], _no_checkpoint)
    j.close()
    assert read_records(tmp_path / "ring") == [(1, [(b"small", b"1")])]


def test_journal_sizes_are_checked() -> None:
    with pytest.raises(ValueError, match="multiples of 4096"):
        KvConfig(journal_bytes=10_000)
    with pytest.raises(ValueError, match="half of journal_bytes"):
        KvConfig(journal_bytes=8 * BLOCK, journal_record_bytes=8 * BLOCK)
    assert KvConfig(journal_bytes=0, journal_record_bytes=1).journal_bytes == 0


def test_a_checksummed_record_that_is_not_cbor_is_reported(tmp_path: Path) -> None:
    import struct
    import zlib

    body = b"\xff\xff not cbor"
    crc = zlib.crc32(body, zlib.crc32(struct.pack(">QI", 1, len(body))))
    (tmp_path / "ring").write_bytes(struct.pack(">4sQII", b"OCJ1", 1, len(body), crc) + body)
    with pytest.raises(JournalError, match="record 1 at 0 is not ours"):
        read_records(tmp_path / "ring")


# -- the store ------------------------------------------------------------------------------


def _crash(kv: KvStore) -> None:
    """The process dies: no closing checkpoint (the LevelDB handle is let go, nothing more)."""
    if kv._journal is not None:
        kv._journal.close()
        kv._journal = None
    kv._db.close()
    kv._db = None


def _read_after_restart(path: Path, keys: list[bytes],
                        config: KvConfig | None = None) -> list[bytes | None]:
    kv = KvStore.open_sync(path, config)
    try:
        return kv.get_many_sync(keys)
    finally:
        kv.close_sync()


def _lose_unsynced(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on LevelDB's unsynced writes reach its disk only with its next synced write (as
    its log's fdatasync would take them along); an OS crash will lose the rest."""
    real = kv_module.write_batch
    held: list[list] = []

    def write(db, batch, sync):  # type: ignore[no-untyped-def]
        if not sync:
            held.append(list(batch))
            return
        for earlier in held:
            real(db, earlier, False)
        held.clear()
        real(db, batch, True)

    monkeypatch.setattr(kv_module, "write_batch", write)


def test_an_os_crash_loses_nothing_acknowledged(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    kv = KvStore.open_sync(tmp_path / "db")
    kv.write_sync([(b"before", b"0")], sync=True)
    with monkeypatch.context() as m:
        _lose_unsynced(m)
        kv.write_sync([(b"a", b"1"), (b"b", b"1")], sync=False)  # covered by the next sync
        kv.write_sync([(b"a", b"2"), (b"c", b"2")], sync=True)
        kv.write_sync([(b"b", None)], sync=True)
        kv.write_sync([(b"late", b"unsynced")], sync=False)  # never acknowledged as durable
        assert kv.get_sync(b"a") is None  # LevelDB's disk lacks them now
        _crash(kv)
    assert _read_after_restart(tmp_path / "db", [b"before", b"a", b"b", b"c", b"late"]) == [
        b"0", b"2", None, b"2", None]


def test_replay_never_brings_back_what_a_later_leveldb_sync_replaced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = KvConfig(journal_bytes=16 * BLOCK, journal_record_bytes=2 * BLOCK)
    kv = KvStore.open_sync(tmp_path / "db", config)
    kv.write_sync([(b"k", b"old")], sync=True)  # journaled, and in LevelDB unsynced
    kv.write_sync([(b"k", b"new"), (b"pad", b"x" * (3 * BLOCK))], sync=True)  # too big
    assert kv.synced_writes["leveldb"] == 1 and kv.synced_writes["journal"] == 1
    with monkeypatch.context() as m:
        _lose_unsynced(m)
        kv.write_sync([(b"j", b"journaled after")], sync=True)
        _crash(kv)
    assert _read_after_restart(tmp_path / "db", [b"k", b"j"], config) == [
        b"new", b"journaled after"]


def test_many_records_wrap_the_ring_and_a_crash_after_loses_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = KvConfig(journal_bytes=8 * BLOCK, journal_record_bytes=2 * BLOCK)
    kv = KvStore.open_sync(tmp_path / "db", config)
    for i in range(30):
        kv.write_sync([(b"k%02d" % i, b"%d" % i)], sync=True)
    assert kv.synced_writes["journal_wraps"] >= 3 and kv.synced_writes["journal"] == 30
    with monkeypatch.context() as m:
        _lose_unsynced(m)
        for i in range(30, 35):
            kv.write_sync([(b"k%02d" % i, b"%d" % i)], sync=True)
        _crash(kv)
    keys = [b"k%02d" % i for i in range(35)]
    *values, seq = _read_after_restart(tmp_path / "db", [*keys, JOURNAL_SEQ], config)
    assert values == [b"%d" % i for i in range(35)] and seq is not None


def test_a_ring_of_another_size_is_replayed_then_remade(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kv = KvStore.open_sync(tmp_path / "db", KvConfig(journal_bytes=16 * BLOCK,
                                                     journal_record_bytes=4 * BLOCK))
    with monkeypatch.context() as m:
        _lose_unsynced(m)
        kv.write_sync([(b"k", b"v")], sync=True)
        _crash(kv)
    kv = KvStore.open_sync(tmp_path / "db", KvConfig(journal_bytes=32 * BLOCK,
                                                     journal_record_bytes=4 * BLOCK))
    try:
        assert kv.get_sync(b"k") == b"v"
        assert (tmp_path / "db" / JOURNAL_FILE).stat().st_size == 32 * BLOCK
    finally:
        kv.close_sync()
    kv = KvStore.open_sync(tmp_path / "db", KvConfig(journal_bytes=0))  # journal off
    try:
        assert kv.get_sync(b"k") == b"v"
        kv.write_sync([(b"k2", b"v2")], sync=True)
    finally:
        kv.close_sync()


def test_a_failing_journal_write_falls_back_to_leveldb_syncs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kv = KvStore.open_sync(tmp_path / "db")
    try:
        assert kv._journal is not None
        os.close(kv._journal._fd)  # the next journal write fails (EBADF)
        kv._journal._fd = os.open(os.devnull, os.O_RDONLY)
        kv.write_sync([(b"k", b"v")], sync=True)
        assert kv._journal is None and "from now on" in caplog.text
        kv.write_sync([(b"k2", b"v2")], sync=True)
        assert kv.get_many_sync([b"k", b"k2"]) == [b"v", b"v2"]
    finally:
        kv.close_sync()


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    """A real process killed while writing: every batch it reported durable is there."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from storage.kv import KvStore
        kv = KvStore.open_sync(Path({str(tmp_path / "db")!r}))
        i = 0
        while True:
            kv.write_sync([(b"n%06d" % i, b"x" * 100)], sync=False)
            kv.write_sync([(b"s%06d" % i, b"y" * 300)], sync=True)
            print(i, flush=True)
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acked = -1
    for line in proc.stdout:
        acked = int(line)
        if acked >= 300:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    keys = [b"s%06d" % i for i in range(acked + 1)] + [b"n%06d" % i for i in range(acked)]
    assert None not in _read_after_restart(tmp_path / "db", keys)
