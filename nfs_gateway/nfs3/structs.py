"""XDR codecs of the basic NFS version 3 structures (RFC 1813 §2.5, §2.6), both directions.

Rules:
- Pure code on nfs_gateway.xdr Packer/Unpacker; no I/O.
- fattr3 is one precompiled struct: one `pack` per attribute set (it is in every reply, READ and
  WRITE included), and post_op_attr with attributes folds its `TRUE` into the same call.
- Times are nanoseconds in backend values and nfstime3 (seconds, nseconds) on the wire. A time
  outside nfstime3's range (before 1970, after 2106) is clamped: the wire cannot say it.
- Enums are checked on decode (XdrError → GARBAGE_ARGS), lengths are bounded.
- The encoded post_op_attr of recently packed Attr objects is remembered by identity (a backend
  that hands out the same Attr object for an unchanged file saves the packing); the memo keeps
  the object, so its id cannot be reused meanwhile. Bounded, cleared when full.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import TypeVar

from nfs_gateway.backend import Attr, FileType, SetAttrs, TimeHow, Wcc, WccAttr
from nfs_gateway.nfs3.const import NFS3_FHSIZE, XDR_NAME_LIMIT, XDR_PATH_LIMIT
from nfs_gateway.xdr import Packer, Unpacker, XdrError

E = TypeVar("E")

_NS = 1_000_000_000
_SEC_MAX = 0xFFFFFFFF

# fattr3: type mode nlink uid gid | size used | rdev(major minor) | fsid fileid | atime mtime ctime
_FATTR3_FMT = "IIIIIQQIIQQIIIIII"
_FATTR3 = struct.Struct(">" + _FATTR3_FMT)
_POST_OP_ATTR_SOME = struct.Struct(">I" + _FATTR3_FMT)
FATTR3_SIZE = _FATTR3.size  # 84
# wcc_attr: size mtime ctime
_WCC_ATTR = struct.Struct(">QIIII")
_PRE_OP_ATTR_SOME = struct.Struct(">IQIIII")
WCC_ATTR_SIZE = _WCC_ATTR.size  # 24
_NFSTIME3 = struct.Struct(">II")

FTYPES: Mapping[int, FileType] = {int(t): t for t in FileType}
_TIME_HOWS: Mapping[int, TimeHow] = {int(t): t for t in TimeHow}

# Wire sizes used by the READDIR byte budgets (§3.3.16, §3.3.17).
POST_OP_ATTR_SIZE_SOME = 4 + FATTR3_SIZE
POST_OP_ATTR_SIZE_NONE = 4


def xdr_len(n: int) -> int:
    """Bytes that variable-length opaque data of n bytes takes: length word plus padded data."""
    return 4 + ((n + 3) & ~3)


def split_ns(ns: int) -> tuple[int, int]:
    """nfstime3 (seconds, nseconds) of a time in nanoseconds, clamped to what the wire holds."""
    sec, nsec = divmod(ns, _NS)
    if 0 <= sec <= _SEC_MAX:
        return sec, nsec
    return (0, 0) if sec < 0 else (_SEC_MAX, _NS - 1)


def _fattr3_values(a: Attr) -> tuple[int, ...]:
    asec, ansec = split_ns(a.atime_ns)
    msec, mnsec = split_ns(a.mtime_ns)
    csec, cnsec = split_ns(a.ctime_ns)
    major, minor = a.rdev
    return (
        a.type, a.mode, a.nlink, a.uid, a.gid, a.size, a.used, major, minor,
        a.fsid, a.fileid, asec, ansec, msec, mnsec, csec, cnsec,
    )  # fmt: skip


def pack_fattr3(p: Packer, a: Attr) -> None:
    p.pack_fopaque(FATTR3_SIZE, _post_op_attr_some(a)[4:])


def unpack_fattr3(u: Unpacker) -> Attr:
    v = _FATTR3.unpack(u.unpack_fopaque(FATTR3_SIZE))
    ftype = FTYPES.get(v[0])
    if ftype is None:
        raise XdrError(f"ftype3 {v[0]} is not a file type")
    return Attr(
        type=ftype, mode=v[1], nlink=v[2], uid=v[3], gid=v[4], size=v[5], used=v[6],
        rdev=(v[7], v[8]), fsid=v[9], fileid=v[10],
        atime_ns=v[11] * _NS + v[12], mtime_ns=v[13] * _NS + v[14], ctime_ns=v[15] * _NS + v[16],
    )  # fmt: skip


_ATTR_MEMO_ENTRIES = 4096
_attr_memo: dict[int, tuple[Attr, bytes]] = {}


def pack_post_op_attr(p: Packer, a: Attr | None) -> None:
    """post_op_attr (§2.6): one struct call when the attributes are present."""
    if a is None:
        p.pack_bool(False)
        return
    p.pack_fopaque(POST_OP_ATTR_SIZE_SOME, _post_op_attr_some(a))


def _post_op_attr_some(a: Attr) -> bytes:
    """post_op_attr with attributes: TRUE then fattr3, remembered by identity (module rules)."""
    hit = _attr_memo.get(id(a))
    if hit is not None and hit[0] is a:
        return hit[1]
    wire = _POST_OP_ATTR_SOME.pack(1, *_fattr3_values(a))
    if len(_attr_memo) >= _ATTR_MEMO_ENTRIES:
        _attr_memo.clear()
    _attr_memo[id(a)] = (a, wire)
    return wire


def unpack_post_op_attr(u: Unpacker) -> Attr | None:
    return unpack_fattr3(u) if u.unpack_bool() else None


def pack_pre_op_attr(p: Packer, w: WccAttr | None) -> None:
    """pre_op_attr (§2.6): wcc_attr (size, mtime, ctime) if known."""
    if w is None:
        p.pack_bool(False)
        return
    msec, mnsec = split_ns(w.mtime_ns)
    csec, cnsec = split_ns(w.ctime_ns)
    p.pack_fopaque(
        _PRE_OP_ATTR_SOME.size, _PRE_OP_ATTR_SOME.pack(1, w.size, msec, mnsec, csec, cnsec)
    )


def unpack_pre_op_attr(u: Unpacker) -> WccAttr | None:
    if not u.unpack_bool():
        return None
    size, msec, mnsec, csec, cnsec = _WCC_ATTR.unpack(u.unpack_fopaque(WCC_ATTR_SIZE))
    return WccAttr(size, msec * _NS + mnsec, csec * _NS + cnsec)


def pack_wcc_data(p: Packer, w: Wcc) -> None:
    pack_pre_op_attr(p, w.before)
    pack_post_op_attr(p, w.after)


def unpack_wcc_data(u: Unpacker) -> Wcc:
    before = unpack_pre_op_attr(u)
    return Wcc(before, unpack_post_op_attr(u))


def pack_nfstime3(p: Packer, ns: int) -> None:
    p.pack_fopaque(_NFSTIME3.size, _NFSTIME3.pack(*split_ns(ns)))


def unpack_nfstime3(u: Unpacker) -> int:
    sec, nsec = _NFSTIME3.unpack(u.unpack_fopaque(_NFSTIME3.size))
    return sec * _NS + nsec


# --- file handles and names -----------------------------------------------------------------


def pack_fh(p: Packer, fh: bytes) -> None:
    """nfs_fh3 (§2.5): opaque<NFS3_FHSIZE>."""
    p.pack_opaque(fh)


def unpack_fh(u: Unpacker) -> bytes:
    return u.unpack_opaque(NFS3_FHSIZE)


def pack_post_op_fh(p: Packer, fh: bytes | None) -> None:
    p.pack_optional(fh, lambda h: pack_fh(p, h))


def unpack_post_op_fh(u: Unpacker) -> bytes | None:
    return unpack_fh(u) if u.unpack_bool() else None


def unpack_name(u: Unpacker) -> bytes:
    """filename3 (§2.5). The 255-byte limit is the handler's (NAMETOOLONG), not the decoder's."""
    return u.unpack_string(XDR_NAME_LIMIT)


def unpack_path(u: Unpacker) -> bytes:
    """nfspath3 (§2.5). The 1024-byte limit is the handler's (NAMETOOLONG)."""
    return u.unpack_string(XDR_PATH_LIMIT)


