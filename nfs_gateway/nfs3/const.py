"""NFS version 3 constants (RFC 1813 §2.4, §2.6, §3).

Rules: numbers only, no behaviour. Names follow the RFC (prefix NFS3 dropped where it only
repeats the module name).
"""

from __future__ import annotations

import enum

NFS_PROGRAM = 100003
NFS_V3 = 3

# Sizes (RFC 1813 §2.4).
NFS3_FHSIZE = 64  # the largest file handle, in bytes
NFS3_COOKIEVERFSIZE = 8
NFS3_CREATEVERFSIZE = 8
NFS3_WRITEVERFSIZE = 8

# Limits the gateway enforces on names and paths. A longer name is decoded (up to the XDR limit
# below) and then answered NFS3ERR_NAMETOOLONG by the handler, as the RFC asks, not GARBAGE_ARGS.
NAME_MAX = 255
PATH_MAX = 1024
# Anything longer than this cannot be a sane name or path: the decoder refuses it as garbage, so
# a hostile length never makes us allocate much.
XDR_NAME_LIMIT = 4096
XDR_PATH_LIMIT = 8192
# WRITE data longer than this is garbage; the handler caps what it writes at wtmax (§3.3.7).
XDR_DATA_LIMIT = 64 * 1024 * 1024


class Stat(enum.IntEnum):
    """nfsstat3 (RFC 1813 §2.6)."""

    OK = 0
    PERM = 1
    NOENT = 2
    IO = 5
    NXIO = 6
    ACCES = 13
    EXIST = 17
    XDEV = 18
    NODEV = 19
    NOTDIR = 20
    ISDIR = 21
    INVAL = 22
    FBIG = 27
    NOSPC = 28
    ROFS = 30
    MLINK = 31
    NAMETOOLONG = 63
    NOTEMPTY = 66
    DQUOT = 69
    STALE = 70
    REMOTE = 71
    BADHANDLE = 10001
    NOT_SYNC = 10002
    BAD_COOKIE = 10003
    NOTSUPP = 10004
    TOOSMALL = 10005
    SERVERFAULT = 10006
    BADTYPE = 10007
    JUKEBOX = 10008


class Proc(enum.IntEnum):
    """NFS version 3 procedure numbers (RFC 1813 §3)."""

    NULL = 0
    GETATTR = 1
    SETATTR = 2
    LOOKUP = 3
    ACCESS = 4
    READLINK = 5
    READ = 6
    WRITE = 7
    CREATE = 8
    MKDIR = 9
    SYMLINK = 10
    MKNOD = 11
    REMOVE = 12
    RMDIR = 13
    RENAME = 14
    LINK = 15
    READDIR = 16
    READDIRPLUS = 17
    FSSTAT = 18
    FSINFO = 19
    PATHCONF = 20
    COMMIT = 21


# FSINFO properties (RFC 1813 §3.3.19).
FSF3_LINK = 0x0001
FSF3_SYMLINK = 0x0002
FSF3_HOMOGENEOUS = 0x0008
FSF3_CANSETTIME = 0x0010

# ACCESS bits that ask to change something: masked off on a read-only export (§3.3.4).
ACCESS_WRITE_BITS = 0x0004 | 0x0008 | 0x0010  # MODIFY | EXTEND | DELETE

MIB = 1024 * 1024
KIB = 1024
