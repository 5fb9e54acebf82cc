"""Server-side encoders of NFS version 3 results (RFC 1813 §3.3, the *3res unions).

Rules: each encoder takes a Packer and a result from types.py and writes the status, then the arm
the status selects — resok when OK, else resfail, which still carries wcc_data or post_op_attr
(the RFC returns them in failure too). READ data is referenced, not copied (pack_opaque_ref).
Also here: the wire sizes of READDIR pieces, so handlers can keep to the client's byte budget.
"""

from __future__ import annotations

import struct

from nfs_gateway.nfs3.const import Stat
from nfs_gateway.nfs3.structs import (
    POST_OP_ATTR_SIZE_NONE,
    POST_OP_ATTR_SIZE_SOME,
    pack_fattr3,
    pack_fh,
    pack_nfstime3,
    pack_post_op_attr,
    pack_post_op_fh,
    pack_wcc_data,
    xdr_len,
)
from nfs_gateway.nfs3.types import (
    AccessRes,
    CommitRes,
    CreateRes,
    Entry3,
    EntryPlus3,
    FsinfoRes,
    FsstatRes,
    GetattrRes,
    LinkRes,
    LookupRes,
    PathconfRes,
    ReaddirplusRes,
    ReaddirRes,
    ReadlinkRes,
    ReadRes,
    RenameRes,
    WccRes,
    WriteRes,
)
from nfs_gateway.xdr import Packer

_FSSTAT = struct.Struct(">QQQQQQI")
_FSINFO_U32S = struct.Struct(">IIIIIII")
_ENTRY_HEAD = struct.Struct(">IQ")  # value_follows TRUE, fileid
_OK = Stat.OK


def encode_getattr(p: Packer, r: GetattrRes) -> None:
    p.pack_uint(r.status)
    if r.status == _OK:
        assert r.attr is not None
        pack_fattr3(p, r.attr)


def encode_wcc_res(p: Packer, r: WccRes) -> None:
    """SETATTR3res, REMOVE3res, RMDIR3res: wcc_data in both arms."""
    p.pack_uint(r.status)
    pack_wcc_data(p, r.wcc)


def encode_lookup(p: Packer, r: LookupRes) -> None:
    p.pack_uint(r.status)
    if r.status == _OK:
        pack_fh(p, r.fh)
        pack_post_op_attr(p, r.obj_attr)
    pack_post_op_attr(p, r.dir_attr)


def encode_access(p: Packer, r: AccessRes) -> None:
    p.pack_uint(r.status)
    pack_post_op_attr(p, r.obj_attr)
    if r.status == _OK:
        p.pack_uint(r.access)


def encode_readlink(p: Packer, r: ReadlinkRes) -> None:
    p.pack_uint(r.status)
    pack_post_op_attr(p, r.attr)
    if r.status == _OK:
        p.pack_string(r.target)


def encode_read(p: Packer, r: ReadRes) -> None:
    p.pack_uint(r.status)
    pack_post_op_attr(p, r.attr)
    if r.status == _OK:
        p.pack_uint(r.count)
        p.pack_bool(r.eof)
        p.pack_opaque_ref(r.data)  # zero-copy: the payload goes out as its own buffer


def encode_write(p: Packer, r: WriteRes) -> None:
    p.pack_uint(r.status)
    pack_wcc_data(p, r.wcc)
    if r.status == _OK:
        p.pack_uint(r.count)
        p.pack_enum(r.committed)
        p.pack_fopaque(8, r.verf)


def encode_create(p: Packer, r: CreateRes) -> None:
    """CREATE3res, MKDIR3res, SYMLINK3res, MKNOD3res."""
    p.pack_uint(r.status)
    if r.status == _OK:
        pack_post_op_fh(p, r.fh)
        pack_post_op_attr(p, r.obj_attr)
    pack_wcc_data(p, r.dir_wcc)


def encode_rename(p: Packer, r: RenameRes) -> None:
    p.pack_uint(r.status)
    pack_wcc_data(p, r.from_wcc)
    pack_wcc_data(p, r.to_wcc)


def encode_link(p: Packer, r: LinkRes) -> None:
    p.pack_uint(r.status)
    pack_post_op_attr(p, r.attr)
    pack_wcc_data(p, r.dir_wcc)


