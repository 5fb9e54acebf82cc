"""File bytes in chunk files: `<root>/<ino as 16 hex digits>/<chunk index>`.

Rules:
- A file's bytes are cut into fixed-size chunks (the size is chosen per file by the caller and
  must not change for that file). Chunk i holds bytes [i*size, (i+1)*size). A missing chunk file,
  or a short one, reads as zeros: holes cost nothing.
- The store knows nothing of file sizes: the caller clips reads at EOF and truncates on shrink.
- Durability: pwrite leaves data in the page cache and marks the chunk dirty for its inode;
  `fsync(ino)` makes exactly those chunks (and any chunk directories created since) durable.
  New chunk files need their directory fsynced too, or a crash may lose the name.
- Open descriptors are cached, and a few reads use only them without blocking: chunkio.py
  (ChunkFds) holds that part and its rules.
- Sync methods run in worker threads (they block); the async wrappers use one CapacityLimiter,
  and run the call on the event loop's thread instead when nothing else could run meanwhile
  (storage/kv.py explains why: a thread round trip costs as much as a 1 MiB pwrite).
  The exceptions are `pread_nowait` and `dup_nowait` (chunkio.py), which the event loop may call.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from storage.chunkio import ChunkFds, ChunkIOError, spans
from storage.kv import loop_is_idle

if TYPE_CHECKING:
    from storage.chunkio import _Fd

SYNC_THREADS = 8  # concurrent fsyncs of a batch of new chunk files


@dataclass(frozen=True, slots=True)
class ChunkConfig:
    max_open_fds: int = 256
    io_threads: int = 8


class ChunkStore(ChunkFds):
    def __init__(self, root: Path, config: ChunkConfig | None = None) -> None:
        self.root = root
        self.config = config or ChunkConfig()
        assert self.config.max_open_fds >= 1
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # guards _fds, _dirty, _new_dirs (worker threads)
        self._fds: OrderedDict[tuple[int, int], _Fd] = OrderedDict()
        self._dirty: dict[int, set[int]] = {}
        self._new_dirs: set[int] = set()  # inode dirs created since their last fsync
        self._limiter = trio.CapacityLimiter(self.config.io_threads)
        self._nowait = hasattr(os, "RWF_NOWAIT")
        # Told (ino, first index, last index or None: all after first) whenever writes, trims
        # or deletes change chunk files, so a cache of clean copies (storage/chunkcache.py)
        # stops treating them as its own.
        self.changed_hook: Callable[[int, int, int | None], None] | None = None
        # Told (ino, index, etag) when a chunk file became a clean copy of that object
        # version (write-back uploaded it): the cache takes it over.
        self.adopted_hook: Callable[[int, int, bytes], None] | None = None

    def ino_dir(self, ino: int) -> Path:
        return self.root / f"{ino:016x}"

    def chunk_path(self, ino: int, index: int) -> Path:
        return self.ino_dir(ino) / str(index)

    # -- data -------------------------------------------------------------------------------

    def pwrite_sync(self, ino: int, chunk_size: int, offset: int, data: memoryview) -> list[int]:
        """Write data at offset; returns the chunk indexes touched."""
        touched = []
        pos = 0
        for index, inner, n in spans(offset, len(data), chunk_size):
            ent = self._acquire(ino, index, create=True)
            assert ent is not None
            try:
                view = data[pos : pos + n]
                while view:
                    written = os.pwrite(ent.fd, view, inner)
                    view = view[written:]
                    inner += written
            except OSError as e:
                raise ChunkIOError(f"pwrite ino {ino} chunk {index}: {e}", e.errno) from e
            finally:
                self._release(ent)
            pos += n
            touched.append(index)
        with self._lock:
            self._dirty.setdefault(ino, set()).update(touched)
        if self.changed_hook is not None and touched:
            self.changed_hook(ino, touched[0], touched[-1])
        return touched

    def pread_sync(self, ino: int, chunk_size: int, offset: int, count: int) -> bytes | bytearray:
        """count bytes from offset; holes and short chunk files read as zeros."""
        pieces = spans(offset, count, chunk_size)
        if len(pieces) == 1:
            index, inner, n = pieces[0]
            data = self._pread_one(ino, index, inner, n)
            return data if len(data) == n else data + bytes(n - len(data))
        buf = bytearray(count)  # zeroed: whatever a read does not fill is a hole
        view = memoryview(buf)
        pos = 0
        for index, inner, n in pieces:
            self._preadv_into(ino, index, inner, view[pos : pos + n])
            pos += n
        return buf

    def _pread_one(self, ino: int, index: int, inner: int, n: int) -> bytes:
        ent = self._acquire(ino, index, create=False)
        if ent is None:
            return b""
        try:
            return os.pread(ent.fd, n, inner)
        except OSError as e:
            raise ChunkIOError(f"pread ino {ino} chunk {index}: {e}", e.errno) from e
        finally:
            self._release(ent)

    def _preadv_into(self, ino: int, index: int, inner: int, view: memoryview) -> None:
        ent = self._acquire(ino, index, create=False)
        if ent is None:
            return
        try:
            while view:
                got = os.preadv(ent.fd, [view], inner)
                if got == 0:
                    break  # end of a short chunk file: the rest stays zero
                view = view[got:]
                inner += got
        except OSError as e:
            raise ChunkIOError(f"preadv ino {ino} chunk {index}: {e}", e.errno) from e
        finally:
            self._release(ent)

    def truncate_sync(self, ino: int, chunk_size: int, size: int) -> None:
        """Drop every byte at or beyond `size` (they read as zeros afterwards)."""
        if size == 0:
            self.delete_sync(ino)  # no directory left: an empty file owns nothing on disk
            return
        keep, inner = divmod(size, chunk_size)
        first_gone = keep + 1 if inner else keep
        if self.changed_hook is not None:
            self.changed_hook(ino, keep, None)
        with self._lock:
            self._forget_locked(ino, first_gone)
        d = self.ino_dir(ino)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return
        for name in names:
            if name.isdigit() and int(name) >= first_gone:
                self._unlink(d / name)
        if inner:
            path = self.chunk_path(ino, keep)
            try:
                if os.stat(path).st_size > inner:
                    os.truncate(path, inner)
                    with self._lock:
                        self._dirty.setdefault(ino, set()).add(keep)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise ChunkIOError(f"truncate {path}: {e}", e.errno) from e
        with self._lock:
            self._new_dirs.add(ino)  # unlinked names must reach disk too

    def delete_sync(self, ino: int) -> None:
        """Remove every chunk of ino."""
        if self.changed_hook is not None:
            self.changed_hook(ino, 0, None)
        with self._lock:
            self._forget_locked(ino, 0)
            self._dirty.pop(ino, None)
            self._new_dirs.discard(ino)
        d = self.ino_dir(ino)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return
        for name in names:
            self._unlink(d / name)
        try:
            os.rmdir(d)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise ChunkIOError(f"rmdir {d}: {e}", e.errno) from e

    def delete_chunk_sync(self, ino: int, index: int) -> int:
        """Remove one chunk file (a clean cached copy being evicted); returns its size."""
        with self._lock:
            self._forget_locked(ino, index, index)
        path = self.chunk_path(ino, index)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return 0
        self._unlink(path)
        return size

    def _unlink(self, path: Path) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise ChunkIOError(f"unlink {path}: {e}", e.errno) from e

    # -- durability -------------------------------------------------------------------------

    def fsync_sync(self, ino: int, indexes: list[int] | None = None, *, data_only: bool = False):
        """Make ino's dirty chunks (or just `indexes`) and new chunk directories durable."""
        with self._lock:
            dirty = self._dirty.get(ino, set())
            todo = sorted(dirty if indexes is None else dirty.intersection(indexes))
            dirty.difference_update(todo)
            if not dirty:
                self._dirty.pop(ino, None)
            new_dir = ino in self._new_dirs
            self._new_dirs.discard(ino)
        try:
            for index in todo:
                self._sync_chunk(ino, index, data_only)
            if new_dir:
                self._fsync_dir(self.ino_dir(ino))
                self._fsync_dir(self.root)
        except BaseException:
            with self._lock:  # not durable after all: keep them dirty for the next attempt
                self._dirty.setdefault(ino, set()).update(todo)
                if new_dir:
                    self._new_dirs.add(ino)
            raise

    def _sync_chunk(self, ino: int, index: int, data_only: bool) -> None:
        ent = self._acquire(ino, index, create=False)
        if ent is None:
            return
        try:
            (os.fdatasync if data_only else os.fsync)(ent.fd)
        except OSError as e:
            raise ChunkIOError(f"fsync ino {ino} chunk {index}: {e}", e.errno) from e
        finally:
            self._release(ent)

    def _fsync_dir(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        except OSError as e:
            if e.errno != errno.EINVAL:  # some file systems cannot fsync directories
                raise ChunkIOError(f"fsync {path}: {e}", e.errno) from e
        finally:
            os.close(fd)

    def needs_sync(self, ino: int) -> bool:
        """Has ino unsynced chunk data or a new chunk directory? (No I/O.)"""
        with self._lock:
            return bool(self._dirty.get(ino)) or ino in self._new_dirs

    def dirty_inodes(self) -> list[int]:
        with self._lock:
            return sorted(set(self._dirty) | self._new_dirs)

    def sync_all_sync(self) -> None:
        for ino in self.dirty_inodes():
            self.fsync_sync(ino)

    def stored_inodes_sync(self) -> list[int]:
        """Inode ids that have a chunk directory (for garbage collection after a crash)."""
        out = []
        for name in os.listdir(self.root):
            try:
                out.append(int(name, 16))
            except ValueError:
                continue
        return out

    def chunk_files_sync(self, ino: int) -> list[tuple[int, bytes]]:
        """(index, whole contents) of every chunk file of `ino`, by index (for snapshots)."""
        d = self.ino_dir(ino)
        names = sorted(int(n) for n in os.listdir(d) if n.isdigit())
        return [(index, self.chunk_path(ino, index).read_bytes()) for index in names]

    def put_chunk_file_sync(self, ino: int, index: int, data: bytes) -> None:
        """Make chunk `index` of `ino` exactly `data`, durably (installing a snapshot; the
        caller deleted the inode's old chunks first, so no descriptor of it is cached)."""
        self._write_whole(ino, index, data, sync=True)

    def _write_whole(self, ino: int, index: int, data: bytes, *, sync: bool,
                     keep: bool = False) -> None:
        """Write the chunk file afresh; with `keep`, its descriptor stays in the cache."""
        path = self.chunk_path(ino, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        if not keep:
            os.close(fd)
            return
        with self._lock:
            self._forget_locked(ino, index, index)  # the caller dropped any older copy
            self._cache_fd_locked(ino, index, fd)

    def put_chunk_files_sync(self, files: list[tuple[int, int, bytes]]) -> None:
        """Make each (ino, index) chunk exactly its bytes, durably: all written first, then
        the files and their directories fsynced a few at a time (the file system commits
        concurrent fsyncs together). Chunks moving in from another group (a ring change)."""
        for ino, index, data in files:
            with self._lock:
                self._forget_locked(ino, index, index)  # no cached descriptor of the old file
            self._write_whole(ino, index, data, sync=False)
        self.sync_files_sync([(ino, index) for ino, index, _ in files])

    def write_chunk_file_sync(self, ino: int, index: int, data: bytes) -> None:
        """Make chunk `index` of `ino` exactly `data`, not yet durable: a clean copy of bucket
        bytes (chunkcache.py), which `sync_files_sync` makes durable when it has to be. Its
        descriptor stays cached: the chunk was fetched for a reader, whose next READ may then
        be answered from the page cache on the event loop (`pread_nowait`, `dup_nowait` use
        only open descriptors)."""
        self._write_whole(ino, index, data, sync=False, keep=True)

    def sync_files_sync(self, chunks: list[tuple[int, int]]) -> None:
        """fsync the files of these (ino, index) chunks that exist, their directories and the
        root, a few at a time."""
        paths = [self.chunk_path(ino, index) for ino, index in chunks]

        def sync(path: Path) -> None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return  # deleted since (an eviction): nothing to make durable
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        dirs = sorted({p.parent for p in paths})
        with ThreadPoolExecutor(SYNC_THREADS) as pool:
            list(pool.map(sync, paths))
            list(pool.map(self._fsync_dir, dirs))
        for d in {d.parent for d in dirs}:
            self._fsync_dir(d)

    # -- async wrappers ---------------------------------------------------------------------

    async def run_sync(self, fn, *args):  # type: ignore[no-untyped-def]
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def _run_when_idle(self, fn, *args):  # type: ignore[no-untyped-def]
        """fn(*args) on the loop's thread if nothing else could run meanwhile, else run_sync."""
        if loop_is_idle(self._limiter):
            return fn(*args)
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def pwrite(self, ino: int, chunk_size: int, offset: int, data: memoryview) -> list[int]:
        return await self._run_when_idle(self.pwrite_sync, ino, chunk_size, offset, data)

    async def pread(self, ino: int, chunk_size: int, offset: int, count: int) -> bytes | bytearray:
        return await self._run_when_idle(self.pread_sync, ino, chunk_size, offset, count)

    async def truncate(self, ino: int, chunk_size: int, size: int) -> None:
        await self._run_when_idle(self.truncate_sync, ino, chunk_size, size)

    async def delete(self, ino: int) -> None:
        await self._run_when_idle(self.delete_sync, ino)

    async def fsync(self, ino: int, indexes: list[int] | None = None, *, data_only=False) -> None:
        await self._run_when_idle(lambda: self.fsync_sync(ino, indexes, data_only=data_only))
