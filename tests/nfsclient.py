"""A synchronous NFS client for tests and benchmarks: libnfs itself (libnfs13, Debian's
libnfs-utils) through ctypes, for what its command-line tools cannot do (mkdir, rename, remove,
many small files through one mount). A client we did not write.

    nfs = LibNfs(nfs_url(port, port, "/"))   # the export's URL (serverproc.nfs_url)
    nfs.mkdir("/d"); nfs.write_file("/d/f", b"..."); nfs.rename("/d/f", "/d/g"); nfs.close()

Every call raises OSError with libnfs's message (e.g. "... NFS3ERR_JUKEBOX ...") on failure.
"""

from __future__ import annotations

import ctypes

WRITE_STEP = 1 << 20  # bytes per nfs_pwrite


class _NfsUrl(ctypes.Structure):
    _fields_ = [("server", ctypes.c_char_p), ("path", ctypes.c_char_p),
                ("file", ctypes.c_char_p)]


class LibNfs:
    """One mount of an export through libnfs's synchronous API (module doc)."""

    def __init__(self, url: str) -> None:
        lib = ctypes.CDLL("libnfs.so.13")
        lib.nfs_init_context.restype = ctypes.c_void_p
        lib.nfs_get_error.restype = ctypes.c_char_p
        lib.nfs_get_error.argtypes = [ctypes.c_void_p]
        lib.nfs_mount.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
        for name in ("nfs_mkdir", "nfs_unlink", "nfs_rmdir"):
            getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nfs_rename.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
        lib.nfs_creat.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                  ctypes.POINTER(ctypes.c_void_p)]
        lib.nfs_close.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.nfs_pwrite.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64,
                                   ctypes.c_uint64, ctypes.c_char_p]
        lib.nfs_destroy_context.argtypes = [ctypes.c_void_p]
        lib.nfs_parse_url_dir.restype = ctypes.POINTER(_NfsUrl)
        lib.nfs_parse_url_dir.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nfs_destroy_url.argtypes = [ctypes.POINTER(_NfsUrl)]
        self.lib = lib
        self.ctx = lib.nfs_init_context()
        assert self.ctx, "nfs_init_context"
        parsed = lib.nfs_parse_url_dir(self.ctx, url.encode())  # the ports too
        assert parsed, self.error()
        try:
            self._check(lib.nfs_mount(self.ctx, parsed.contents.server, parsed.contents.path),
                        "mount", "/")
        finally:
            lib.nfs_destroy_url(parsed)

    def _check(self, rc: int, call: str, path: str) -> None:
        if rc < 0:
            raise OSError(f"{call}({path}): {self.error()}")

    def error(self) -> str:
        return (self.lib.nfs_get_error(self.ctx) or b"").decode(errors="replace")

    def mkdir(self, path: str) -> None:
        self._check(self.lib.nfs_mkdir(self.ctx, path.encode()), "mkdir", path)

    def rename(self, old: str, new: str) -> None:
        self._check(self.lib.nfs_rename(self.ctx, old.encode(), new.encode()), "rename", old)

    def rmdir(self, path: str) -> None:
        self._check(self.lib.nfs_rmdir(self.ctx, path.encode()), "rmdir", path)

    def unlink(self, path: str) -> None:
        self._check(self.lib.nfs_unlink(self.ctx, path.encode()), "unlink", path)

    def create(self, path: str) -> None:
        self.write_file(path, b"")

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Create (or truncate) `path` and write `data` to it."""
        fh = ctypes.c_void_p()
        self._check(self.lib.nfs_creat(self.ctx, path.encode(), mode, ctypes.byref(fh)),
                    "creat", path)
        try:
            for off in range(0, len(data), WRITE_STEP):
                piece = data[off:off + WRITE_STEP]
                n = self.lib.nfs_pwrite(self.ctx, fh, off, len(piece), piece)
                self._check(n, "pwrite", path)
                if n != len(piece):
                    raise OSError(f"pwrite({path}): {n} of {len(piece)} bytes written")
        finally:
            self.lib.nfs_close(self.ctx, fh)

    def close(self) -> None:
        self.lib.nfs_destroy_context(self.ctx)
