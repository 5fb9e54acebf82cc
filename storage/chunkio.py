"""The chunk store's I/O layer: its error, chunk arithmetic, open descriptors, page-cache reads.

ChunkStore (chunks.py) is built on the ChunkFds mixin here; the store's state (`_lock`, `_fds`,
`_dirty`, `_new_dirs`, `_nowait`) is set up in ChunkStore.__init__.

Rules:
- Open descriptors are cached (bounded LRU). A descriptor in use by a worker thread is never
  closed under it: entries carry a use count and eviction skips busy ones.
- Opening a descriptor (`_acquire`) and `will_need_sync` block: worker threads. The exceptions
  are `pread_nowait` and `dup_nowait`, which the event loop may call: they use only descriptors
  already open and read with RWF_NOWAIT, so the kernel answers from the page cache or refuses
  (EAGAIN) instead of blocking; the caller then takes the thread path.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from storage.chunks import ChunkStore

    _Base = ChunkStore
else:
    _Base = object

T = TypeVar("T")

log = logging.getLogger("storage.chunks")  # one logger for the whole chunk store

PROBE_STRIDE = 64 << 10  # dup_nowait: one page-cache probe per this many bytes (~1 µs each)


class ChunkIOError(Exception):
    """A chunk file could not be read, written, synced or removed; errno says why (ENOSPC...)."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


