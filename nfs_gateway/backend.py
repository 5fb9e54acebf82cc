"""The Backend protocol: everything the NFS gateway knows about the file system behind it.

Rules:
- The gateway decodes XDR, checks exports and credentials, and calls these methods with plain
  Python values. The backend never sees XDR; the gateway never sees inodes' storage.
- Files are named by FileId (inode id, generation). The gateway turns a FileId into an NFS file
  handle and back; the backend raises Stale for a FileId whose inode is gone or whose
  generation differs (RFC 1813 §2.3.3: a handle of a deleted file answers NFS3ERR_STALE).
- Operating errors are the typed FsError subclasses below; the gateway maps them to nfsstat3 in
  exactly one place (nfs_gateway/nfs3/errors.py). Anything else is a programmer error.
- Times are integers in nanoseconds since the epoch.
- Permission checks happen in the backend, from the Cred the gateway passes (after root squash).
- Every method that changes something returns the weak cache consistency data (wcc_data,
  RFC 1813 §2.6) of what it changed: attributes before (size, mtime, ctime) and after.
- Optional fast path (NowaitBackend): a backend may also offer synchronous `*_nowait` twins of
  getattr, access, lookup and read that answer from memory or return None when they would need
  I/O; the gateway then answers those calls without a task or a thread. A backend without them
  works unchanged (every call takes the async method).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


class FileType(enum.IntEnum):
    """ftype3 (RFC 1813 §2.6)."""

    REG = 1
    DIR = 2
    BLK = 3
    CHR = 4
    LNK = 5
    SOCK = 6
    FIFO = 7


class StableHow(enum.IntEnum):
    """stable_how (RFC 1813 §3.3.7)."""

    UNSTABLE = 0
    DATA_SYNC = 1
    FILE_SYNC = 2


class CreateMode(enum.IntEnum):
    """createmode3 (RFC 1813 §3.3.8)."""

    UNCHECKED = 0
    GUARDED = 1
    EXCLUSIVE = 2


# ACCESS bits (RFC 1813 §3.3.4).
ACCESS_READ = 0x0001
ACCESS_LOOKUP = 0x0002
ACCESS_MODIFY = 0x0004
ACCESS_EXTEND = 0x0008
ACCESS_DELETE = 0x0010
ACCESS_EXECUTE = 0x0020


@dataclass(frozen=True, slots=True)
class Cred:
    """Who asks: AUTH_SYS credentials after export squashing (RFC 5531 appendix A)."""

    uid: int
    gid: int
    gids: tuple[int, ...] = ()
    machine: str = ""

    @property
    def is_root(self) -> bool:
        return self.uid == 0


@dataclass(frozen=True, slots=True)
class FileId:
    """A file's durable identity: inode ids are never reused; generation guards against it."""

    ino: int
    gen: int


@dataclass(frozen=True, slots=True)
class Attr:
    """fattr3 (RFC 1813 §2.6), times in nanoseconds."""

    type: FileType
    mode: int  # permission bits and setuid/setgid/sticky (07777), not the file type
    nlink: int
    uid: int
    gid: int
    size: int
    used: int
    rdev: tuple[int, int]  # (major, minor) for BLK and CHR, else (0, 0)
    fsid: int
    fileid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int


@dataclass(frozen=True, slots=True)
class WccAttr:
    """wcc_attr: the attributes before a change, for the client's cache check."""

    size: int
    mtime_ns: int
    ctime_ns: int

    @staticmethod
    def of(attr: Attr) -> WccAttr:
        return WccAttr(attr.size, attr.mtime_ns, attr.ctime_ns)


@dataclass(frozen=True, slots=True)
class Wcc:
    """wcc_data: before and after a change. Either may be None if unknown."""

    before: WccAttr | None = None
    after: Attr | None = None


class TimeHow(enum.IntEnum):
    """time_how (RFC 1813 §2.6, set_atime / set_mtime)."""

    DONT_CHANGE = 0
    SET_TO_SERVER_TIME = 1
    SET_TO_CLIENT_TIME = 2


@dataclass(frozen=True, slots=True)
class SetAttrs:
    """sattr3: None means leave unchanged."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime: TimeHow = TimeHow.DONT_CHANGE
    atime_ns: int = 0  # used when atime == SET_TO_CLIENT_TIME
    mtime: TimeHow = TimeHow.DONT_CHANGE
    mtime_ns: int = 0


@dataclass(frozen=True, slots=True)
class Created:
    """Result of CREATE, MKDIR, SYMLINK, MKNOD: the new object and its directory's wcc."""

    fid: FileId
    attr: Attr
    dir_wcc: Wcc


@dataclass(frozen=True, slots=True)
class LookupResult:
    fid: FileId
    attr: Attr
    dir_attr: Attr | None


