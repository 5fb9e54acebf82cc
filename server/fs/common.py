"""Small pure helpers shared by the backend's operations: attributes, names, verifiers."""

from __future__ import annotations

import errno
import struct

from nfs_gateway.backend import (
    Attr,
    Cred,
    DQuot,
    Exists,
    FBig,
    FileType,
    FsError,
    Inval,
    IOError_,
    IsDir,
    NameTooLong,
    NoSpc,
    NotDir,
    Wcc,
    WccAttr,
)
from server.fs import perms
from server.fs.records import Inode

DOT, DOTDOT = b".", b".."
DIR_SIZE = 4096  # what `ls -l` shows for a directory; clients treat it as opaque


def to_attr(inode: Inode, fsid: int) -> Attr:
    """fattr3 (RFC 1813 §2.6) of an inode."""
    if inode.ftype == FileType.DIR:
        size = DIR_SIZE
    elif inode.ftype == FileType.LNK:
        size = len(inode.target)
    else:
        size = inode.size
    return Attr(
        type=inode.ftype,
        mode=inode.mode,
        nlink=inode.nlink,
        uid=inode.uid,
        gid=inode.gid,
        size=size,
        used=(size + 4095) // 4096 * 4096 if inode.ftype == FileType.REG else size,
        rdev=inode.rdev,
        fsid=fsid,
        fileid=inode.ino,
        atime_ns=inode.atime_ns,
        mtime_ns=inode.mtime_ns,
        ctime_ns=inode.ctime_ns,
    )


def wcc_attr(inode: Inode) -> WccAttr:
    size = DIR_SIZE if inode.ftype == FileType.DIR else inode.size
    return WccAttr(size, inode.mtime_ns, inode.ctime_ns)


def wcc(before: Inode | None, after: Inode | None, fsid: int) -> Wcc:
    return Wcc(
        None if before is None else wcc_attr(before),
        None if after is None else to_attr(after, fsid),
    )


def check_new_name(name: bytes, max_bytes: int) -> None:
    """A name for a new entry (knfsd: `.` and `..` exist already, so EXIST)."""
    if name in (DOT, DOTDOT):
        raise Exists(f"{name!r} always exists")
    check_name(name, max_bytes)


def check_name(name: bytes, max_bytes: int) -> None:
    if not name or b"/" in name or b"\0" in name:
        raise Inval(f"bad file name {name!r}")
    if len(name) > max_bytes:
        raise NameTooLong(f"name of {len(name)} bytes")


def require_dir(inode: Inode) -> None:
    if inode.ftype != FileType.DIR:
        raise NotDir(f"inode {inode.ino} is not a directory")


def require_reg(inode: Inode) -> None:
    """READ/WRITE/size on a non-file: ISDIR for directories, INVAL otherwise (knfsd)."""
    if inode.ftype == FileType.DIR:
        raise IsDir(f"inode {inode.ino} is a directory")
    if inode.ftype != FileType.REG:
        raise Inval(f"inode {inode.ino} is a {inode.ftype.name}")


def read_count(cred: Cred, inode: Inode, offset: int, count: int, max_read_bytes: int) -> int:
    """READ's checks (a regular file the caller may read); the bytes to read, 0 at or past
    EOF or for a count of 0."""
    require_reg(inode)
    perms.check_io(cred, inode, perms.R)
    count = min(count, max_read_bytes)
    if offset >= inode.size or count <= 0:
        return 0
    return min(count, inode.size - offset)


_ERRNO_ERRORS: dict[int, type[FsError]] = {
    errno.ENOSPC: NoSpc,
    errno.EDQUOT: DQuot,
    errno.EFBIG: FBig,
}


def disk_error(e: Exception, wcc_data: Wcc | None = None) -> FsError:
    """The nfsstat3 for a failed chunk operation: NOSPC/DQUOT/FBIG where the disk said so,
    else IO (RFC 1813 §2.6)."""
    cls = _ERRNO_ERRORS.get(getattr(e, "errno", None) or 0, IOError_)
    return cls(str(e), wcc=wcc_data)


def dir_cookieverf(inode: Inode) -> bytes:
    """Cookies of a directory stay valid for its life (they are never reused), so the verifier
    only has to tell this directory from an earlier one: its generation."""
    return struct.pack(">Q", inode.gen)