class _Fd:
    __slots__ = ("busy", "doomed", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.busy = 0
        self.doomed = False  # closed by the last user (the chunk was deleted meanwhile)


def spans(offset: int, count: int, chunk_size: int) -> list[tuple[int, int, int]]:
    """(chunk index, offset inside the chunk, length) pieces covering [offset, offset+count)."""
    out = []
    end = offset + count
    while offset < end:
        index, inner = divmod(offset, chunk_size)
        n = min(chunk_size - inner, end - offset)
        out.append((index, inner, n))
        offset += n
    return out


class ChunkFds(_Base):
    # -- descriptor cache -------------------------------------------------------------------

    def _acquire(self, ino: int, index: int, create: bool) -> _Fd | None:
        key = (ino, index)
        with self._lock:
            ent = self._fds.get(key)
            if ent is not None:
                self._fds.move_to_end(key)
                ent.busy += 1
                return ent
        fd = self._open(ino, index, create)
        if fd is None:
            return None
        with self._lock:
            ent = self._fds.get(key)
            if ent is not None:  # another thread opened it meanwhile: keep theirs
                os.close(fd)
            else:
                ent = _Fd(fd)
                self._fds[key] = ent
                self._evict_locked()
            ent.busy += 1
            return ent

    def _open(self, ino: int, index: int, create: bool) -> int | None:
        path = self.chunk_path(ino, index)
        try:
            return os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            if not create:
                return None
        try:
            path.parent.mkdir(exist_ok=True)
            with self._lock:
                self._new_dirs.add(ino)
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise ChunkIOError(f"open {path}: {e}", e.errno) from e

    def _release(self, ent: _Fd) -> None:
        with self._lock:
            ent.busy -= 1
            if ent.doomed and ent.busy == 0:
                os.close(ent.fd)

    def _evict_locked(self) -> None:
        if len(self._fds) <= self.config.max_open_fds:
            return
        for key in list(self._fds):
            if len(self._fds) <= self.config.max_open_fds:
                break
            ent = self._fds[key]
            if ent.busy == 0:
                del self._fds[key]
                os.close(ent.fd)

    def _cache_fd_locked(self, ino: int, index: int, fd: int) -> None:
        """Keep fd, an open descriptor of chunk (ino, index), in the cache."""
        self._fds[(ino, index)] = _Fd(fd)
        self._evict_locked()

    def _forget_locked(self, ino: int, min_index: int, max_index: int | None = None) -> None:
        """Drop cached descriptors of chunks min_index.. (..max_index) of ino (their files
        are going away)."""
        last = max_index
        for key in [k for k in self._fds if k[0] == ino and k[1] >= min_index
                    and (last is None or k[1] <= last)]:
            ent = self._fds.pop(key)
            if ent.busy:
                ent.doomed = True
            else:
                os.close(ent.fd)
        dirty = self._dirty.get(ino)
        if dirty:
            dirty.difference_update([i for i in dirty
                                     if i >= min_index and (last is None or i <= last)])

    # -- page-cache reads -------------------------------------------------------------------

    def pread_nowait(self, ino: int, chunk_size: int, offset: int, count: int) -> bytearray | None:
        """count bytes from offset if one chunk's cached descriptor and the page cache have them
        all; else None (never blocks on I/O)."""

        def read(fd: int, inner: int, n: int) -> bytearray | None:
            buf = bytearray(n)
            got = os.preadv(fd, [buf], inner, os.RWF_NOWAIT)
            # Short: the end of the chunk file (a hole follows) or only part was cached; the
            # thread path tells the two apart.
            return buf if got == n else None

        return self._on_cached_fd(ino, chunk_size, offset, count, read)

    def dup_nowait(
        self, ino: int, chunk_size: int, offset: int, count: int
    ) -> tuple[int, int] | None:
        """A duplicate of the descriptor of the one chunk that holds [offset, offset+count), and
        the offset inside it, if that descriptor is cached and the range is in the page cache
        (RWF_NOWAIT probes of one byte every PROBE_STRIDE and of the last); else None. The
        caller closes the duplicate. For sending with os.sendfile on the event loop: a range
        that the kernel's read-ahead is still filling (cold pages after its first ones) would
        make sendfile wait for the disk there, so the probes cover it all, not just its ends;
        only a page evicted between the probes and the send is read from disk."""

        def probe_and_dup(fd: int, inner: int, n: int) -> tuple[int, int] | None:
            probe = bytearray(1)
            for pos in (*range(inner, inner + n - 1, PROBE_STRIDE), inner + n - 1):
                if os.preadv(fd, [probe], pos, os.RWF_NOWAIT) != 1:
                    return None  # past the chunk file's end: a hole, which the copy path fills
            return os.dup(fd), inner

        return self._on_cached_fd(ino, chunk_size, offset, count, probe_and_dup)

    def _on_cached_fd(self, ino: int, chunk_size: int, offset: int, count: int,
                      io: Callable[[int, int, int], T | None]) -> T | None:
        """io(fd, inner offset, n) on the cached descriptor of the one chunk that holds
        [offset, offset+count), held busy meanwhile; None if the range spans chunks, the
        descriptor is not cached, or the kernel would block (EAGAIN)."""
        pieces = spans(offset, count, chunk_size)
        if not self._nowait or len(pieces) != 1:
            return None
        index, inner, n = pieces[0]
        with self._lock:
            ent = self._fds.get((ino, index))
            if ent is None:
                return None
            ent.busy += 1
        try:
            return io(ent.fd, inner, n)
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise ChunkIOError(f"preadv ino {ino} chunk {index}: {e}", e.errno) from e
            self._nowait = False  # this kernel or file system cannot: stop trying
            return None
        finally:
            self._release(ent)

    def will_need_sync(self, ino: int, index: int) -> None:
        """Ask the kernel to read chunk (ino, index)'s file into the page cache in the
        background (POSIX_FADV_WILLNEED), and keep its descriptor open: a reader is about to
        read it in order, and pread_nowait/dup_nowait need both. A missing chunk: nothing."""
        ent = self._acquire(ino, index, create=False)
        if ent is None:
            return
        try:
            os.posix_fadvise(ent.fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError as e:  # advice only: a file system that cannot take it loses nothing
            log.debug("fadvise ino %d chunk %d: %s", ino, index, e)
        finally:
            self._release(ent)

    def open_fds(self) -> int:
        with self._lock:
            return len(self._fds)

    def close_sync(self) -> None:
        with self._lock:
            for ent in self._fds.values():
                if ent.busy:
                    ent.doomed = True
                else:
                    os.close(ent.fd)
            self._fds.clear()