def _pack_entry3(p: Packer, e: Entry3) -> None:
    p.pack_fopaque(12, _ENTRY_HEAD.pack(1, e.fileid))
    p.pack_string(e.name)
    p.pack_uhyper(e.cookie)


def _pack_entryplus3(p: Packer, e: EntryPlus3) -> None:
    p.pack_fopaque(12, _ENTRY_HEAD.pack(1, e.fileid))
    p.pack_string(e.name)
    p.pack_uhyper(e.cookie)
    pack_post_op_attr(p, e.attr)
    pack_post_op_fh(p, e.fh)


def encode_readdir(p: Packer, r: ReaddirRes) -> None:
    p.pack_uint(r.status)
    pack_post_op_attr(p, r.dir_attr)
    if r.status == _OK:
        p.pack_fopaque(8, r.cookieverf)
        for e in r.entries:  # a linked list on the wire: value_follows before each entry
            _pack_entry3(p, e)
        p.pack_bool(False)
        p.pack_bool(r.eof)


def encode_readdirplus(p: Packer, r: ReaddirplusRes) -> None:
    p.pack_uint(r.status)
    pack_post_op_attr(p, r.dir_attr)
    if r.status == _OK:
        p.pack_fopaque(8, r.cookieverf)
        for e in r.entries:
            _pack_entryplus3(p, e)
        p.pack_bool(False)
        p.pack_bool(r.eof)


def encode_fsstat(p: Packer, r: FsstatRes) -> None:
    p.pack_uint(r.status)
    pack_post_op_attr(p, r.attr)
    if r.status == _OK:
        s = r.stat
        assert s is not None
        values = (s.tbytes, s.fbytes, s.abytes, s.tfiles, s.ffiles, s.afiles, s.invarsec)
        p.pack_fopaque(_FSSTAT.size, _FSSTAT.pack(*values))


def encode_fsinfo(p: Packer, r: FsinfoRes) -> None:
    p.pack_uint(r.status)
    pack_post_op_attr(p, r.attr)
    if r.status == _OK:
        i = r.info
        assert i is not None
        u32s = (i.rtmax, i.rtpref, i.rtmult, i.wtmax, i.wtpref, i.wtmult, i.dtpref)
        p.pack_fopaque(_FSINFO_U32S.size, _FSINFO_U32S.pack(*u32s))
        p.pack_uhyper(i.maxfilesize)
        pack_nfstime3(p, i.time_delta_ns)
        p.pack_uint(i.properties)


def encode_pathconf(p: Packer, r: PathconfRes) -> None:
    p.pack_uint(r.status)
    pack_post_op_attr(p, r.attr)
    if r.status == _OK:
        c = r.conf
        assert c is not None
        p.pack_uint(c.linkmax)
        p.pack_uint(c.name_max)
        for flag in (c.no_trunc, c.chown_restricted, c.case_insensitive, c.case_preserving):
            p.pack_bool(flag)


def encode_commit(p: Packer, r: CommitRes) -> None:
    p.pack_uint(r.status)
    pack_wcc_data(p, r.wcc)
    if r.status == _OK:
        p.pack_fopaque(8, r.verf)


# --- wire sizes for the READDIR budgets (§3.3.16 count, §3.3.17 dircount and maxcount) ---------


def post_op_attr_size(present: bool) -> int:
    return POST_OP_ATTR_SIZE_SOME if present else POST_OP_ATTR_SIZE_NONE


def readdir_fixed_size(dir_attr_present: bool) -> int:
    """READDIR3res bytes besides the entries: status, dir attributes, cookieverf, the final
    value_follows FALSE and eof. READDIRPLUS3res has the same shape."""
    return 4 + post_op_attr_size(dir_attr_present) + 8 + 4 + 4


def entry3_size(name_len: int) -> int:
    """One entry3: value_follows, fileid, name, cookie. Also what READDIRPLUS's dircount counts
    for an entry: the RFC leaves its attributes and handle out of dircount."""
    return 4 + 8 + xdr_len(name_len) + 8


def entryplus3_size(name_len: int, attr_present: bool, fh_len: int | None) -> int:
    fh_size = 4 if fh_len is None else 4 + xdr_len(fh_len)
    return entry3_size(name_len) + post_op_attr_size(attr_present) + fh_size


# The smallest entry3 (a 1-byte name): bounds how many entries a budget can hold.
MIN_ENTRY3_SIZE = entry3_size(1)
