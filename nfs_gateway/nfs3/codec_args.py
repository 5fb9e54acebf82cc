"""Server-side decoders of NFS version 3 arguments (RFC 1813 §3.3, the *3args structures).

Rules: each decoder takes an Unpacker and returns a frozen dataclass from types.py, or raises
XdrError (the RPC layer answers GARBAGE_ARGS). Every length is bounded; names and paths are
bounded loosely here and exactly by the handlers (NAMETOOLONG). WRITE data stays a view into the
record (no copy). The RPC layer checks that the record was consumed exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

from nfs_gateway.backend import CreateMode, FileType, StableHow
from nfs_gateway.nfs3.const import NFS3_COOKIEVERFSIZE, NFS3_CREATEVERFSIZE, XDR_DATA_LIMIT
from nfs_gateway.nfs3.structs import (
    FTYPES,
    unpack_enum_of,
    unpack_fh,
    unpack_name,
    unpack_nfstime3,
    unpack_path,
    unpack_sattr3,
)
from nfs_gateway.nfs3.types import (
    AccessArgs,
    CommitArgs,
    CreateArgs,
    DirOpArgs,
    FhArgs,
    LinkArgs,
    MkdirArgs,
    MknodArgs,
    ReadArgs,
    ReaddirArgs,
    ReaddirplusArgs,
    RenameArgs,
    SetattrArgs,
    SymlinkArgs,
    WriteArgs,
)
from nfs_gateway.xdr import Unpacker

_STABLE_HOWS: Mapping[int, StableHow] = {int(s): s for s in StableHow}
_CREATE_MODES: Mapping[int, CreateMode] = {int(m): m for m in CreateMode}


def unpack_diropargs(u: Unpacker) -> DirOpArgs:
    d = unpack_fh(u)
    return DirOpArgs(d, unpack_name(u))


def decode_fh_args(u: Unpacker) -> FhArgs:
    return FhArgs(unpack_fh(u))


def decode_setattr(u: Unpacker) -> SetattrArgs:
    fh = unpack_fh(u)
    sattr = unpack_sattr3(u)
    guard = unpack_nfstime3(u) if u.unpack_bool() else None
    return SetattrArgs(fh, sattr, guard)


def decode_access(u: Unpacker) -> AccessArgs:
    fh = unpack_fh(u)
    return AccessArgs(fh, u.unpack_uint())


def decode_read(u: Unpacker) -> ReadArgs:
    fh = unpack_fh(u)
    offset = u.unpack_uhyper()
    return ReadArgs(fh, offset, u.unpack_uint())


def decode_write(u: Unpacker) -> WriteArgs:
    fh = unpack_fh(u)
    offset = u.unpack_uhyper()
    count = u.unpack_uint()
    stable = unpack_enum_of(u, _STABLE_HOWS, "stable_how")
    data = u.unpack_opaque_view(XDR_DATA_LIMIT)
    return WriteArgs(fh, offset, count, stable, data)


def decode_create(u: Unpacker) -> CreateArgs:
    where = unpack_diropargs(u)
    how = unpack_enum_of(u, _CREATE_MODES, "createmode3")
    if how == CreateMode.EXCLUSIVE:
        return CreateArgs(where, how, verf=u.unpack_fopaque(NFS3_CREATEVERFSIZE))
    return CreateArgs(where, how, unpack_sattr3(u))


def decode_mkdir(u: Unpacker) -> MkdirArgs:
    where = unpack_diropargs(u)
    return MkdirArgs(where, unpack_sattr3(u))


def decode_symlink(u: Unpacker) -> SymlinkArgs:
    where = unpack_diropargs(u)
    sattr = unpack_sattr3(u)
    return SymlinkArgs(where, sattr, unpack_path(u))


def decode_mknod(u: Unpacker) -> MknodArgs:
    """mknoddata3 (§3.3.11): devices carry attributes and specdata3, pipes and sockets only
    attributes, and the other types nothing (the handler answers BADTYPE)."""
    where = unpack_diropargs(u)
    ftype = unpack_enum_of(u, FTYPES, "ftype3")
    if ftype in (FileType.CHR, FileType.BLK):
        sattr = unpack_sattr3(u)
        major = u.unpack_uint()
        return MknodArgs(where, ftype, sattr, (major, u.unpack_uint()))
    if ftype in (FileType.SOCK, FileType.FIFO):
        return MknodArgs(where, ftype, unpack_sattr3(u))
    return MknodArgs(where, ftype)


def decode_rename(u: Unpacker) -> RenameArgs:
    source = unpack_diropargs(u)
    return RenameArgs(source, unpack_diropargs(u))


def decode_link(u: Unpacker) -> LinkArgs:
    fh = unpack_fh(u)
    return LinkArgs(fh, unpack_diropargs(u))


def decode_readdir(u: Unpacker) -> ReaddirArgs:
    d = unpack_fh(u)
    cookie = u.unpack_uhyper()
    verf = u.unpack_fopaque(NFS3_COOKIEVERFSIZE)
    return ReaddirArgs(d, cookie, verf, u.unpack_uint())


def decode_readdirplus(u: Unpacker) -> ReaddirplusArgs:
    d = unpack_fh(u)
    cookie = u.unpack_uhyper()
    verf = u.unpack_fopaque(NFS3_COOKIEVERFSIZE)
    dircount = u.unpack_uint()
    return ReaddirplusArgs(d, cookie, verf, dircount, u.unpack_uint())


def decode_commit(u: Unpacker) -> CommitArgs:
    fh = unpack_fh(u)
    offset = u.unpack_uhyper()
    return CommitArgs(fh, offset, u.unpack_uint())