class FileSlice:
    """READ data still in a file: `count` bytes of descriptor `fd` from `offset`; bytes past the
    file's end read as zeros. The gateway sends it with os.sendfile, so the data never passes
    through user space; it is only for a `*_nowait` READ whose pages are in the page cache.

    The slice owns `fd` (a dup) and closes it in `release()`, which the gateway calls once the
    reply is sent or abandoned; a slice that is dropped unreleased closes it when collected."""

    __slots__ = ("count", "fd", "offset")

    def __init__(self, fd: int, offset: int, count: int) -> None:
        assert fd >= 0 and offset >= 0 and count > 0
        self.fd = fd
        self.offset = offset
        self.count = count

    def __len__(self) -> int:
        return self.count

    def read(self) -> bytes:
        """The bytes (copied: for paths that cannot send from a file, and tests)."""
        data = os.pread(self.fd, self.count, self.offset)
        return data + bytes(self.count - len(data))

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.release()


@dataclass(frozen=True, slots=True)
class ReadResult:
    data: bytes | memoryview | FileSlice  # FileSlice: from read_nowait only
    eof: bool
    attr: Attr | None


@dataclass(frozen=True, slots=True)
class WriteResult:
    count: int
    committed: StableHow
    verifier: bytes  # writeverf3, 8 bytes; changes exactly when unstable data may have been lost
    wcc: Wcc


@dataclass(frozen=True, slots=True)
class CommitResult:
    verifier: bytes
    wcc: Wcc


@dataclass(frozen=True, slots=True)
class RenameResult:
    from_dir_wcc: Wcc
    to_dir_wcc: Wcc


