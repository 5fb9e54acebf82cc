"""server/cluster/statemachine.py: which committed batches may be applied on the event loop's
thread (small batches of txn records only), and that such an apply never waits."""

from __future__ import annotations

from pathlib import Path

import pytest

from raft.types import Entry, EntryType
from server.cluster import fsops
from server.cluster.statemachine import (
    INLINE_APPLY_MAX_BYTES,
    ApplyNeedsThread,
    GroupStateMachine,
    encode_nodelist_entry,
    encode_ring_entry,
    encode_txn_entry,
)
from server.fs.changes import WriteEffect
from server.fs.config import FsConfig
from storage.chunks import ChunkStore
from storage.kv import KvStore
from tests.faults.faultinject import fill
from txn.ids import txn_id
from txn.records import TxnLocal
from txn.state import TxnState


def entry(index: int, data: bytes, type: EntryType = EntryType.NORMAL) -> Entry:
    return Entry(1, index, type, data)


@pytest.fixture
def sm(tmp_path: Path):  # type: ignore[no-untyped-def]
    kv = KvStore.open_sync(tmp_path / "meta")
    app = fsops.FsApplication(FsConfig())
    chunks = ChunkStore(tmp_path / "chunks")
    yield GroupStateMachine(kv, chunks, app, TxnState(app), fsops.perform_effects_sync, group=1)
    chunks.close_sync()
    kv.close_sync()


def txn(index: int, ops: bytes = b"") -> Entry:
    return entry(index, encode_txn_entry(TxnLocal(txn_id(b"c", index), ops)))


def test_small_batches_of_txn_records_may_apply_inline(sm: GroupStateMachine) -> None:
    assert sm.inline_ok([txn(1), txn(2), entry(3, b""), entry(4, b"x", EntryType.CONF_CHANGE)])
    assert not sm.inline_ok([txn(1), entry(2, encode_nodelist_entry(b"n"))])
    assert not sm.inline_ok([entry(1, encode_ring_entry({"step": "x"}))])
    big = txn(1, b"\0" * INLINE_APPLY_MAX_BYTES)
    assert not sm.inline_ok([big])


def test_an_inline_apply_hands_a_ring_entry_back_never(sm: GroupStateMachine) -> None:
    with pytest.raises(AssertionError):
        sm.apply_sync([entry(1, encode_nodelist_entry(b"n"))], inline=True)


def test_an_inline_apply_that_would_write_much_goes_to_a_thread(sm: GroupStateMachine) -> None:
    """A batch of small records whose data effects are big (or many) is not applied inline,
    and nothing of it is written: the worker thread applies it from the start."""
    sm.app.take_effects = lambda: [WriteEffect(5, 1 << 20, 0, bytes(1 << 20))]  # type: ignore[method-assign]
    with pytest.raises(ApplyNeedsThread):
        sm.apply_sync([txn(1)], inline=True)
    assert sm.kv.get_sync(b"sm.applied") is None


def test_an_inline_apply_meeting_a_full_cache_disk_goes_to_a_thread(tmp_path: Path) -> None:
    """ENOSPC inline: no wait on the loop's thread, nothing written; the worker thread's apply
    then waits for space and completes once there is some (a real tmpfs filled up)."""
    import subprocess
    import threading

    disk = tmp_path / "chunks"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], check=True)
    kv = KvStore.open_sync(tmp_path / "meta")
    app = fsops.FsApplication(FsConfig())
    chunks = ChunkStore(disk)
    try:
        sm = GroupStateMachine(kv, chunks, app, TxnState(app), fsops.perform_effects_sync,
                               group=1)
        write = WriteEffect(5, 1 << 20, 0, b"w" * 8192)
        sm.app.take_effects = lambda: [write]  # type: ignore[method-assign]
        ballast = disk / "ballast"
        fill(ballast)  # full, to the last block
        with pytest.raises(ApplyNeedsThread):
            sm.apply_sync([txn(1)], inline=True)
        assert kv.get_sync(b"sm.applied") is None

        done: list[object] = []
        worker = threading.Thread(target=lambda: done.append(sm.apply_sync([txn(1)])))
        worker.start()
        worker.join(0.5)
        assert worker.is_alive() and not done  # waits for space in the thread
        ballast.unlink()
        worker.join(30)
        assert done and kv.get_sync(b"sm.applied") is not None
        assert chunks.pread_sync(5, 1 << 20, 0, 8192) == b"w" * 8192
    finally:
        chunks.close_sync()
        kv.close_sync()
        subprocess.run(["umount", "-l", str(disk)], check=False)
