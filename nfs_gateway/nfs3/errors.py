"""THE one place operating errors (backend.FsError subclasses) become nfsstat3 (RFC 1813 §2.6).

Rules: a table, not an if-chain; every FsError subclass has a row (tests/unit/test_nfs3_errors.py
checks it). A subclass of a subclass maps like its nearest listed ancestor, so a backend may
refine an error without breaking the gateway.
"""

from __future__ import annotations

from collections.abc import Mapping

from nfs_gateway import backend as b
from nfs_gateway.nfs3.const import Stat

STATUS_OF: Mapping[type[b.FsError], Stat] = {
    b.Perm: Stat.PERM,
    b.NoEnt: Stat.NOENT,
    b.IOError_: Stat.IO,
    b.NxIO: Stat.NXIO,
    b.Access: Stat.ACCES,
    b.Exists: Stat.EXIST,
    b.XDev: Stat.XDEV,
    b.NotDir: Stat.NOTDIR,
    b.IsDir: Stat.ISDIR,
    b.Inval: Stat.INVAL,
    b.FBig: Stat.FBIG,
    b.NoSpc: Stat.NOSPC,
    b.ReadOnly: Stat.ROFS,
    b.MLink: Stat.MLINK,
    b.NameTooLong: Stat.NAMETOOLONG,
    b.NotEmpty: Stat.NOTEMPTY,
    b.DQuot: Stat.DQUOT,
    b.Stale: Stat.STALE,
    b.BadHandle: Stat.BADHANDLE,
    b.NotSync: Stat.NOT_SYNC,
    b.BadCookie: Stat.BAD_COOKIE,
    b.NotSupp: Stat.NOTSUPP,
    b.TooSmall: Stat.TOOSMALL,
    b.ServerFault: Stat.SERVERFAULT,
    b.BadType: Stat.BADTYPE,
    b.Jukebox: Stat.JUKEBOX,
}


def status_of(err: b.FsError) -> Stat:
    """The nfsstat3 for an operating error."""
    for cls in type(err).__mro__:
        status = STATUS_OF.get(cls)  # type: ignore[call-overload]
        if status is not None:
            return status
    # A bare FsError (no subclass) says nothing more specific than "the server failed".
    return Stat.SERVERFAULT
