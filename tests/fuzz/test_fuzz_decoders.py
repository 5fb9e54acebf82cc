"""Fuzzing the XDR decoders of the NFS front end: every NFSv3, MOUNT v3 and portmap v2 argument
decoder, the XDR primitives, the RPC call header, AUTH_SYS, record marking and file handles, fed
arbitrary bytes and mutated valid encodings. Only the documented errors may escape: XdrError
(the RPC layer answers GARBAGE_ARGS, nfs_gateway/program.py), the call rejections of rpc.py,
RecordError (the connection closes) and BadHandle (NFS3ERR_BADHANDLE)."""

from __future__ import annotations

import struct

import pytest
from fuzzlib import count, fuzz_settings, maybe_mutated, watchdog
from hypothesis import given
from hypothesis import strategies as st
from wire import args_for, calls, decoder_programs, records

from nfs_gateway.backend import BadHandle, FileId
from nfs_gateway.mount import MOUNT_PROG
from nfs_gateway.nfs3.const import NFS_PROGRAM, Proc
from nfs_gateway.nfs3.fhandle import FH_SIZE, decode_fhandle, encode_fhandle
from nfs_gateway.portmap import PMAP_PROG
from nfs_gateway.record import RecordDecoder, RecordError
from nfs_gateway.rpc import Rejected, Unanswerable, decode_authsys, decode_call
from nfs_gateway.xdr import Unpacker, XdrError

PROGRAMS = decoder_programs()
DECODERS = [
    pytest.param(prog.prog, vers, num, proc.decode, id=f"{prog.name}-{proc.name}")
    for prog in PROGRAMS.values()
    for vers, procs in prog.procedures.items()
    for num, proc in procs.items()
]


def _decode_all(decode, data: bytes) -> None:
    u = Unpacker(data)
    try:
        decode(u)
        u.done()
    except XdrError:
        pass  # GARBAGE_ARGS: the documented refusal


@pytest.mark.parametrize(("prog", "vers", "num", "decode"), DECODERS)
@fuzz_settings(40)
@given(data=st.data())
def test_argument_decoders_raise_only_xdr_error(prog, vers, num, decode, data) -> None:
    valid = data.draw(args_for(prog, num, ()), label="valid")
    raw = data.draw(maybe_mutated(valid, p_valid=0.2) | st.binary(max_size=256), label="input")
    count("decoders")
    with watchdog():
        _decode_all(decode, raw)


def test_every_served_procedure_is_fuzzed() -> None:
    names = {p.id for p in DECODERS}
    assert len(names) == len(Proc) + 6 + 5, sorted(names)
    assert {NFS_PROGRAM, MOUNT_PROG, PMAP_PROG} == set(PROGRAMS)


_OPS = ("uint", "int", "uhyper", "hyper", "bool", "enum", "fopaque", "opaque", "array", "opt")


def _run_op(u: Unpacker, op: str, n: int) -> None:
    if op in ("uint", "int", "uhyper", "hyper", "bool"):
        getattr(u, f"unpack_{op}")()
    elif op == "enum":
        u.unpack_enum(frozenset(range(n % 8)))
    elif op == "fopaque":
        u.unpack_fopaque(n % 300)
    elif op == "opaque":
        u.unpack_opaque(n % 5000)
    elif op == "array":
        u.unpack_array(u.unpack_uhyper, n % 100_000)
    else:
        u.unpack_optional(u.unpack_int)


@fuzz_settings(200)
@given(
    ops=st.lists(st.tuples(st.sampled_from(_OPS), st.integers(0, 2**20)), max_size=12),
    data=st.binary(max_size=256),
)
def test_xdr_primitives_raise_only_xdr_error(ops, data) -> None:
    """RFC 4506: a length or count is checked against the bytes left and a limit."""
    count("decoders")
    u = Unpacker(data)
    with watchdog():
        for op, n in ops:
            try:
                _run_op(u, op, n)
            except XdrError:
                break
            assert 0 <= u.pos <= len(data)


@fuzz_settings(300)
@given(record=records() | calls().flatmap(maybe_mutated))
def test_call_header_decoder_raises_only_rejections(record: bytes) -> None:
    count("decoders")
    with watchdog():
        try:
            hdr, u = decode_call(record)
        except (Unanswerable, Rejected) as e:
            if isinstance(e, Rejected):
                assert isinstance(e.reply(), bytes)
            return
        assert 0 <= u.pos <= len(record)
        assert hdr.xid == struct.unpack_from(">I", record)[0]


@fuzz_settings(200)
@given(body=st.binary(max_size=400))
def test_authsys_decoder_answers_badcred_only(body: bytes) -> None:
    count("decoders")
    try:
        decode_authsys(1, body)
    except Rejected:
        pass


@fuzz_settings(200)
@given(data=st.binary(max_size=64) | maybe_mutated(encode_fhandle(1, 2, FileId(3, 4))))
def test_file_handle_decoder_raises_only_bad_handle(data: bytes) -> None:
    count("decoders")
    try:
        decode_fhandle(data)
    except BadHandle:
        pass
    else:
        assert len(data) == FH_SIZE


@fuzz_settings(200)
@given(
    stream=st.binary(max_size=512),
    cuts=st.lists(st.integers(1, 64), max_size=16),
    limit=st.sampled_from((1, 7, 64, 1024)),
)
def test_record_decoder_raises_only_record_error(stream: bytes, cuts: list[int], limit: int):
    """RFC 5531 §11 on arbitrary bytes, in arbitrary pieces: records within the limit, or
    RecordError (the connection closes); never more buffered than the limit."""
    count("decoders")
    dec = RecordDecoder(limit)
    pieces, pos = [], 0
    for n in [*cuts, len(stream)]:
        pieces.append(stream[pos : pos + n])
        pos += n
    try:
        for piece in pieces:
            for rec in dec.feed(piece):
                assert len(rec) <= limit
    except RecordError:
        pass
