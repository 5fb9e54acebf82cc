"""Round trips of every NFS version 3 structure (RFC 1813 §2.5, §2.6, §3.3): arguments through
the client encoder and the server decoder, results through the server encoder and the client
decoder; plus the decoders' refusals of garbage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfs_gateway.backend import (
    Attr,
    CreateMode,
    FileType,
    FsStat,
    SetAttrs,
    StableHow,
    TimeHow,
    Wcc,
    WccAttr,
)
from nfs_gateway.nfs3 import client_codec as cc
from nfs_gateway.nfs3 import codec_args as da
from nfs_gateway.nfs3 import codec_res as er
from nfs_gateway.nfs3 import structs
from nfs_gateway.nfs3 import types as t
from nfs_gateway.nfs3.const import Proc, Stat
from nfs_gateway.nfs3.program import TABLE
from nfs_gateway.xdr import Packer, Unpacker, XdrError

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
# nfstime3 holds 0 <= seconds < 2**32 and nanoseconds < 10**9.
time_ns = st.integers(0, (2**32 - 1) * 10**9 + 10**9 - 1)
fh = st.binary(min_size=0, max_size=64)
name = st.binary(min_size=0, max_size=300)  # > 255 decodes: NAMETOOLONG is the handler's
path = st.binary(max_size=1100)
verf = st.binary(min_size=8, max_size=8)

attr = st.builds(
    Attr,
    type=st.sampled_from(FileType),
    mode=u32,
    nlink=u32,
    uid=u32,
    gid=u32,
    size=u64,
    used=u64,
    rdev=st.tuples(u32, u32),
    fsid=u64,
    fileid=u64,
    atime_ns=time_ns,
    mtime_ns=time_ns,
    ctime_ns=time_ns,
)
opt_attr = st.none() | attr
wcc_attr = st.builds(WccAttr, size=u64, mtime_ns=time_ns, ctime_ns=time_ns)
wcc = st.builds(Wcc, before=st.none() | wcc_attr, after=opt_attr)


@st.composite
def sattr(draw: st.DrawFn) -> SetAttrs:
    atime, mtime = draw(st.sampled_from(TimeHow)), draw(st.sampled_from(TimeHow))
    client = TimeHow.SET_TO_CLIENT_TIME
    return SetAttrs(
        mode=draw(st.none() | u32),
        uid=draw(st.none() | u32),
        gid=draw(st.none() | u32),
        size=draw(st.none() | u64),
        atime=atime,
        atime_ns=draw(time_ns) if atime == client else 0,
        mtime=mtime,
        mtime_ns=draw(time_ns) if mtime == client else 0,
    )


dirop = st.builds(t.DirOpArgs, dir=fh, name=name)


@st.composite
def create_args(draw: st.DrawFn) -> t.CreateArgs:
    how = draw(st.sampled_from(CreateMode))
    where = draw(dirop)
    if how == CreateMode.EXCLUSIVE:
        return t.CreateArgs(where, how, verf=draw(verf))
    return t.CreateArgs(where, how, draw(sattr()))


@st.composite
def mknod_args(draw: st.DrawFn) -> t.MknodArgs:
    ftype = draw(st.sampled_from(FileType))
    where = draw(dirop)
    if ftype in (FileType.CHR, FileType.BLK):
        return t.MknodArgs(where, ftype, draw(sattr()), draw(st.tuples(u32, u32)))
    if ftype in (FileType.SOCK, FileType.FIFO):
        return t.MknodArgs(where, ftype, draw(sattr()))
    return t.MknodArgs(where, ftype)


ARGS: dict[Proc, st.SearchStrategy[Any]] = {
    Proc.NULL: st.none(),
    Proc.GETATTR: st.builds(t.FhArgs, fh),
    Proc.SETATTR: st.builds(t.SetattrArgs, fh, sattr(), st.none() | time_ns),
    Proc.LOOKUP: dirop,
    Proc.ACCESS: st.builds(t.AccessArgs, fh, u32),
    Proc.READLINK: st.builds(t.FhArgs, fh),
    Proc.READ: st.builds(t.ReadArgs, fh, u64, u32),
    Proc.WRITE: st.builds(
        t.WriteArgs, fh, u64, u32, st.sampled_from(StableHow), st.binary(max_size=9000)
    ),
    Proc.CREATE: create_args(),
    Proc.MKDIR: st.builds(t.MkdirArgs, dirop, sattr()),
    Proc.SYMLINK: st.builds(t.SymlinkArgs, dirop, sattr(), path),
    Proc.MKNOD: mknod_args(),
    Proc.REMOVE: dirop,
    Proc.RMDIR: dirop,
    Proc.RENAME: st.builds(t.RenameArgs, dirop, dirop),
    Proc.LINK: st.builds(t.LinkArgs, fh, dirop),
    Proc.READDIR: st.builds(t.ReaddirArgs, fh, u64, verf, u32),
    Proc.READDIRPLUS: st.builds(t.ReaddirplusArgs, fh, u64, verf, u32, u32),
    Proc.FSSTAT: st.builds(t.FhArgs, fh),
    Proc.FSINFO: st.builds(t.FhArgs, fh),
    Proc.PATHCONF: st.builds(t.FhArgs, fh),
    Proc.COMMIT: st.builds(t.CommitArgs, fh, u64, u32),
}

FAIL = st.sampled_from([s for s in Stat if s != Stat.OK])
OK = st.just(Stat.OK)


def res(cls: type, both: dict[str, Any], ok: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Either arm of a result union: OK with every field, or a failure with its arm's fields."""
    return st.builds(cls, status=OK, **both, **ok) | st.builds(cls, status=FAIL, **both)


