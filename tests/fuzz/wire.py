"""Inputs for the ONC RPC front end (NFSv3, MOUNT v3, portmap v2) and what a correct server
answers them.

Rules:
- `calls(handles)` draws whole call records: a valid header (sometimes a bad RPC version, auth
  flavor, verifier, program, version or procedure) and valid arguments for the procedure,
  encoded with the client codec; `records(handles)` mostly mutates those bytes and sometimes
  draws plain garbage.
- `expect(record)` is this file's own reading of RFC 5531 §9 (checks in the order of the Linux
  sunrpc server, as nfs_gateway/rpc.py documents): whether a reply is due and which header it
  carries. It never calls nfs_gateway/rpc.py or dispatch.py. For a call that reaches its
  procedure it leaves the choice between SUCCESS and GARBAGE_ARGS to the procedure's decoder
  (`check_reply`).
- `check_reply` asserts the reply matches: the same xid, the expected header byte for byte, and
  for SUCCESS a body that the client-side decoder reads exactly to its end. SYSTEM_ERR (a server
  fault) is never a correct answer to client input.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fuzzlib import maybe_mutated, mutated
from hypothesis import strategies as st

from nfs_gateway.backend import CreateMode, FileType, SetAttrs, StableHow, TimeHow
from nfs_gateway.exports import ExportTable
from nfs_gateway.mount import MOUNT_PROG, MOUNT_V3, make_mount_program
from nfs_gateway.nfs3 import types as t
from nfs_gateway.nfs3.client_codec import CLIENT_CODECS
from nfs_gateway.nfs3.const import NFS_PROGRAM, NFS_V3, Proc
from nfs_gateway.nfs3.program import make_nfs3_program
from nfs_gateway.portmap import PMAP_PROG, PMAP_VERS, make_portmap_program, unpack_pmaplist
from nfs_gateway.program import Program
from nfs_gateway.xdr import Packer, Unpacker, XdrError

u32 = st.integers(0, 2**32 - 1)
u64 = st.sampled_from((0, 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1)) | st.integers(0, 2**64 - 1)
time_ns = st.integers(0, (2**32 - 1) * 10**9 + 10**9 - 1)
verf8 = st.binary(min_size=8, max_size=8)
cookies = st.sampled_from((0, 0, 0, 1, 2, 3)) | u64  # READDIR: mostly from the start
NAMES = (b"f", b"d", b"l", b"new", b"new2", b".", b"..", b"", b"a/b", b"x" * 255, b"y" * 256)
names = st.sampled_from(NAMES) | st.binary(max_size=300)
DIRPATHS = (b"/", b"//", b"/d", b"/d/", b"/nope", b"/f", b"/l", b"/ro", b"/\xff", b"/d/../d")
dirpaths = st.sampled_from(DIRPATHS) | st.binary(max_size=1100)

# What the in-process dispatcher and a node serve: prog -> vers -> number of procedures.
SERVED: Mapping[int, Mapping[int, int]] = {
    NFS_PROGRAM: {NFS_V3: len(Proc)},
    MOUNT_PROG: {MOUNT_V3: 6},
    PMAP_PROG: {PMAP_VERS: 5},
}
PROG_NAMES = {NFS_PROGRAM: "NFS", MOUNT_PROG: "MOUNT", PMAP_PROG: "PMAP"}
# Every served (prog, proc), for fuzzers parametrized by procedure.
PROCEDURES = [
    (prog, proc) for prog, by_vers in SERVED.items() for n in by_vers.values() for proc in range(n)
]


def _xdr(pack: Callable[[Packer, Any], None], value: Any) -> bytes:
    p = Packer()
    pack(p, value)
    return p.get_bytes()


def xdr_string(data: bytes) -> bytes:
    return _xdr(Packer.pack_opaque, data)


# --- NFSv3 arguments (RFC 1813 §3.3) --------------------------------------------------------


@st.composite
def sattr3(draw: st.DrawFn) -> SetAttrs:
    atime, mtime = draw(st.sampled_from(TimeHow)), draw(st.sampled_from(TimeHow))
    client = TimeHow.SET_TO_CLIENT_TIME
    opt32 = st.none() | u32
    return SetAttrs(
        mode=draw(st.none() | st.integers(0, 0o7777) | u32),
        uid=draw(opt32),
        gid=draw(opt32),
        size=draw(st.none() | st.integers(0, 1 << 20) | u64),
        atime=atime,
        atime_ns=draw(time_ns) if atime == client else 0,
        mtime=mtime,
        mtime_ns=draw(time_ns) if mtime == client else 0,
    )


def _nfs_args(fh: st.SearchStrategy[bytes]) -> dict[Proc, st.SearchStrategy[Any]]:
    dirop = st.builds(t.DirOpArgs, fh, names)
    # Large first: hypothesis draws the first values of sampled_from more often.
    count = st.sampled_from((1 << 20, 2**32 - 1, 65536, 4096, 1, 0)) | u32
    create = st.builds(
        lambda where, how, s, v: (
            t.CreateArgs(where, how, verf=v)
            if how == CreateMode.EXCLUSIVE
            else t.CreateArgs(where, how, s)
        ),
        dirop,
        st.sampled_from(CreateMode),
        sattr3(),
        verf8,
    )
    mknod = st.builds(
        lambda where, ftype, s, rdev: (
            t.MknodArgs(where, ftype, s, rdev)
            if ftype in (FileType.CHR, FileType.BLK)
            else t.MknodArgs(where, ftype, s)
            if ftype in (FileType.SOCK, FileType.FIFO)
            else t.MknodArgs(where, ftype)
        ),
        dirop,
        st.sampled_from(FileType),
        sattr3(),
        st.tuples(u32, u32),
    )
    return {
        Proc.NULL: st.none(),
        Proc.GETATTR: st.builds(t.FhArgs, fh),
        Proc.SETATTR: st.builds(t.SetattrArgs, fh, sattr3(), st.none() | time_ns),
        Proc.LOOKUP: dirop,
        Proc.ACCESS: st.builds(t.AccessArgs, fh, u32),
        Proc.READLINK: st.builds(t.FhArgs, fh),
        Proc.READ: st.builds(t.ReadArgs, fh, u64, count),
        Proc.WRITE: st.builds(
            t.WriteArgs, fh, u64, count, st.sampled_from(StableHow), st.binary(max_size=5000)
        ),
        Proc.CREATE: create,
        Proc.MKDIR: st.builds(t.MkdirArgs, dirop, sattr3()),
        Proc.SYMLINK: st.builds(t.SymlinkArgs, dirop, sattr3(), st.binary(max_size=1100)),
        Proc.MKNOD: mknod,
        Proc.REMOVE: dirop,
        Proc.RMDIR: dirop,
        Proc.RENAME: st.builds(t.RenameArgs, dirop, dirop),
        Proc.LINK: st.builds(t.LinkArgs, fh, dirop),
        Proc.READDIR: st.builds(t.ReaddirArgs, fh, cookies, verf8, count),
        Proc.READDIRPLUS: st.builds(t.ReaddirplusArgs, fh, cookies, verf8, count, count),
        Proc.FSSTAT: st.builds(t.FhArgs, fh),
        Proc.FSINFO: st.builds(t.FhArgs, fh),
        Proc.PATHCONF: st.builds(t.FhArgs, fh),
        Proc.COMMIT: st.builds(t.CommitArgs, fh, u64, count),
    }


def nfs_args(proc: Proc, handles: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """Valid XDR arguments of `proc`; handles mostly from `handles` (real ones)."""
    real = st.sampled_from(list(handles) or [b""])
    fh = st.one_of(real, real, real, st.binary(max_size=64))  # mostly real handles
    return _nfs_args(fh)[proc].map(lambda a: _xdr(CLIENT_CODECS[proc][0], a))


# --- MOUNT v3 and portmap v2 arguments ------------------------------------------------------

_void = st.just(b"")
_mapping = st.tuples(
    st.sampled_from(tuple(SERVED)) | u32,
    st.integers(0, 4) | u32,
    st.sampled_from((6, 17)) | u32,
    u32,
).map(lambda m: struct.pack(">4I", *m))
MOUNT_ARGS = {
    0: _void,
    1: dirpaths.map(xdr_string),
    2: _void,
    3: dirpaths.map(xdr_string),
    4: _void,
    5: _void,
}
PMAP_ARGS = {0: _void, 1: _mapping, 2: _mapping, 3: _mapping, 4: _void}


def args_for(prog: int, proc: int, handles: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """Valid arguments for a served procedure; anything for the rest."""
    if prog == NFS_PROGRAM and proc < len(Proc):
        return nfs_args(Proc(proc), handles)
    table = {MOUNT_PROG: MOUNT_ARGS, PMAP_PROG: PMAP_ARGS}.get(prog, {})
    return table.get(proc, st.binary(max_size=64))


# --- call headers (RFC 5531 §9) --------------------------------------------------------------


@st.composite
def authsys_body(draw: st.DrawFn, valid: bool = True) -> bytes:
    """authsys_parms (RFC 5531 appendix A); with valid=False, maybe over its limits."""
    machine = st.binary(max_size=40) | st.binary(min_size=250, max_size=255 if valid else 260)
    p = Packer()
    p.pack_uint(draw(u32))  # stamp
    p.pack_string(draw(machine))
    p.pack_uint(draw(st.sampled_from((0, 1000, 65534)) | u32))
    p.pack_uint(draw(st.sampled_from((0, 1000, 65534)) | u32))
    p.pack_array(draw(st.lists(u32, max_size=16 if valid else 18)), p.pack_uint)
    return p.get_bytes()


def _opaque_auth(flavor: int, body: bytes) -> bytes:
    return struct.pack(">I", flavor) + xdr_string(body)


_FLAVORS = (0, 1, 2, 3, 4, 6, 390003, 390004, 390005, 0xFFFF_FFFF)
good_creds = st.just(_opaque_auth(0, b"")) | authsys_body().map(lambda b: _opaque_auth(1, b))
any_creds = st.one_of(
    authsys_body(valid=False).map(lambda b: _opaque_auth(1, b)),
    st.builds(_opaque_auth, st.sampled_from(_FLAVORS) | u32, st.binary(max_size=400)),
)
any_verfs = st.builds(_opaque_auth, st.sampled_from(_FLAVORS) | u32, st.binary(max_size=64))
NULL_VERF = _opaque_auth(0, b"")


def _target(draw: st.DrawFn, bad: bool, only: tuple[int, int] | None) -> tuple[int, int, int]:
    """(prog, vers, proc): served (`only`: that prog and proc), or (bad) next to what is
    served, or anything."""
    prog = (
        only[0]
        if only
        else draw(st.sampled_from((NFS_PROGRAM, NFS_PROGRAM, NFS_PROGRAM, MOUNT_PROG, PMAP_PROG)))
    )
    vers, nprocs = next(iter(SERVED[prog].items()))
    if not bad:
        return prog, vers, only[1] if only else draw(st.integers(0, nprocs - 1))
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return prog, vers, draw(st.sampled_from((nprocs, nprocs + 1)) | u32)
    if kind == 1:
        return prog, draw(st.sampled_from((vers - 1, vers + 1, 0)) | u32), 0
    return draw(u32), draw(u32), draw(u32)


@st.composite
def call_parts(
    draw: st.DrawFn, handles: Sequence[bytes] = (), only: tuple[int, int] | None = None
) -> tuple[bytes, bytes]:
    """A call record as (header with credentials and verifier, arguments); at most one part
    of the header is wrong (RPC version, credentials, verifier, or what is called)."""
    fault = draw(st.sampled_from(("", "", "", "", "", "", "rpcvers", "cred", "verf", "target")))
    prog, vers, proc = _target(draw, fault == "target", only)
    rpcvers = (
        draw(st.sampled_from((0, 1, 3)) | u32.filter(lambda v: v != 2))
        if (fault == "rpcvers")
        else 2
    )
    head = struct.pack(">6I", draw(u32), 0, rpcvers, prog, vers, proc)
    cred = draw(any_creds if fault == "cred" else good_creds)
    verf = draw(any_verfs) if fault == "verf" else NULL_VERF
    return head + cred + verf, draw(args_for(prog, proc, handles))


def calls(handles: Sequence[bytes] = ()) -> st.SearchStrategy[bytes]:
    return call_parts(handles).map(lambda parts: parts[0] + parts[1])


@st.composite
def records(
    draw: st.DrawFn, handles: Sequence[bytes] = (), only: tuple[int, int] | None = None
) -> bytes:
    """What a client may send as one record: mostly calls with their arguments mutated, some
    mutated anywhere, some garbage."""
    kind = draw(st.integers(0, 9))
    if kind == 9:
        return draw(st.binary(max_size=128))
    head, args = draw(call_parts(handles, only))
    if kind >= 6:
        return draw(mutated(head + args))
    return head + draw(maybe_mutated(args, p_valid=0.5))


# --- the expected reply header ----------------------------------------------------------------

REPLY, MSG_ACCEPTED, MSG_DENIED = 1, 0, 1
SUCCESS, PROG_UNAVAIL, PROG_MISMATCH, PROC_UNAVAIL, GARBAGE_ARGS, SYSTEM_ERR = range(6)
AUTH_BADCRED, AUTH_BADVERF = 1, 3


@dataclass(frozen=True, slots=True)
class Expect:
    """What a correct server answers. kind: "drop" (no reply), "header" (exactly `header`), or
    "call" (the procedure at `target` decides between SUCCESS and GARBAGE_ARGS)."""

    kind: str
    xid: int = 0
    header: bytes = b""
    target: tuple[int, int, int] = (0, 0, 0)
    args_at: int = 0


def _accepted(xid: int, stat: int, *extra: int) -> bytes:
    return struct.pack(f">{6 + len(extra)}I", xid, REPLY, MSG_ACCEPTED, 0, 0, stat, *extra)


def _denied(xid: int, *words: int) -> bytes:
    return struct.pack(f">{3 + len(words)}I", xid, REPLY, MSG_DENIED, *words)


def _authsys_ok(body: bytes) -> bool:
    """authsys_parms (RFC 5531 appendix A): stamp, machinename<255>, uid, gid, gids<16>."""
    u = Unpacker(body)
    try:
        u.unpack_uint()
        u.unpack_opaque(255)
        u.unpack_uint()
        u.unpack_uint()
        u.unpack_array(u.unpack_uint, 16)
        u.done()
    except XdrError:
        return False
    return True


class _Answer(Exception):
    def __init__(self, expect: Expect) -> None:
        self.expect = expect


def _opaque_auth_at(record: bytes, pos: int, xid: int, bad: int) -> tuple[int, bytes, int]:
    if len(record) < pos + 8:
        raise _Answer(Expect("header", xid, _accepted(xid, GARBAGE_ARGS)))
    flavor, length = struct.unpack_from(">2I", record, pos)
    if length > 400:
        raise _Answer(Expect("header", xid, _denied(xid, 1, bad)))
    end = pos + 8 + length + (-length % 4)
    if end > len(record):
        raise _Answer(Expect("header", xid, _accepted(xid, GARBAGE_ARGS)))
    return flavor, record[pos + 8 : pos + 8 + length], end


def expect(record: bytes, served: Mapping[int, Mapping[int, int]] = SERVED) -> Expect:
    try:
        return _expect(record, served)
    except _Answer as a:
        return a.expect


def _expect(record: bytes, served: Mapping[int, Mapping[int, int]]) -> Expect:
    if len(record) < 8 or struct.unpack_from(">I", record, 4)[0] != 0:
        return Expect("drop")
    xid = struct.unpack_from(">I", record)[0]
    if len(record) >= 12 and struct.unpack_from(">I", record, 8)[0] != 2:
        return Expect("header", xid, _denied(xid, 0, 2, 2))  # RPC_MISMATCH, we speak 2..2
    if len(record) < 24:
        return Expect("header", xid, _accepted(xid, GARBAGE_ARGS))
    prog, vers, proc = struct.unpack_from(">3I", record, 12)
    cflavor, cbody, pos = _opaque_auth_at(record, 24, xid, AUTH_BADCRED)
    vflavor, vbody, pos = _opaque_auth_at(record, pos, xid, AUTH_BADVERF)
    if vflavor != 0 or vbody:
        return Expect("header", xid, _denied(xid, 1, AUTH_BADVERF))
    if not ((cflavor == 0 and not cbody) or (cflavor == 1 and _authsys_ok(cbody))):
        return Expect("header", xid, _denied(xid, 1, AUTH_BADCRED))
    if prog not in served:
        return Expect("header", xid, _accepted(xid, PROG_UNAVAIL))
    if vers not in served[prog]:
        lo, hi = min(served[prog]), max(served[prog])
        return Expect("header", xid, _accepted(xid, PROG_MISMATCH, lo, hi))
    if proc >= served[prog][vers]:
        return Expect("header", xid, _accepted(xid, PROC_UNAVAIL))
    return Expect("call", xid, target=(prog, vers, proc), args_at=pos)


# --- reply bodies --------------------------------------------------------------------------


def _bounded_list(u: Unpacker, item: Callable[[], object], limit: int = 100_000) -> None:
    for _ in range(limit):
        if not u.unpack_bool():
            return
        item()
    raise XdrError("list too long")


def _mnt_res(u: Unpacker) -> None:
    if u.unpack_uint() == 0:
        u.unpack_opaque(64)
        u.unpack_array(u.unpack_int, 64)


def _mountlist(u: Unpacker) -> None:
    _bounded_list(u, lambda: (u.unpack_string(255), u.unpack_string(1024)))


def _exports(u: Unpacker) -> None:
    _bounded_list(
        u, lambda: (u.unpack_string(1024), _bounded_list(u, lambda: u.unpack_string(255)))
    )


def _void(u: Unpacker) -> None:
    return None


RESULT_DECODERS: Mapping[tuple[int, int], Callable[[Unpacker], object]] = {
    **{(NFS_PROGRAM, int(p)): CLIENT_CODECS[p][1] for p in Proc},
    (MOUNT_PROG, 0): _void, (MOUNT_PROG, 1): _mnt_res, (MOUNT_PROG, 2): _mountlist,
    (MOUNT_PROG, 3): _void, (MOUNT_PROG, 4): _void, (MOUNT_PROG, 5): _exports,
    (PMAP_PROG, 0): _void, (PMAP_PROG, 1): Unpacker.unpack_bool,
    (PMAP_PROG, 2): Unpacker.unpack_bool, (PMAP_PROG, 3): Unpacker.unpack_uint,
    (PMAP_PROG, 4): unpack_pmaplist,
}  # fmt: skip


def decoder_programs() -> dict[int, Program]:
    """The three programs as a node serves them, for their decoders only (no backend)."""
    return {
        p.prog: p
        for p in (
            make_nfs3_program(None, ExportTable([])),  # type: ignore[arg-type]
            make_mount_program(None, ExportTable([]), lambda e, f: b""),  # type: ignore[arg-type]
            make_portmap_program(list),
        )
    }


def args_decode(programs: Mapping[int, Program], record: bytes, e: Expect) -> bool:
    """Whether the procedure's own decoder takes the arguments (an XdrError: it does not).
    Any other exception escapes: a decoder may raise only XdrError."""
    prog, vers, proc = e.target
    u = Unpacker(record, e.args_at)
    try:
        programs[prog].procedures[vers][proc].decode(u)
        u.done()
    except XdrError:
        return False
    return True


def check_reply(
    record: bytes, reply: bytes | None, e: Expect, programs: Mapping[int, Program]
) -> None:
    """Assert that `reply` is what a correct server answers to `record`."""
    if e.kind == "drop":
        assert reply is None, f"a reply to a record that allows none: {reply!r}"
        return
    assert reply is not None, "no reply to a call that needs one"
    if e.kind == "header":
        assert reply == e.header, f"reply {reply[:40]!r}, expected {e.header!r}"
        return
    if not args_decode(programs, record, e):
        assert reply == _accepted(e.xid, GARBAGE_ARGS), f"expected GARBAGE_ARGS: {reply[:40]!r}"
        return
    assert reply[:24] == _accepted(e.xid, SUCCESS), f"expected SUCCESS: {reply[:40]!r}"
    u = Unpacker(reply, 24)
    try:
        RESULT_DECODERS[e.target[0], e.target[2]](u)
        u.done()
    except XdrError as err:
        raise AssertionError(f"the result does not decode ({err}): {reply[:64]!r}") from err
