"""The client side of the NFS version 3 codec: arguments encoded, results decoded (RFC 1813 §3.3).

For tests and benchmarks that play a small NFS client; the server never imports it. It shares the
server's reading of the RFC, so behaviour that matters is also checked with clients others wrote
(TESTING.md). Decoders check enums and lengths like the server's do (XdrError on garbage).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

from nfs_gateway.backend import CreateMode, FileType, FsStat, StableHow
from nfs_gateway.nfs3.const import NFS3_COOKIEVERFSIZE, XDR_DATA_LIMIT, Proc, Stat
from nfs_gateway.nfs3.structs import (
    pack_fh,
    pack_nfstime3,
    pack_sattr3,
    unpack_enum_of,
    unpack_fattr3,
    unpack_fh,
    unpack_name,
    unpack_nfstime3,
    unpack_path,
    unpack_post_op_attr,
    unpack_post_op_fh,
    unpack_wcc_data,
)
from nfs_gateway.nfs3.types import (
    AccessArgs,
    AccessRes,
    CommitArgs,
    CommitRes,
    CreateArgs,
    CreateRes,
    DirOpArgs,
    Entry3,
    EntryPlus3,
    FhArgs,
    FsInfo,
    FsinfoRes,
    FsstatRes,
    GetattrRes,
    LinkArgs,
    LinkRes,
    LookupRes,
    MkdirArgs,
    MknodArgs,
    PathConf,
    PathconfRes,
    ReadArgs,
    ReaddirArgs,
    ReaddirplusArgs,
    ReaddirplusRes,
    ReaddirRes,
    ReadlinkRes,
    ReadRes,
    RenameArgs,
    RenameRes,
    SetattrArgs,
    SymlinkArgs,
    WccRes,
    WriteArgs,
    WriteRes,
)
from nfs_gateway.xdr import Packer, Unpacker, XdrError

_STATS: Mapping[int, Stat] = {int(s): s for s in Stat}
_STABLE: Mapping[int, StableHow] = {int(s): s for s in StableHow}
_FSSTAT = struct.Struct(">QQQQQQI")
_FSINFO_U32S = struct.Struct(">IIIIIII")
# A reply's entry list is bounded like everything else decoded.
MAX_DIR_ENTRIES = 1 << 16

# --- arguments ------------------------------------------------------------------------------


def pack_diropargs(p: Packer, a: DirOpArgs) -> None:
    pack_fh(p, a.dir)
    p.pack_string(a.name)


def encode_fh_args(p: Packer, a: FhArgs) -> None:
    pack_fh(p, a.fh)


def encode_setattr(p: Packer, a: SetattrArgs) -> None:
    pack_fh(p, a.fh)
    pack_sattr3(p, a.sattr)
    p.pack_bool(a.guard_ctime_ns is not None)
    if a.guard_ctime_ns is not None:
        pack_nfstime3(p, a.guard_ctime_ns)


def encode_access(p: Packer, a: AccessArgs) -> None:
    pack_fh(p, a.fh)
    p.pack_uint(a.access)


def encode_read(p: Packer, a: ReadArgs) -> None:
    pack_fh(p, a.fh)
    p.pack_uhyper(a.offset)
    p.pack_uint(a.count)


def encode_write(p: Packer, a: WriteArgs) -> None:
    pack_fh(p, a.fh)
    p.pack_uhyper(a.offset)
    p.pack_uint(a.count)
    p.pack_enum(a.stable)
    p.pack_opaque_ref(a.data)


def encode_create(p: Packer, a: CreateArgs) -> None:
    pack_diropargs(p, a.where)
    p.pack_enum(a.how)
    if a.how == CreateMode.EXCLUSIVE:
        assert a.verf is not None and len(a.verf) == 8
        p.pack_fopaque(8, a.verf)
    else:
        pack_sattr3(p, a.sattr)


def encode_mkdir(p: Packer, a: MkdirArgs) -> None:
    pack_diropargs(p, a.where)
    pack_sattr3(p, a.sattr)


def encode_symlink(p: Packer, a: SymlinkArgs) -> None:
    pack_diropargs(p, a.where)
    pack_sattr3(p, a.sattr)
    p.pack_string(a.target)


def encode_mknod(p: Packer, a: MknodArgs) -> None:
    pack_diropargs(p, a.where)
    p.pack_enum(a.ftype)
    if a.ftype in (FileType.CHR, FileType.BLK):
        pack_sattr3(p, a.sattr)
        p.pack_uint(a.rdev[0])
        p.pack_uint(a.rdev[1])
    elif a.ftype in (FileType.SOCK, FileType.FIFO):
        pack_sattr3(p, a.sattr)


def encode_rename(p: Packer, a: RenameArgs) -> None:
    pack_diropargs(p, a.source)
    pack_diropargs(p, a.target)


def encode_link(p: Packer, a: LinkArgs) -> None:
    pack_fh(p, a.fh)
    pack_diropargs(p, a.link)


def encode_readdir(p: Packer, a: ReaddirArgs) -> None:
    pack_fh(p, a.dir)
    p.pack_uhyper(a.cookie)
    p.pack_fopaque(NFS3_COOKIEVERFSIZE, a.cookieverf)
    p.pack_uint(a.count)


def encode_readdirplus(p: Packer, a: ReaddirplusArgs) -> None:
    pack_fh(p, a.dir)
    p.pack_uhyper(a.cookie)
    p.pack_fopaque(NFS3_COOKIEVERFSIZE, a.cookieverf)
    p.pack_uint(a.dircount)
    p.pack_uint(a.maxcount)


def encode_commit(p: Packer, a: CommitArgs) -> None:
    pack_fh(p, a.fh)
    p.pack_uhyper(a.offset)
    p.pack_uint(a.count)


# --- results ----------------------------------------------------------------------------------


def _status(u: Unpacker) -> Stat:
    return unpack_enum_of(u, _STATS, "nfsstat3")


def decode_getattr(u: Unpacker) -> GetattrRes:
    s = _status(u)
    return GetattrRes(s, unpack_fattr3(u)) if s == Stat.OK else GetattrRes(s)


def decode_wcc_res(u: Unpacker) -> WccRes:
    s = _status(u)
    return WccRes(s, unpack_wcc_data(u))


def decode_lookup(u: Unpacker) -> LookupRes:
    s = _status(u)
    if s != Stat.OK:
        return LookupRes(s, unpack_post_op_attr(u))
    fh = unpack_fh(u)
    obj_attr = unpack_post_op_attr(u)
    return LookupRes(s, unpack_post_op_attr(u), fh, obj_attr)


def decode_access(u: Unpacker) -> AccessRes:
    s = _status(u)
    attr = unpack_post_op_attr(u)
    return AccessRes(s, attr, u.unpack_uint()) if s == Stat.OK else AccessRes(s, attr)


def decode_readlink(u: Unpacker) -> ReadlinkRes:
    s = _status(u)
    attr = unpack_post_op_attr(u)
    return ReadlinkRes(s, attr, unpack_path(u)) if s == Stat.OK else ReadlinkRes(s, attr)


def decode_read(u: Unpacker) -> ReadRes:
    s = _status(u)
    attr = unpack_post_op_attr(u)
    if s != Stat.OK:
        return ReadRes(s, attr)
    count = u.unpack_uint()
    eof = u.unpack_bool()
    return ReadRes(s, attr, count, eof, u.unpack_opaque_view(XDR_DATA_LIMIT))


def decode_write(u: Unpacker) -> WriteRes:
    s = _status(u)
    wcc = unpack_wcc_data(u)
    if s != Stat.OK:
        return WriteRes(s, wcc)
    count = u.unpack_uint()
    committed = unpack_enum_of(u, _STABLE, "stable_how")
    return WriteRes(s, wcc, count, committed, u.unpack_fopaque(8))


def decode_create(u: Unpacker) -> CreateRes:
    s = _status(u)
    if s != Stat.OK:
        return CreateRes(s, unpack_wcc_data(u))
    fh = unpack_post_op_fh(u)
    attr = unpack_post_op_attr(u)
    return CreateRes(s, unpack_wcc_data(u), fh, attr)


def decode_rename(u: Unpacker) -> RenameRes:
    s = _status(u)
    from_wcc = unpack_wcc_data(u)
    return RenameRes(s, from_wcc, unpack_wcc_data(u))


def decode_link(u: Unpacker) -> LinkRes:
    s = _status(u)
    attr = unpack_post_op_attr(u)
    return LinkRes(s, attr, unpack_wcc_data(u))


def _unpack_list(u: Unpacker, unpack_entry: Callable[[Unpacker], Any]) -> list[Any]:
    """An XDR linked list (`entry *nextentry`): value_follows before each entry."""
    entries = []
    while u.unpack_bool():
        if len(entries) >= MAX_DIR_ENTRIES:
            raise XdrError(f"more than {MAX_DIR_ENTRIES} directory entries")
        entries.append(unpack_entry(u))
    return entries


def _unpack_entry3(u: Unpacker) -> Entry3:
    fileid = u.unpack_uhyper()
    name = unpack_name(u)
    return Entry3(fileid, name, u.unpack_uhyper())


def _unpack_entryplus3(u: Unpacker) -> EntryPlus3:
    fileid = u.unpack_uhyper()
    name = unpack_name(u)
    cookie = u.unpack_uhyper()
    attr = unpack_post_op_attr(u)
    return EntryPlus3(fileid, name, cookie, attr, unpack_post_op_fh(u))


def decode_readdir(u: Unpacker) -> ReaddirRes:
    s = _status(u)
    attr = unpack_post_op_attr(u)
    if s != Stat.OK:
        return ReaddirRes(s, attr)
    verf = u.unpack_fopaque(NFS3_COOKIEVERFSIZE)
    entries = _unpack_list(u, _unpack_entry3)
    return ReaddirRes(s, attr, verf, tuple(entries), u.unpack_bool())


def decode_readdirplus(u: Unpacker) -> ReaddirplusRes:
    s = _status(u)
    attr = unpack_post_op_attr(u)
    if s != Stat.OK:
        return ReaddirplusRes(s, attr)
    verf = u.unpack_fopaque(NFS3_COOKIEVERFSIZE)
    entries = _unpack_list(u, _unpack_entryplus3)
    return ReaddirplusRes(s, attr, verf, tuple(entries), u.unpack_bool())


def decode_fsstat(u: Unpacker) -> FsstatRes:
    s = _status(u)
    attr = unpack_post_op_attr(u)
    if s != Stat.OK:
        return FsstatRes(s, attr)
    return FsstatRes(s, attr, FsStat(*_FSSTAT.unpack(u.unpack_fopaque(_FSSTAT.size))))


def decode_fsinfo(u: Unpacker) -> FsinfoRes:
    s = _status(u)
    attr = unpack_post_op_attr(u)
    if s != Stat.OK:
        return FsinfoRes(s, attr)
    u32s = _FSINFO_U32S.unpack(u.unpack_fopaque(_FSINFO_U32S.size))
    maxfilesize = u.unpack_uhyper()
    delta = unpack_nfstime3(u)
    return FsinfoRes(s, attr, FsInfo(*u32s, maxfilesize, delta, u.unpack_uint()))


def decode_pathconf(u: Unpacker) -> PathconfRes:
    s = _status(u)
    attr = unpack_post_op_attr(u)
    if s != Stat.OK:
        return PathconfRes(s, attr)
    linkmax = u.unpack_uint()
    name_max = u.unpack_uint()
    flags = [u.unpack_bool() for _ in range(4)]
    return PathconfRes(s, attr, PathConf(linkmax, name_max, *flags))


def decode_commit(u: Unpacker) -> CommitRes:
    s = _status(u)
    wcc = unpack_wcc_data(u)
    return CommitRes(s, wcc, u.unpack_fopaque(8)) if s == Stat.OK else CommitRes(s, wcc)


def _encode_void(p: Packer, a: None) -> None:
    return None


def _decode_void(u: Unpacker) -> None:
    return None


# Per procedure: (argument encoder, result decoder) — what a small client needs.
CLIENT_CODECS: Mapping[Proc, tuple[Callable[[Packer, Any], None], Callable[[Unpacker], Any]]] = {
    Proc.NULL: (_encode_void, _decode_void),
    Proc.GETATTR: (encode_fh_args, decode_getattr),
    Proc.SETATTR: (encode_setattr, decode_wcc_res),
    Proc.LOOKUP: (pack_diropargs, decode_lookup),
    Proc.ACCESS: (encode_access, decode_access),
    Proc.READLINK: (encode_fh_args, decode_readlink),
    Proc.READ: (encode_read, decode_read),
    Proc.WRITE: (encode_write, decode_write),
    Proc.CREATE: (encode_create, decode_create),
    Proc.MKDIR: (encode_mkdir, decode_create),
    Proc.SYMLINK: (encode_symlink, decode_create),
    Proc.MKNOD: (encode_mknod, decode_create),
    Proc.REMOVE: (pack_diropargs, decode_wcc_res),
    Proc.RMDIR: (pack_diropargs, decode_wcc_res),
    Proc.RENAME: (encode_rename, decode_rename),
    Proc.LINK: (encode_link, decode_link),
    Proc.READDIR: (encode_readdir, decode_readdir),
    Proc.READDIRPLUS: (encode_readdirplus, decode_readdirplus),
    Proc.FSSTAT: (encode_fh_args, decode_fsstat),
    Proc.FSINFO: (encode_fh_args, decode_fsinfo),
    Proc.PATHCONF: (encode_fh_args, decode_pathconf),
    Proc.COMMIT: (encode_commit, decode_commit),
}
assert set(CLIENT_CODECS) == set(Proc)
