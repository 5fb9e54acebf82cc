"""libnfs (a client we did not write) for the fault campaign: the calls the workload needs,
every one bounded by a timeout, and no silent reconnect (a lost connection is an error the
workload sees, so that it knows which operations were not acknowledged).

An acknowledgement is what a real application gets: a write is acknowledged when the
whole file was written, `fsync` (NFS COMMIT) answered and `close` returned without error.
"""

from __future__ import annotations

import ctypes
import os

from nfsclient import WRITE_STEP, LibNfs

TIMEOUT_MS = 20_000
READ_STEP = 1 << 20


class _Stat64(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "dev", "ino", "mode", "nlink", "uid", "gid", "rdev", "size", "blksize", "blocks",
        "atime", "mtime", "ctime", "atime_nsec", "mtime_nsec", "ctime_nsec", "used")]


class FaultNfs(LibNfs):
    def __init__(self, url: str, timeout_ms: int = TIMEOUT_MS) -> None:
        self._timeout_ms = timeout_ms
        super().__init__(url)
        lib = self.lib  # this client's own declarations (its own stat struct) on its handle
        lib.nfs_open.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                 ctypes.POINTER(ctypes.c_void_p)]
        lib.nfs_pread.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64,
                                  ctypes.c_uint64, ctypes.c_void_p]
        lib.nfs_truncate.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint64]
        lib.nfs_fsync.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.nfs_stat64.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(_Stat64)]
        lib.nfs_create.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int,
                                   ctypes.POINTER(ctypes.c_void_p)]

    def _before_mount(self) -> None:
        # The timeout and the reconnect policy must be set on the context before the mount.
        self.lib.nfs_set_timeout.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.lib.nfs_set_autoreconnect.argtypes = [ctypes.c_void_p, ctypes.c_int]
        if self._timeout_ms:  # 0: none (libnfs's timeout handling crashed once under load)
            self.lib.nfs_set_timeout(self.ctx, self._timeout_ms)
        self.lib.nfs_set_autoreconnect(self.ctx, 0)

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Create or truncate, write, fsync, close: every step checked. (nfs_creat does not
        truncate an existing file: CREATE UNCHECKED keeps its bytes; O_TRUNC does.)"""
        fh = ctypes.c_void_p()
        self._check(self.lib.nfs_create(self.ctx, path.encode(), os.O_TRUNC, mode,
                                        ctypes.byref(fh)), "create", path)
        self._write_all(fh, path, 0, data, close=True)

    def pwrite(self, path: str, offset: int, data: bytes) -> None:
        fh = ctypes.c_void_p()
        self._check(self.lib.nfs_open(self.ctx, path.encode(), os.O_WRONLY, ctypes.byref(fh)),
                    "open", path)
        self._write_all(fh, path, offset, data, close=True)

    def _write_all(self, fh: ctypes.c_void_p, path: str, offset: int, data: bytes, *,
                   close: bool) -> None:
        closed = False
        try:
            for off in range(0, len(data), WRITE_STEP):
                piece = data[off:off + WRITE_STEP]
                n = self.lib.nfs_pwrite(self.ctx, fh, offset + off, len(piece), piece)
                self._check(n, "pwrite", path)
                if n != len(piece):
                    raise OSError(f"pwrite({path}): {n} of {len(piece)} bytes written")
            self._check(self.lib.nfs_fsync(self.ctx, fh), "fsync", path)
            closed = True
            self._check(self.lib.nfs_close(self.ctx, fh), "close", path)
        finally:
            if not closed:
                self.lib.nfs_close(self.ctx, fh)

    def truncate(self, path: str, size: int) -> None:
        self._check(self.lib.nfs_truncate(self.ctx, path.encode(), size), "truncate", path)

    def size(self, path: str) -> int:
        st = _Stat64()
        self._check(self.lib.nfs_stat64(self.ctx, path.encode(), ctypes.byref(st)), "stat", path)
        return st.size

    def read_file(self, path: str) -> bytes:
        size = self.size(path)
        fh = ctypes.c_void_p()
        self._check(self.lib.nfs_open(self.ctx, path.encode(), os.O_RDONLY, ctypes.byref(fh)),
                    "open", path)
        out = bytearray()
        try:
            buf = ctypes.create_string_buffer(READ_STEP)
            while len(out) < size:
                n = self.lib.nfs_pread(self.ctx, fh, len(out), min(READ_STEP, size - len(out)),
                                       buf)
                self._check(n, "pread", path)
                if n == 0:
                    break
                out += buf.raw[:n]
        finally:
            self.lib.nfs_close(self.ctx, fh)
        return bytes(out)

    def exists(self, path: str) -> bool:
        try:
            self.size(path)
            return True
        except OSError as e:
            if "NOENT" in str(e) or "No such file" in str(e):
                return False
            raise