entry3 = st.builds(t.Entry3, u64, st.binary(max_size=255), u64)
entryplus3 = st.builds(t.EntryPlus3, u64, st.binary(max_size=255), u64, opt_attr, st.none() | fh)
fsstat = st.builds(FsStat, u64, u64, u64, u64, u64, u64, u32)
fsinfo = st.builds(t.FsInfo, u32, u32, u32, u32, u32, u32, u32, u64, time_ns, u32)
pathconf = st.builds(
    t.PathConf, u32, u32, st.booleans(), st.booleans(), st.booleans(), st.booleans()
)
create_res = res(t.CreateRes, {"dir_wcc": wcc}, {"fh": st.none() | fh, "obj_attr": opt_attr})
wcc_res = st.builds(t.WccRes, st.sampled_from(Stat), wcc)

RESULTS: dict[Proc, st.SearchStrategy[Any]] = {
    Proc.NULL: st.none(),
    Proc.GETATTR: st.builds(t.GetattrRes, OK, attr) | st.builds(t.GetattrRes, FAIL),
    Proc.SETATTR: wcc_res,
    Proc.LOOKUP: res(t.LookupRes, {"dir_attr": opt_attr}, {"fh": fh, "obj_attr": opt_attr}),
    Proc.ACCESS: res(t.AccessRes, {"obj_attr": opt_attr}, {"access": u32}),
    Proc.READLINK: res(t.ReadlinkRes, {"attr": opt_attr}, {"target": path}),
    Proc.READ: res(
        t.ReadRes,
        {"attr": opt_attr},
        {"count": u32, "eof": st.booleans(), "data": st.binary(max_size=10000)},
    ),
    Proc.WRITE: res(
        t.WriteRes,
        {"wcc": wcc},
        {"count": u32, "committed": st.sampled_from(StableHow), "verf": verf},
    ),
    Proc.CREATE: create_res,
    Proc.MKDIR: create_res,
    Proc.SYMLINK: create_res,
    Proc.MKNOD: create_res,
    Proc.REMOVE: wcc_res,
    Proc.RMDIR: wcc_res,
    Proc.RENAME: st.builds(t.RenameRes, st.sampled_from(Stat), wcc, wcc),
    Proc.LINK: st.builds(t.LinkRes, st.sampled_from(Stat), opt_attr, wcc),
    Proc.READDIR: res(
        t.ReaddirRes,
        {"dir_attr": opt_attr},
        {
            "cookieverf": verf,
            "entries": st.lists(entry3, max_size=20).map(tuple),
            "eof": st.booleans(),
        },
    ),
    Proc.READDIRPLUS: res(
        t.ReaddirplusRes,
        {"dir_attr": opt_attr},
        {
            "cookieverf": verf,
            "entries": st.lists(entryplus3, max_size=8).map(tuple),
            "eof": st.booleans(),
        },
    ),
    Proc.FSSTAT: res(t.FsstatRes, {"attr": opt_attr}, {"stat": fsstat}),
    Proc.FSINFO: res(t.FsinfoRes, {"attr": opt_attr}, {"info": fsinfo}),
    Proc.PATHCONF: res(t.PathconfRes, {"attr": opt_attr}, {"conf": pathconf}),
    Proc.COMMIT: res(t.CommitRes, {"wcc": wcc}, {"verf": verf}),
}


def encode(pack: Callable[[Packer, Any], None], value: Any) -> bytes:
    p = Packer()
    pack(p, value)
    return p.get_bytes()


def decode_all(unpack: Callable[[Unpacker], Any], data: bytes) -> Any:
    u = Unpacker(data)
    value = unpack(u)
    u.done()
    return value


