"""A synchronous NFS client for tests and benchmarks: libnfs itself (libnfs13, Debian's
libnfs-utils) through ctypes, for what its command-line tools cannot do (mkdir, rename, remove,
many small files through one mount). A client we did not write.

    nfs = LibNfs(nfs_url(port, port, "/"))   # the export's URL (serverproc.nfs_url)
    nfs.mkdir("/d"); nfs.write_file("/d/f", b"..."); nfs.rename("/d/f", "/d/g"); nfs.close()

Every call raises OSError with libnfs's message (e.g. "... NFS3ERR_JUKEBOX ...") on failure;
its `errno` is the errno libnfs mapped the NFS status to (libnfs returns -errno).

The POSIX-like calls (open/pread/pwrite/truncate/symlink/readlink/link/lstat/listdir/chmod)
are what the model-based checker (tests/model) drives: each maps to one libnfs call, so an
error is the server's answer as libnfs translates it, not ours.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

WRITE_STEP = 1 << 20  # bytes per nfs_pwrite


class _NfsUrl(ctypes.Structure):
    _fields_ = [("server", ctypes.c_char_p), ("path", ctypes.c_char_p),
                ("file", ctypes.c_char_p)]


class _NfsStat64(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "dev", "ino", "mode", "nlink", "uid", "gid", "rdev", "size", "blksize", "blocks",
        "atime", "mtime", "ctime", "atime_nsec", "mtime_nsec", "ctime_nsec", "used")]


class _NfsDirent(ctypes.Structure):
    pass


_NfsDirent._fields_ = [("next", ctypes.POINTER(_NfsDirent)), ("name", ctypes.c_char_p),
                       ("inode", ctypes.c_uint64)]  # the rest of the struct is not read


@dataclass(frozen=True)
class NfsStat:
    """What lstat/stat return: st_mode (type and permission bits, as os.stat), and the rest."""

    mode: int
    nlink: int
    size: int
    ino: int
    uid: int
    gid: int
    mtime_ns: int


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
        _declare_posix(lib)
        lib.nfs_parse_url_dir.restype = ctypes.POINTER(_NfsUrl)
        lib.nfs_parse_url_dir.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nfs_destroy_url.argtypes = [ctypes.POINTER(_NfsUrl)]
        self.lib = lib
        self.ctx = lib.nfs_init_context()
        assert self.ctx, "nfs_init_context"
        self._before_mount()
        parsed = lib.nfs_parse_url_dir(self.ctx, url.encode())  # the ports too
        try:
            if not parsed:
                raise OSError(f"url {url}: {self.error()}")
            self._check(lib.nfs_mount(self.ctx, parsed.contents.server, parsed.contents.path),
                        "mount", "/")
        except BaseException:
            lib.nfs_destroy_context(self.ctx)
            raise
        finally:
            if parsed:
                lib.nfs_destroy_url(parsed)

    def _before_mount(self) -> None:
        """Context settings that must precede the mount (a subclass's; none here)."""

    def _check(self, rc: int, call: str, path: str) -> None:
        if rc < 0:
            err = OSError(f"{call}({path}): {self.error()}")
            err.errno = -rc  # libnfs's sync calls return -errno
            raise err

    def error(self) -> str:
        return (self.lib.nfs_get_error(self.ctx) or b"").decode(errors="replace")

    def mkdir(self, path: str, mode: int | None = None) -> None:
        """MKDIR; with `mode`, through nfs_mkdir2 (that mode, less the context's umask)."""
        if mode is None:
            self._check(self.lib.nfs_mkdir(self.ctx, path.encode()), "mkdir", path)
        else:
            self._check(self.lib.nfs_mkdir2(self.ctx, path.encode(), mode), "mkdir", path)

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

    # -- POSIX-like calls (module doc) -------------------------------------------------------

    def set_dircache(self, enabled: bool) -> None:
        """libnfs caches directory listings by default; off, every listing asks the server."""
        self.lib.nfs_set_dircache(self.ctx, int(enabled))

    def umask(self, mask: int) -> int:
        """The context's umask (libnfs applies it to create and mkdir2); returns the old one."""
        return self.lib.nfs_umask(self.ctx, mask)

    def open(self, path: str, flags: int, mode: int = 0o644) -> ctypes.c_void_p:
        """open(2) through nfs_open2 (O_CREAT, O_EXCL, O_TRUNC, O_NOFOLLOW ... as libnfs
        supports them); the handle is for pread/pwrite/ftruncate/fclose."""
        fh = ctypes.c_void_p()
        self._check(self.lib.nfs_open2(self.ctx, path.encode(), flags, mode, ctypes.byref(fh)),
                    "open", path)
        return fh

    def create_file(self, path: str, flags: int, mode: int) -> ctypes.c_void_p:
        """nfs_create: CREATE with `flags` (O_EXCL: GUARDED, so an existing name is EEXIST)."""
        fh = ctypes.c_void_p()
        self._check(self.lib.nfs_create(self.ctx, path.encode(), flags, mode, ctypes.byref(fh)),
                    "create", path)
        return fh

    def fclose(self, fh: ctypes.c_void_p) -> None:
        self._check(self.lib.nfs_close(self.ctx, fh), "close", "fh")

    def pread(self, fh: ctypes.c_void_p, offset: int, count: int) -> bytes:
        """Up to `count` bytes at `offset`, as many READs as it takes (short only at EOF)."""
        out = bytearray()
        while len(out) < count:
            want = min(WRITE_STEP, count - len(out))
            buf = ctypes.create_string_buffer(want)
            n = self.lib.nfs_pread(self.ctx, fh, offset + len(out), want, buf)
            self._check(n, "pread", "fh")
            if n == 0:
                break
            out += buf.raw[:n]
        return bytes(out)

    def pwrite(self, fh: ctypes.c_void_p, offset: int, data: bytes) -> None:
        for off in range(0, len(data), WRITE_STEP):
            piece = data[off:off + WRITE_STEP]
            n = self.lib.nfs_pwrite(self.ctx, fh, offset + off, len(piece), piece)
            self._check(n, "pwrite", "fh")
            if n != len(piece):
                raise OSError(f"pwrite: {n} of {len(piece)} bytes written")

    def truncate(self, path: str, size: int) -> None:
        self._check(self.lib.nfs_truncate(self.ctx, path.encode(), size), "truncate", path)

    def ftruncate(self, fh: ctypes.c_void_p, size: int) -> None:
        self._check(self.lib.nfs_ftruncate(self.ctx, fh, size), "ftruncate", "fh")

    def symlink(self, target: str, path: str) -> None:
        self._check(self.lib.nfs_symlink(self.ctx, target.encode(), path.encode()),
                    "symlink", path)

    def readlink(self, path: str) -> str:
        buf = ctypes.c_char_p()
        self._check(self.lib.nfs_readlink2(self.ctx, path.encode(), ctypes.byref(buf)),
                    "readlink", path)
        try:
            return (ctypes.string_at(buf) if buf else b"").decode("utf-8", "surrogateescape")
        finally:
            _libc_free(buf)

    def link(self, old: str, new: str) -> None:
        self._check(self.lib.nfs_link(self.ctx, old.encode(), new.encode()), "link", old)

    def chmod(self, path: str, mode: int) -> None:
        """chmod(2): follows a final symlink (nfs_lchmod would not)."""
        self._check(self.lib.nfs_chmod(self.ctx, path.encode(), mode), "chmod", path)

    def lstat(self, path: str) -> NfsStat:
        return self._stat(self.lib.nfs_lstat64, "lstat", path)

    def stat(self, path: str) -> NfsStat:
        return self._stat(self.lib.nfs_stat64, "stat", path)

    def _stat(self, fn, call: str, path: str) -> NfsStat:
        st = _NfsStat64()
        self._check(fn(self.ctx, path.encode(), ctypes.byref(st)), call, path)
        return NfsStat(mode=st.mode, nlink=st.nlink, size=st.size, ino=st.ino, uid=st.uid,
                       gid=st.gid, mtime_ns=st.mtime * 10**9 + st.mtime_nsec)

    def listdir(self, path: str) -> list[str]:
        """The names in a directory (READDIRPLUS), "." and ".." left out, unsorted."""
        d = ctypes.c_void_p()
        self._check(self.lib.nfs_opendir(self.ctx, path.encode(), ctypes.byref(d)),
                    "opendir", path)
        names = []
        try:
            while True:
                ent = self.lib.nfs_readdir(self.ctx, d)
                if not ent:
                    break
                name = ent.contents.name.decode("utf-8", "surrogateescape")
                if name not in (".", ".."):
                    names.append(name)
        finally:
            self.lib.nfs_closedir(self.ctx, d)
        return names


def _declare_posix(lib: ctypes.CDLL) -> None:
    """ctypes signatures of the calls behind LibNfs's POSIX-like methods."""
    vp, cp, u64, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint64, ctypes.c_int
    pvp = ctypes.POINTER(ctypes.c_void_p)
    lib.nfs_mkdir2.argtypes = [vp, cp, i]
    lib.nfs_set_dircache.argtypes = [vp, i]
    lib.nfs_set_dircache.restype = None
    lib.nfs_umask.argtypes = [vp, ctypes.c_uint16]
    lib.nfs_umask.restype = ctypes.c_uint16
    lib.nfs_open2.argtypes = [vp, cp, i, i, pvp]
    lib.nfs_create.argtypes = [vp, cp, i, i, pvp]
    lib.nfs_pread.argtypes = [vp, vp, u64, u64, ctypes.c_void_p]
    lib.nfs_truncate.argtypes = [vp, cp, u64]
    lib.nfs_ftruncate.argtypes = [vp, vp, u64]
    lib.nfs_symlink.argtypes = [vp, cp, cp]
    lib.nfs_readlink2.argtypes = [vp, cp, ctypes.POINTER(ctypes.c_char_p)]
    lib.nfs_link.argtypes = [vp, cp, cp]
    lib.nfs_chmod.argtypes = [vp, cp, i]
    lib.nfs_lstat64.argtypes = [vp, cp, ctypes.POINTER(_NfsStat64)]
    lib.nfs_stat64.argtypes = [vp, cp, ctypes.POINTER(_NfsStat64)]
    lib.nfs_opendir.argtypes = [vp, cp, pvp]
    lib.nfs_readdir.argtypes = [vp, vp]
    lib.nfs_readdir.restype = ctypes.POINTER(_NfsDirent)
    lib.nfs_closedir.argtypes = [vp, vp]
    lib.nfs_closedir.restype = None


def _libc_free(ptr: ctypes.c_char_p) -> None:
    """free() a buffer libnfs malloc'ed for us (readlink2)."""
    if ptr:
        libc = ctypes.CDLL(None)
        libc.free.argtypes = [ctypes.c_void_p]
        libc.free(ctypes.cast(ptr, ctypes.c_void_p))