@dataclass(frozen=True, slots=True)
class LinkResult:
    attr: Attr | None
    dir_wcc: Wcc


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One directory entry. fid and attr are filled when READDIRPLUS asked for them."""

    fileid: int
    name: bytes
    cookie: int  # stable: a later READDIR from this cookie continues after this entry
    fid: FileId | None = None
    attr: Attr | None = None


@dataclass(frozen=True, slots=True)
class ReadDirResult:
    dir_attr: Attr | None
    cookieverf: bytes  # 8 bytes
    entries: Sequence[DirEntry] = field(default_factory=tuple)
    eof: bool = True  # True when entries reach the end of the directory


@dataclass(frozen=True, slots=True)
class FsStat:
    """FSSTAT3resok (RFC 1813 §3.3.18)."""

    tbytes: int
    fbytes: int
    abytes: int
    tfiles: int
    ffiles: int
    afiles: int
    invarsec: int


# ---------------------------------------------------------------------------------------------
# Operating errors. Each names the nfsstat3 it becomes; the mapping lives in the gateway.


class FsError(Exception):
    """An operating error the client should see as an nfsstat3."""

    def __init__(self, message: str = "", wcc: Wcc | None = None) -> None:
        super().__init__(message or type(self).__name__)
        # The RFC returns wcc_data (or post-op attributes) in failure replies too.
        self.wcc = wcc


class Perm(FsError):  # NFS3ERR_PERM: not owner, not root
    pass


class NoEnt(FsError):  # NFS3ERR_NOENT
    pass


class IOError_(FsError):  # NFS3ERR_IO: a hard error (disk, bucket) while doing the operation
    pass


class NxIO(FsError):  # NFS3ERR_NXIO
    pass


class Access(FsError):  # NFS3ERR_ACCES: permission denied by mode bits
    pass


class Exists(FsError):  # NFS3ERR_EXIST
    pass


class XDev(FsError):  # NFS3ERR_XDEV
    pass


class NotDir(FsError):  # NFS3ERR_NOTDIR
    pass


class IsDir(FsError):  # NFS3ERR_ISDIR
    pass


class Inval(FsError):  # NFS3ERR_INVAL
    pass


class FBig(FsError):  # NFS3ERR_FBIG
    pass


class NoSpc(FsError):  # NFS3ERR_NOSPC
    pass


class ReadOnly(FsError):  # NFS3ERR_ROFS
    pass


class MLink(FsError):  # NFS3ERR_MLINK
    pass


class NameTooLong(FsError):  # NFS3ERR_NAMETOOLONG
    pass


class NotEmpty(FsError):  # NFS3ERR_NOTEMPTY
    pass


class DQuot(FsError):  # NFS3ERR_DQUOT
    pass


class Stale(FsError):  # NFS3ERR_STALE
    pass


class BadHandle(FsError):  # NFS3ERR_BADHANDLE
    pass


class NotSync(FsError):  # NFS3ERR_NOT_SYNC: SETATTR guard (ctime) did not match
    pass


class BadCookie(FsError):  # NFS3ERR_BAD_COOKIE
    pass


class NotSupp(FsError):  # NFS3ERR_NOTSUPP
    pass


class TooSmall(FsError):  # NFS3ERR_TOOSMALL
    pass


class ServerFault(FsError):  # NFS3ERR_SERVERFAULT
    pass


class BadType(FsError):  # NFS3ERR_BADTYPE: e.g. MKNOD of a type it cannot create
    pass


class Jukebox(FsError):  # NFS3ERR_JUKEBOX: try again later (leader change, bucket fetch)
    pass


# ---------------------------------------------------------------------------------------------


class Backend(Protocol):
    """What the gateway calls. All methods are async; names follow RFC 1813 procedures."""

    fsid: int

    async def export_root(self, path: str) -> FileId:
        """The directory exported at `path` (MOUNT MNT). NoEnt if there is none."""
        ...

    async def getattr(self, fid: FileId) -> Attr: ...

    async def setattr(
        self, cred: Cred, fid: FileId, sattr: SetAttrs, guard_ctime_ns: int | None
    ) -> Wcc:
        """NotSync if guard_ctime_ns is given and differs from the file's ctime (§3.3.2)."""
        ...

    async def lookup(self, cred: Cred, dir_fid: FileId, name: bytes) -> LookupResult:
        """Also resolves b"." and b".."."""
        ...

    async def access(self, cred: Cred, fid: FileId, mask: int) -> tuple[int, Attr]:
        """The subset of `mask` that cred may do, and the file's attributes (§3.3.4)."""
        ...

    async def readlink(self, cred: Cred, fid: FileId) -> tuple[bytes, Attr]: ...

    async def read(self, cred: Cred, fid: FileId, offset: int, count: int) -> ReadResult: ...

    async def write(
        self, cred: Cred, fid: FileId, offset: int, data: memoryview, stable: StableHow
    ) -> WriteResult:
        """FILE_SYNC and DATA_SYNC writes are on disk before this returns."""
        ...

    async def create(
        self,
        cred: Cred,
        dir_fid: FileId,
        name: bytes,
        how: CreateMode,
        sattr: SetAttrs,
        verf: bytes | None,
    ) -> Created:
        """EXCLUSIVE keeps `verf` so that a retried CREATE with the same verifier succeeds."""
        ...

    async def mkdir(self, cred: Cred, dir_fid: FileId, name: bytes, sattr: SetAttrs) -> Created: ...

    async def symlink(
        self, cred: Cred, dir_fid: FileId, name: bytes, target: bytes, sattr: SetAttrs
    ) -> Created: ...

    async def mknod(
        self,
        cred: Cred,
        dir_fid: FileId,
        name: bytes,
        ftype: FileType,
        sattr: SetAttrs,
        rdev: tuple[int, int],
    ) -> Created: ...

    async def remove(self, cred: Cred, dir_fid: FileId, name: bytes) -> Wcc: ...

    async def rmdir(self, cred: Cred, dir_fid: FileId, name: bytes) -> Wcc: ...

    async def rename(
        self, cred: Cred, from_dir: FileId, from_name: bytes, to_dir: FileId, to_name: bytes
    ) -> RenameResult: ...

    async def link(self, cred: Cred, fid: FileId, dir_fid: FileId, name: bytes) -> LinkResult: ...

    async def readdir(
        self,
        cred: Cred,
        dir_fid: FileId,
        cookie: int,
        cookieverf: bytes,
        max_entries: int,
        plus: bool,
    ) -> ReadDirResult:
        """Entries after `cookie` (0: from the start), at most max_entries of them.

        BadCookie if cookieverf is not the directory's current verifier (and cookie != 0).
        `.` and `..` are included at the start, as clients expect.
        """
        ...

    async def fsstat(self, fid: FileId) -> tuple[FsStat, Attr]: ...

    async def commit(self, cred: Cred, fid: FileId, offset: int, count: int) -> CommitResult:
        """Everything written to the file so far is on disk before this returns (§3.3.21)."""
        ...


class NowaitBackend(Protocol):
    """The optional fast path: each method gives what its async twin would, raising the same
    FsErrors, or None when answering needs I/O (then the gateway awaits the async method).
    They must not block: no disk, no network, no locks that could wait."""

    def getattr_nowait(self, fid: FileId) -> Attr | None: ...

    def access_nowait(self, cred: Cred, fid: FileId, mask: int) -> tuple[int, Attr] | None: ...

    def lookup_nowait(self, cred: Cred, dir_fid: FileId, name: bytes) -> LookupResult | None: ...

    def read_nowait(
        self, cred: Cred, fid: FileId, offset: int, count: int
    ) -> ReadResult | None:
        """May answer with a FileSlice (the gateway releases it) when the pages are cached."""
        ...