@pytest.mark.parametrize("row", TABLE, ids=lambda r: r.proc.name)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_args_round_trip(row: Any, data: st.DataObject) -> None:
    args = data.draw(ARGS[row.proc])
    client_encode, _ = cc.CLIENT_CODECS[row.proc]
    assert decode_all(row.decode, encode(client_encode, args)) == args


@pytest.mark.parametrize("row", TABLE, ids=lambda r: r.proc.name)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_results_round_trip(row: Any, data: st.DataObject) -> None:
    result = data.draw(RESULTS[row.proc])
    _, client_decode = cc.CLIENT_CODECS[row.proc]
    assert decode_all(client_decode, encode(row.encode, result)) == result


@given(attr)
def test_fattr3_is_84_bytes_and_round_trips(a: Attr) -> None:
    data = encode(structs.pack_fattr3, a)
    assert len(data) == 84
    assert decode_all(structs.unpack_fattr3, data) == a
    assert encode(structs.pack_post_op_attr, a) == b"\0\0\0\1" + data


@given(sattr())
def test_sattr3_round_trip(s: SetAttrs) -> None:
    assert decode_all(structs.unpack_sattr3, encode(structs.pack_sattr3, s)) == s


def test_times_outside_nfstime3_are_clamped() -> None:
    assert structs.split_ns(-1) == (0, 0)
    assert structs.split_ns(2**32 * 10**9) == (2**32 - 1, 10**9 - 1)
    assert structs.split_ns(1_500_000_001) == (1, 500_000_001)


def test_read_reply_references_large_data_without_copy() -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    p = Packer()
    er.encode_read(p, t.ReadRes(Stat.OK, None, len(data), True, data))
    assert any(buf is data for buf in p.buffers())


def test_write_data_is_a_view_into_the_record() -> None:
    record = encode(cc.encode_write, t.WriteArgs(b"h", 0, 5000, StableHow.UNSTABLE, bytes(5000)))
    args = decode_all(da.decode_write, record)
    assert isinstance(args.data, memoryview)
    assert args.data.obj is not None and len(args.data) == 5000


def test_entry_sizes_match_the_encoding() -> None:
    e = t.Entry3(1, b"hello", 9)
    assert len(encode(er._pack_entry3, e)) == er.entry3_size(5)
    a = Attr(FileType.REG, 0o644, 1, 0, 0, 0, 0, (0, 0), 1, 1, 0, 0, 0)
    pe = t.EntryPlus3(1, b"hello", 9, a, bytes(32))
    assert len(encode(er._pack_entryplus3, pe)) == er.entryplus3_size(5, True, 32)
    empty = t.ReaddirRes(Stat.OK, a, bytes(8), (), True)
    assert len(encode(er.encode_readdir, empty)) == er.readdir_fixed_size(True)


# --- garbage ----------------------------------------------------------------------------------


def _fh_args(fh_bytes: bytes) -> bytes:
    p = Packer()
    p.pack_opaque(fh_bytes)
    return p.get_bytes()


@pytest.mark.parametrize(
    ("decoder", "data"),
    [
        (da.decode_fh_args, _fh_args(bytes(65))),  # nfs_fh3 is opaque<64>
        (da.decode_fh_args, b"\0\0\0\x08abc"),  # truncated
        (da.decode_create, _fh_args(b"h") + _fh_args(b"n") + b"\0\0\0\x03"),  # createmode3 3
        (da.decode_mknod, _fh_args(b"h") + _fh_args(b"n") + b"\0\0\0\x08"),  # ftype3 8
        (da.decode_setattr, _fh_args(b"h") + b"\0\0\0\x02"),  # bool 2
        (da.decode_write, _fh_args(b"h") + bytes(12) + b"\0\0\0\x03"),  # stable_how 3
        (
            da.decode_setattr,
            _fh_args(b"h") + bytes(16) + b"\0\0\0\x03",  # time_how 3
        ),
        (da.decode_readdir, _fh_args(b"h") + bytes(8) + bytes(4)),  # short cookieverf
    ],
)
def test_garbage_is_xdr_error(decoder: Callable[[Unpacker], Any], data: bytes) -> None:
    with pytest.raises(XdrError):
        decoder(Unpacker(data))


def test_long_name_decodes_for_the_handler_to_refuse() -> None:
    data = encode(cc.pack_diropargs, t.DirOpArgs(b"h", b"x" * 300))
    assert decode_all(da.unpack_diropargs, data).name == b"x" * 300


def test_absurd_name_is_garbage() -> None:
    data = encode(cc.pack_diropargs, t.DirOpArgs(b"h", b"x" * 5000))
    with pytest.raises(XdrError):
        decode_all(da.unpack_diropargs, data)