# --- sattr3 (§2.6) ----------------------------------------------------------------------------


def _pack_set_u32(p: Packer, v: int | None) -> None:
    p.pack_bool(v is not None)
    if v is not None:
        p.pack_uint(v)


def _unpack_set_u32(u: Unpacker) -> int | None:
    return u.unpack_uint() if u.unpack_bool() else None


def _pack_set_time(p: Packer, how: TimeHow, ns: int) -> None:
    p.pack_enum(how)
    if how == TimeHow.SET_TO_CLIENT_TIME:
        pack_nfstime3(p, ns)


def _unpack_set_time(u: Unpacker) -> tuple[TimeHow, int]:
    how = _TIME_HOWS.get(u.unpack_int())
    if how is None:
        raise XdrError("time_how out of range")
    ns = unpack_nfstime3(u) if how == TimeHow.SET_TO_CLIENT_TIME else 0
    return how, ns


def pack_sattr3(p: Packer, s: SetAttrs) -> None:
    _pack_set_u32(p, s.mode)
    _pack_set_u32(p, s.uid)
    _pack_set_u32(p, s.gid)
    p.pack_bool(s.size is not None)
    if s.size is not None:
        p.pack_uhyper(s.size)
    _pack_set_time(p, s.atime, s.atime_ns)
    _pack_set_time(p, s.mtime, s.mtime_ns)


def unpack_sattr3(u: Unpacker) -> SetAttrs:
    mode = _unpack_set_u32(u)
    uid = _unpack_set_u32(u)
    gid = _unpack_set_u32(u)
    size = u.unpack_uhyper() if u.unpack_bool() else None
    atime, atime_ns = _unpack_set_time(u)
    mtime, mtime_ns = _unpack_set_time(u)
    return SetAttrs(mode, uid, gid, size, atime, atime_ns, mtime, mtime_ns)


def unpack_enum_of(u: Unpacker, table: Mapping[int, E], what: str) -> E:
    """An enum value checked against `table` (value → member); XdrError if not in it."""
    v = u.unpack_int()
    member = table.get(v)
    if member is None:
        raise XdrError(f"{what} {v} out of range")
    return member
