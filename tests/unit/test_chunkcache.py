"""ChunkCache: clean copies of bucket chunks, bounded in bytes, evicted least recently used,
never deleting bytes the replicated state owns (storage/chunkcache.py rules)."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.chunkcache import ChunkCache
from storage.chunks import ChunkStore
from storage.kv import KvConfig, KvStore

CS = 1000


def make(tmp_path: Path, capacity: int, pinned: set[tuple[int, int]] | None = None,
         boot: bytes = b"boot-1") -> tuple[ChunkCache, KvStore, ChunkStore]:
    kv = KvStore.open_sync(tmp_path / "db", KvConfig(max_scan_items=3))
    chunks = ChunkStore(tmp_path / "chunks")
    pins = pinned if pinned is not None else set()
    cache = ChunkCache(kv, chunks, capacity, lambda ino, index: (ino, index) in pins, boot)
    chunks.changed_hook = cache.untrack
    cache.open_sync()
    return cache, kv, chunks


def test_admit_serve_and_evict_least_recently_used(tmp_path: Path) -> None:
    cache, _, chunks = make(tmp_path, capacity=3 * CS)
    for i in range(3):
        assert cache.admit_sync(1, i, b"e", bytes([i]) * CS)
    assert cache.valid(1, 0, b"e") and not cache.valid(1, 0, b"other-version")
    assert cache.admit_sync(2, 0, b"e", b"z" * CS)  # evicts (1, 1): (1, 0) was used since
    assert not cache.valid(1, 1, b"e") and cache.valid(1, 0, b"e") and cache.valid(1, 2, b"e")
    assert not chunks.chunk_path(1, 1).exists()
    assert chunks.pread_sync(2, CS, 0, CS) == b"z" * CS
    assert cache.usage()["clean_bytes"] == 3 * CS and cache.usage()["evicted"] == 1


def test_a_copy_larger_than_the_capacity_is_refused_and_nothing_is_dropped(tmp_path: Path):
    cache, _, _ = make(tmp_path, capacity=2 * CS)
    assert cache.admit_sync(1, 0, b"e", b"a" * CS)
    assert not cache.admit_sync(1, 1, b"e", b"b" * (3 * CS))
    assert cache.valid(1, 0, b"e") and cache.usage()["refused"] == 1


def test_state_writes_take_chunks_out_of_the_cache_so_eviction_keeps_them(tmp_path: Path):
    cache, _, chunks = make(tmp_path, capacity=2 * CS)
    assert cache.admit_sync(5, 0, b"e", b"a" * CS)
    assert cache.admit_sync(5, 1, b"e", b"b" * CS)
    chunks.pwrite_sync(5, CS, 10, memoryview(b"written"))  # a ChunkWrite's effect on chunk 0
    assert not cache.valid(5, 0, b"e") and cache.valid(5, 1, b"e")
    chunks.truncate_sync(5, CS, CS + 10)  # trims chunk 1: not a clean copy any more either
    assert not cache.valid(5, 1, b"e")
    cache.refresh_pinned_sync()
    assert cache.usage()["pinned_bytes"] == CS + 10
    assert not cache.admit_sync(6, 0, b"e", b"c" * CS)  # nothing evictable is enough
    assert chunks.pread_sync(5, CS, 10, 7) == b"written"


def test_a_materialized_chunk_is_never_deleted_by_eviction(tmp_path: Path) -> None:
    pins: set[tuple[int, int]] = set()
    cache, _, chunks = make(tmp_path, capacity=CS, pinned=pins)
    assert cache.admit_sync(1, 0, b"e", b"a" * CS)
    pins.add((1, 0))  # materialized meanwhile (no ChunkStore write reached the cache)
    # Evicting it only forgets the entry; the file now counts as pinned, so nothing fits.
    assert cache.admit_sync(2, 0, b"e", b"b" * 10) is False
    assert chunks.pread_sync(1, CS, 0, CS) == b"a" * CS
    assert cache.usage()["pinned_bytes"] == CS and cache.usage()["clean_bytes"] == 0


def test_the_index_survives_a_restart_and_forget_frees(tmp_path: Path) -> None:
    cache, kv, chunks = make(tmp_path, capacity=10 * CS)
    for i in range(5):  # more entries than one scan page (max_scan_items=3)
        assert cache.admit_sync(3, i, b"v1", b"q" * CS)
    chunks.close_sync()
    kv.close_sync()
    again, _, chunks2 = make(tmp_path, capacity=10 * CS)
    assert all(again.valid(3, i, b"v1") for i in range(5))
    assert again.usage()["clean_bytes"] == 5 * CS and again.usage()["pinned_bytes"] == 0
    assert again.forget_sync(3) == 5 * CS
    assert again.inodes() == []
    assert not any(chunks2.chunk_path(3, i).exists() for i in range(5))


def test_stats_count_lookups_and_say_why_a_copy_went(tmp_path: Path) -> None:
    """The metrics' counters: a hit or a miss per lookup (a second look by the same read,
    count=False, is neither); a copy dropped for room is evicted, one asked to go forgotten."""
    cache, _, _ = make(tmp_path, capacity=2 * CS)
    assert not cache.valid(1, 0, b"e")
    assert cache.admit_sync(1, 0, b"e", b"a" * CS)
    assert cache.valid(1, 0, b"e") and cache.valid(1, 0, b"e", count=False)
    assert not cache.valid(1, 0, b"newer") and not cache.valid(1, 1, b"e", count=False)
    assert cache.admit_sync(1, 1, b"e", b"b" * CS)
    assert cache.admit_sync(2, 0, b"e", b"c" * CS)  # no room: (1, 0) is evicted
    assert cache.forget_sync(1) == CS  # admin evict: (1, 1)
    assert cache.admit_sync(2, 0, b"f", b"d" * CS)  # a newer version replaces the older
    u = cache.usage()
    assert (u["hits"], u["misses"]) == (1, 2)
    assert (u["admitted"], u["evicted"], u["forgotten"]) == (4, 1, 2)


def test_admitted_bytes_count_as_pinned_before_the_recount(tmp_path: Path) -> None:
    # Regression (fault campaign, tests/faults/FINDINGS.md 7): pinned bytes were only
    # recounted every two seconds, so the admission let seconds of writes through past a
    # full cache and a replica's small cache disk filled.
    from server.cluster.bucket_reads import ADMIT_CHECK_BYTES, admission
    from server.cluster.protocol import UNAVAILABLE
    from server.rpc.frames import RemoteError

    cache, _, _ = make(tmp_path, capacity=4 * ADMIT_CHECK_BYTES)
    admit = admission(cache, stalled=lambda: False)
    for _ in range(4):
        admit(ADMIT_CHECK_BYTES)  # not yet on disk: no recount has seen them
    assert cache.full()
    with pytest.raises(RemoteError) as refused:
        admit(ADMIT_CHECK_BYTES)
    assert refused.value.code == UNAVAILABLE
    cache.refresh_pinned_sync()  # the disk's figure replaces the estimate
    assert not cache.full() and cache.usage()["pinned_bytes"] == 0


def test_make_room_evicts_clean_copies_oldest_first_but_never_pinned_bytes(tmp_path: Path):
    pins = {(9, 0)}
    cache, _, chunks = make(tmp_path, capacity=10 * CS, pinned=pins)
    for i in range(3):
        assert cache.admit_sync(1, i, b"e", b"x" * CS)
    chunks.pwrite_sync(9, CS, 0, memoryview(b"p" * CS))  # the replicated state's bytes
    assert cache.valid(1, 0, b"e")  # (1, 0) used last: (1, 1) is the oldest now
    assert cache.make_room_sync(CS + 1) == 2 * CS
    assert cache.valid(1, 0, b"e") and not cache.valid(1, 1, b"e")
    assert not cache.valid(1, 2, b"e")
    assert cache.make_room_sync(10 * CS) == CS  # all that is clean
    assert cache.make_room_sync(CS) == 0
    assert chunks.pread_sync(9, CS, 0, CS) == b"p" * CS


def test_the_pinned_count_skips_a_chunk_directory_deleted_while_it_counts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by the fault campaign (FINDINGS.md 12): a restarting node counts its pinned bytes
    # while its group already applies, and an inode's deletion removed a chunk directory
    # between listing the root and scanning it: FileNotFoundError stopped the start-up.
    import os
    import shutil

    cache, _, chunks = make(tmp_path, capacity=10 * CS)
    chunks.pwrite_sync(7, CS, 0, memoryview(b"g" * 10))
    chunks.pwrite_sync(8, CS, 0, memoryview(b"k" * 20))
    gone = chunks.ino_dir(7)
    real = os.scandir

    def deleted_first(path):  # the apply's rmdir lands just before this directory's scan
        if isinstance(path, str) and path == os.fspath(gone) and os.path.isdir(path):
            shutil.rmtree(gone)
        return real(path)

    monkeypatch.setattr(os, "scandir", deleted_first)
    cache.refresh_pinned_sync()
    assert cache.usage()["pinned_bytes"] == 20


def _fill(cache: ChunkCache) -> None:
    for i in range(4):  # more entries than one scan page (max_scan_items=3)
        assert cache.admit_sync(7, i, b"v", bytes([i]) * CS)


def test_a_crashed_process_keeps_its_copies_in_the_same_boot(tmp_path: Path) -> None:
    # Admitted copies are not fsynced; a process that dies leaves them in the page cache,
    # so a restart in the same boot of the machine serves them.
    cache, kv, chunks = make(tmp_path, capacity=10 * CS)
    _fill(cache)
    chunks.close_sync()
    kv.close_sync()  # no cache.close_sync(): the process died
    again, _, chunks2 = make(tmp_path, capacity=10 * CS)
    assert all(again.valid(7, i, b"v") for i in range(4))
    assert chunks2.pread_sync(7, CS, 3 * CS, CS) == bytes([3]) * CS
    # Still not on disk for sure: this run's clean stop syncs them before clearing the mark.
    assert again._unsynced == {(7, i) for i in range(4)}


def test_copies_unsynced_when_the_machine_went_down_are_all_dropped(tmp_path: Path) -> None:
    cache, kv, chunks = make(tmp_path, capacity=10 * CS)
    _fill(cache)
    chunks.close_sync()
    kv.close_sync()  # the node never stopped cleanly, and the next start is in a new boot
    again, _, chunks2 = make(tmp_path, capacity=10 * CS, boot=b"boot-2")
    assert not any(again.valid(7, i, b"v") for i in range(4))
    assert again.usage()["clean_bytes"] == 0 and again.usage()["forgotten"] == 4
    assert not any(chunks2.chunk_path(7, i).exists() for i in range(4))
    # the new run marks its own boot: a crash of its process keeps what it admits
    assert again.admit_sync(8, 0, b"w", b"n" * CS)
    chunks2.close_sync()
    again.kv.close_sync()
    third, _, _ = make(tmp_path, capacity=10 * CS, boot=b"boot-2")
    assert third.valid(8, 0, b"w")


def test_a_clean_stop_syncs_the_copies_so_a_new_boot_keeps_them(tmp_path: Path) -> None:
    cache, kv, chunks = make(tmp_path, capacity=10 * CS)
    _fill(cache)
    assert cache.admit_sync(9, 0, b"v", b"x" * CS)
    cache.forget_sync(9)  # gone before the stop: nothing to sync for it
    cache.close_sync()
    assert kv.get_sync(b"lc.boot") is None
    chunks.close_sync()
    kv.close_sync()
    again, _, _ = make(tmp_path, capacity=10 * CS, boot=b"boot-2")
    assert all(again.valid(7, i, b"v") for i in range(4))
    assert again.usage()["clean_bytes"] == 4 * CS and again.usage()["forgotten"] == 0
