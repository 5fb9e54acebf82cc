"""storage/chunks.py, chunkio.py: chunk files, holes, truncation, dirty tracking, descriptors."""

import os
import time

import pytest

from storage.chunkio import spans
from storage.chunks import ChunkConfig, ChunkStore

CS = 4096


@pytest.fixture
def store(tmp_path):
    s = ChunkStore(tmp_path / "chunks", ChunkConfig(max_open_fds=2, io_threads=2))
    yield s
    s.close_sync()


def test_spans_cover_the_range():
    assert spans(0, 0, CS) == []
    assert spans(100, 10, CS) == [(0, 100, 10)]
    assert spans(CS - 1, 2, CS) == [(0, CS - 1, 1), (1, 0, 1)]
    assert spans(CS, 3 * CS, CS) == [(1, 0, CS), (2, 0, CS), (3, 0, CS)]


def test_write_read_across_chunks_and_holes(store):
    data = os.urandom(3 * CS)
    assert store.pwrite_sync(7, CS, CS // 2, memoryview(data)) == [0, 1, 2, 3]
    assert store.pread_sync(7, CS, CS // 2, len(data)) == data
    assert store.pread_sync(7, CS, 0, CS // 2) == bytes(CS // 2)  # hole before the data
    assert store.pread_sync(7, CS, 10 * CS, 100) == bytes(100)  # no chunk file at all
    end = CS // 2 + len(data)  # reading across the end of the last chunk file
    assert store.pread_sync(7, CS, end - 10, 20) == data[-10:] + bytes(10)
    assert sorted(os.listdir(store.ino_dir(7))) == ["0", "1", "2", "3"]


def test_descriptor_cache_is_bounded(store):
    for i in range(6):
        store.pwrite_sync(1, CS, i * CS, memoryview(b"x"))
    assert len(store._fds) <= 2
    assert store.pread_sync(1, CS, 0, 6 * CS).count(b"x") == 6


def test_truncate_drops_the_tail_and_later_chunks(store):
    store.pwrite_sync(3, CS, 0, memoryview(b"a" * (3 * CS)))
    store.truncate_sync(3, CS, CS + 5)
    assert sorted(os.listdir(store.ino_dir(3))) == ["0", "1"]
    assert os.path.getsize(store.chunk_path(3, 1)) == 5
    assert store.pread_sync(3, CS, 0, 3 * CS) == b"a" * (CS + 5) + bytes(2 * CS - 5)
    store.truncate_sync(3, CS, CS)  # exactly on a boundary: chunk 1 goes entirely
    assert sorted(os.listdir(store.ino_dir(3))) == ["0"]
    store.truncate_sync(3, CS, 0)
    assert not store.ino_dir(3).exists()


def test_fsync_syncs_only_dirty_chunks_of_that_inode(store):
    store.pwrite_sync(1, CS, 0, memoryview(b"x" * (2 * CS)))
    store.pwrite_sync(2, CS, 0, memoryview(b"y"))
    assert store.dirty_inodes() == [1, 2]
    store.fsync_sync(1, [1], data_only=True)
    assert store._dirty[1] == {0}
    store.fsync_sync(1)
    assert store.dirty_inodes() == [2]
    store.sync_all_sync()
    assert store.dirty_inodes() == []


def test_delete_and_stored_inodes(store):
    store.pwrite_sync(5, CS, 0, memoryview(b"x"))
    store.pwrite_sync(0xABC, CS, 0, memoryview(b"x"))
    assert sorted(store.stored_inodes_sync()) == [5, 0xABC]
    store.delete_sync(5)
    assert store.stored_inodes_sync() == [0xABC]
    assert store.pread_sync(5, CS, 0, 3) == bytes(3)
    store.delete_sync(5)  # idempotent


async def test_async_wrappers(store):
    await store.pwrite(9, CS, 0, memoryview(b"hello"))
    assert await store.pread(9, CS, 1, 3) == b"ell"
    await store.fsync(9)
    await store.truncate(9, CS, 2)
    assert await store.pread(9, CS, 0, 5) == b"he\0\0\0"
    await store.delete(9)


def test_pread_nowait_serves_cached_data_or_declines(store):
    assert store.pread_nowait(4, CS, 0, 10) is None  # no descriptor open yet
    store.pwrite_sync(4, CS, 0, memoryview(b"abcdefghij"))
    got = store.pread_nowait(4, CS, 2, 5)
    assert got is None or bytes(got) == b"cdefg"  # None only where RWF_NOWAIT is unsupported
    assert store.pread_nowait(4, CS, 5, 10) is None  # short (end of the chunk file)
    assert store.pread_nowait(4, CS, CS - 2, 4) is None  # spans two chunks


def dropped_copy(store: ChunkStore, ino: int, data: bytes) -> int:
    """Chunk (ino, 0) written as a clean copy (its descriptor kept), then its pages dropped
    from the page cache and the kernel's read-ahead turned off for that descriptor. Returns a
    duplicate of the descriptor, which the caller closes."""
    store.write_chunk_file_sync(ino, 0, data)
    found = store.dup_nowait(ino, len(data), 0, len(data))
    assert found is not None
    fd, inner = found
    assert inner == 0 and os.pread(fd, len(data), 0) == data
    os.fdatasync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # shared with the store's descriptor
    return fd


def test_a_fetched_chunk_is_sent_from_the_page_cache_only_when_all_of_it_is_there(store):
    # A clean copy keeps its descriptor open (write_chunk_file_sync), so the READ that
    # follows can take the event loop's path; dup_nowait offers the range for sendfile only
    # when every part of it is cached: a page missing in the middle would make sendfile wait
    # for the disk on the event loop.
    size = 1 << 20
    data = os.urandom(size)
    fd = dropped_copy(store, 9, data)
    try:
        # Only the first and the last byte's pages in the page cache (no read-ahead).
        os.pread(fd, 1, 0)
        os.pread(fd, 1, size - 1)
        with pytest.raises(BlockingIOError):
            os.preadv(fd, [bytearray(1)], size // 2, os.RWF_NOWAIT)  # the middle is gone
    finally:
        os.close(fd)
    assert store.dup_nowait(9, size, 0, size) is None  # its ends are cached, its middle not
    head = store.dup_nowait(9, size, 0, 4096)
    assert head is not None  # a cached range still goes
    os.close(head[0])
    assert bytes(store.pread_sync(9, size, 0, size)) == data  # the thread path reads it all
    found = store.dup_nowait(9, size, 0, size)
    assert found is not None
    os.close(found[0])


def test_will_need_brings_a_dropped_chunk_back_into_the_page_cache(store):
    # Read-ahead of a cached chunk (group_reads._prefetch_sync) asks the kernel to read the
    # chunk file in the background, so the READs that follow are answered from the page
    # cache on the event loop (pread_nowait) even after the page cache was dropped.
    size = 1 << 20
    data = os.urandom(size)
    os.close(dropped_copy(store, 11, data))
    assert store.pread_nowait(11, size, size // 2, 4096) is None  # the pages are gone
    store.will_need_sync(11, 0)
    deadline = time.monotonic() + 10
    got = None
    while got is None and time.monotonic() < deadline:
        got = store.pread_nowait(11, size, 0, size)
        time.sleep(0.01)
    assert got is not None and bytes(got) == data
    store.will_need_sync(11, 5)  # a chunk never written: nothing to read, no error
    assert not store.chunk_path(11, 5).exists()


def test_whole_chunk_files_round_trip_for_snapshots(store, tmp_path):
    """What a snapshot carries: every chunk file of an inode whole, put back byte for byte."""
    store.pwrite_sync(7, CS, 0, memoryview(b"a" * 5000))
    store.pwrite_sync(7, CS, 10 * CS + 3, memoryview(b"z"))
    files = store.chunk_files_sync(7)
    assert [i for i, _ in files] == [0, 1, 10]
    assert files[0][1] == b"a" * CS and files[1][1] == b"a" * 904
    assert files[2][1] == bytes(3) + b"z"
    other = ChunkStore(tmp_path / "other")
    for index, data in files:
        other.put_chunk_file_sync(7, index, data)
    assert other.chunk_files_sync(7) == files
    assert other.pread_sync(7, CS, 0, 11 * CS) == store.pread_sync(7, CS, 0, 11 * CS)
    other.close_sync()
