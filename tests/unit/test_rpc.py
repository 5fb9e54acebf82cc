"""ONC RPC v2 messages and dispatch (RFC 5531 §9, §10, appendix A), without sockets."""

from __future__ import annotations

import struct

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from nfs_gateway.backend import Cred
from nfs_gateway.dispatch import Dispatcher
from nfs_gateway.drc import DuplicateRequestCache
from nfs_gateway.program import AUTH_NONE, AUTH_SYS, CallContext, Procedure, Program
from nfs_gateway.rpc import (
    MSG_ACCEPTED,
    MSG_DENIED,
    NULL_AUTH,
    REPLY,
    AcceptStat,
    AuthError,
    AuthStat,
    GarbageCall,
    OpaqueAuth,
    RpcMismatch,
    Unanswerable,
    accepted_reply,
    auth_error_reply,
    decode_authsys,
    decode_call,
    decode_reply,
    encode_authsys,
    encode_call,
    rpc_mismatch_reply,
)
from nfs_gateway.xdr import Packer, Unpacker

u32 = st.integers(0, 2**32 - 1)
creds = st.builds(
    Cred,
    uid=u32,
    gid=u32,
    gids=st.lists(u32, max_size=16).map(tuple),
    machine=st.text(max_size=60),
)


def words(*v: int) -> bytes:
    return struct.pack(f">{len(v)}I", *v)


# --- Codec round trips ---------------------------------------------------------------------------


@given(creds, u32)
def test_authsys_roundtrip(cred, stamp):
    assert decode_authsys(1, encode_authsys(cred, stamp)) == cred


@given(u32, u32, u32, u32, creds, st.binary(max_size=64))
def test_call_header_roundtrip(xid, prog, vers, proc, cred, args):
    auth = OpaqueAuth(AUTH_SYS, encode_authsys(cred))
    record = encode_call(xid, prog, vers, proc, args, auth)
    hdr, u = decode_call(record)
    assert (hdr.xid, hdr.prog, hdr.vers, hdr.proc) == (xid, prog, vers, proc)
    assert hdr.auth == auth and hdr.verf == NULL_AUTH and hdr.cred == cred
    assert record[u.pos :] == args


@given(u32, st.sampled_from(list(AcceptStat)), u32, u32)
def test_accepted_reply_roundtrip(xid, stat, low, high):
    hdr, u = decode_reply(accepted_reply(xid, stat, low, high))
    assert (hdr.xid, hdr.reply_stat, hdr.accept_stat) == (xid, MSG_ACCEPTED, stat)
    if stat == AcceptStat.PROG_MISMATCH:
        assert (hdr.low, hdr.high) == (low, high)
    u.done()


@given(u32, st.sampled_from(list(AuthStat)))
def test_auth_error_roundtrip(xid, stat):
    hdr, u = decode_reply(auth_error_reply(xid, stat))
    assert (hdr.reply_stat, hdr.reject_stat, hdr.auth_stat) == (MSG_DENIED, 1, stat)
    u.done()


# --- Exact encodings (RFC 5531 §9) -----------------------------------------------------------


def test_exact_reply_encodings():
    # xid, REPLY, MSG_ACCEPTED, verf AUTH_NONE len 0, accept_stat [, low, high]
    assert accepted_reply(7, AcceptStat.SUCCESS) == words(7, 1, 0, 0, 0, 0)
    assert accepted_reply(7, AcceptStat.PROG_UNAVAIL) == words(7, 1, 0, 0, 0, 1)
    assert accepted_reply(7, AcceptStat.PROG_MISMATCH, 3, 4) == words(7, 1, 0, 0, 0, 2, 3, 4)
    assert accepted_reply(7, AcceptStat.PROC_UNAVAIL) == words(7, 1, 0, 0, 0, 3)
    assert accepted_reply(7, AcceptStat.GARBAGE_ARGS) == words(7, 1, 0, 0, 0, 4)
    assert accepted_reply(7, AcceptStat.SYSTEM_ERR) == words(7, 1, 0, 0, 0, 5)
    # xid, REPLY, MSG_DENIED, RPC_MISMATCH, low=2, high=2
    assert rpc_mismatch_reply(7) == words(7, 1, 1, 0, 2, 2)
    # xid, REPLY, MSG_DENIED, AUTH_ERROR, auth_stat
    assert auth_error_reply(7, AuthStat.AUTH_BADCRED) == words(7, 1, 1, 1, 1)
    assert auth_error_reply(7, AuthStat.AUTH_TOOWEAK) == words(7, 1, 1, 1, 5)


# --- Header rejections ---------------------------------------------------------------------------


def sys_auth(body: bytes) -> OpaqueAuth:
    return OpaqueAuth(AUTH_SYS, body)


GOOD_SYS = encode_authsys(Cred(1, 2, (3,), "m"))


@pytest.mark.parametrize(
    "record, exc, stat",
    [
        (b"", Unanswerable, None),
        (words(5), Unanswerable, None),
        (words(5, REPLY, 0), Unanswerable, None),  # a reply sent to the server is ignored
        (encode_call(5, 1, 1, 0, rpcvers=3), RpcMismatch, None),
        (encode_call(5, 1, 1, 0, rpcvers=1), RpcMismatch, None),
        (words(5, 0, 2, 1, 1), GarbageCall, None),  # header truncated before the credential
        (words(5, 0, 2, 1, 1, 0, 0, 1, 0, 9), GarbageCall, None),  # auth body length past end
        (words(5, 0, 2, 1, 1, 0, 0, 401) + bytes(404), AuthError, AuthStat.AUTH_BADCRED),
        (encode_call(5, 1, 1, 0, auth=OpaqueAuth(6, b"gss!")), AuthError, AuthStat.AUTH_BADCRED),
        (encode_call(5, 1, 1, 0, auth=OpaqueAuth(AUTH_NONE, b"xxxx")), AuthError, 1),
        (encode_call(5, 1, 1, 0, auth=sys_auth(b"")), AuthError, AuthStat.AUTH_BADCRED),
        (encode_call(5, 1, 1, 0, auth=sys_auth(GOOD_SYS + b"\0\0\0\0")), AuthError, 1),
        (encode_call(5, 1, 1, 0, auth=sys_auth(GOOD_SYS[:-4])), AuthError, 1),
        (encode_call(5, 1, 1, 0, verf=OpaqueAuth(AUTH_SYS, b"")), AuthError, 3),  # BADVERF
    ],
)
def test_header_rejections(record, exc, stat):
    with pytest.raises(exc) as info:
        decode_call(record)
    if stat is not None:
        assert info.value.stat == stat


def test_authsys_limits():
    long_name = words(0, 256) + bytes(256) + words(0, 0, 0)  # machine name > 255
    many_gids = words(0, 0, 0, 0, 17) + bytes(68)  # > 16 gids
    for body in (long_name, many_gids):
        with pytest.raises(AuthError):
            decode_authsys(1, body)


# --- Dispatch ------------------------------------------------------------------------------------


class Echo:
    """A test program: proc 1 echoes a uint, proc 2 fails, proc 3 counts (non-idempotent)."""

    def __init__(self) -> None:
        self.count = 0

    async def echo(self, ctx: CallContext, v: int) -> int:
        return v

    async def fail(self, ctx: CallContext, v: int) -> int:
        raise RuntimeError("handler bug")

    async def bump(self, ctx: CallContext, v: int) -> int:
        self.count += 1
        return self.count

    def program(self) -> Program:
        dec, enc = Unpacker.unpack_uint, Packer.pack_uint
        procs = {
            1: Procedure("ECHO", dec, self.echo, enc),
            2: Procedure("FAIL", dec, self.fail, enc),
            3: Procedure("BUMP", dec, self.bump, enc, idempotent=False),
        }
        return Program(400000, "echo", {2: procs, 4: procs})


CLIENT = ("127.0.0.1", 700)


async def run(dispatcher, record):
    out = await dispatcher.dispatch(record, CLIENT)
    return None if out is None else b"".join(out)


async def test_dispatch_success_and_errors():
    d = Dispatcher([Echo().program()])
    assert await run(d, encode_call(9, 400000, 2, 1, words(42))) == words(9, 1, 0, 0, 0, 0, 42)
    assert await run(d, encode_call(9, 400001, 2, 1)) == accepted_reply(9, AcceptStat.PROG_UNAVAIL)
    assert await run(d, encode_call(9, 400000, 3, 1)) == accepted_reply(
        9, AcceptStat.PROG_MISMATCH, 2, 4
    )
    assert await run(d, encode_call(9, 400000, 2, 9)) == accepted_reply(9, AcceptStat.PROC_UNAVAIL)
    garbage = accepted_reply(9, AcceptStat.GARBAGE_ARGS)
    assert await run(d, encode_call(9, 400000, 2, 1, b"\0\0")) == garbage  # truncated
    assert await run(d, encode_call(9, 400000, 2, 1, words(1, 2))) == garbage  # trailing
    assert await run(d, encode_call(9, 400000, 2, 1, rpcvers=3)) == rpc_mismatch_reply(9)
    assert await run(d, words(9, 1)) is None


async def test_handler_exception_is_system_err(caplog):
    d = Dispatcher([Echo().program()])
    reply = await run(d, encode_call(9, 400000, 2, 2, words(1)))
    assert reply == accepted_reply(9, AcceptStat.SYSTEM_ERR)
    assert "handler bug" in caplog.text
    assert d.counters["system_err"] == 1


async def test_handler_sees_credentials():
    seen = []

    async def handle(ctx: CallContext, _args: None) -> None:
        seen.append(ctx)

    proc = Procedure("WHO", lambda u: None, handle, lambda p, r: None)
    d = Dispatcher([Program(400002, "who", {1: {0: proc}})])
    await run(d, encode_call(5, 400002, 1, 0, auth=sys_auth(GOOD_SYS)))
    await run(d, encode_call(6, 400002, 1, 0))
    assert seen[0].cred == Cred(1, 2, (3,), "m") and seen[0].auth_flavor == AUTH_SYS
    assert seen[1].cred is None and seen[1].auth_flavor == AUTH_NONE
    assert seen[0].client == CLIENT and seen[0].xid == 5


async def test_non_idempotent_retransmission_replays_the_reply():
    echo = Echo()
    d = Dispatcher([echo.program()], DuplicateRequestCache())
    call = encode_call(77, 400000, 2, 3, words(0))
    first = await run(d, call)
    assert await run(d, call) == first  # RFC 5531 §8: same xid, same args: same reply
    assert echo.count == 1
    assert await run(d, encode_call(78, 400000, 2, 3, words(0))) != first  # new xid runs
    assert echo.count == 2
    # Same xid, different arguments: not a retransmission.
    await run(d, encode_call(77, 400000, 2, 3, words(1)))
    assert echo.count == 3


async def test_retransmission_while_in_progress_is_dropped_not_run_twice():
    gate, runs = trio.Event(), []

    async def slow(ctx: CallContext, v: int) -> int:
        runs.append(v)
        await gate.wait()
        return v

    proc = Procedure("SLOW", Unpacker.unpack_uint, slow, Packer.pack_uint, idempotent=False)
    d = Dispatcher([Program(400003, "slow", {1: {1: proc}})], DuplicateRequestCache())
    call = encode_call(5, 400003, 1, 1, words(8))
    replies = []
    async with trio.open_nursery() as nursery:

        async def first() -> None:
            replies.append(await run(d, call))

        nursery.start_soon(first)
        await trio.testing.wait_all_tasks_blocked()
        assert await run(d, call) is None  # the original is still running: drop
        gate.set()
    assert runs == [8] and replies == [words(5, 1, 0, 0, 0, 0, 8)]
    assert await run(d, call) == replies[0]


async def test_cancelled_call_is_forgotten_so_a_retry_runs():
    runs = []

    async def stuck(ctx: CallContext, v: int) -> int:
        runs.append(v)
        await trio.sleep_forever()

    proc = Procedure("STUCK", Unpacker.unpack_uint, stuck, Packer.pack_uint, idempotent=False)
    d = Dispatcher([Program(400004, "stuck", {1: {1: proc}})], DuplicateRequestCache())
    call = encode_call(6, 400004, 1, 1, words(1))
    with trio.move_on_after(0):
        await run(d, call)
    assert len(d.drc) == 0
    with trio.move_on_after(0):
        await run(d, call)
    assert runs == [1, 1]


async def test_decoder_bug_is_system_err_not_a_crash(caplog):
    def bad_decode(u: Unpacker) -> None:
        raise KeyError("decoder bug")

    proc = Procedure("BAD", bad_decode, Echo().echo, Packer.pack_uint)
    d = Dispatcher([Program(400005, "bad", {1: {1: proc}})])
    reply = await run(d, encode_call(3, 400005, 1, 1))
    assert reply == accepted_reply(3, AcceptStat.SYSTEM_ERR)
    assert "decoder bug" in caplog.text


@given(st.binary(max_size=200))
async def test_any_bytes_get_a_well_formed_reply_or_none(data):
    d = Dispatcher([Echo().program()], DuplicateRequestCache())
    reply = await run(d, data)
    if reply is not None:
        hdr, _ = decode_reply(reply)
        assert hdr.xid == struct.unpack_from(">I", data)[0]


@given(st.integers(0, 80), st.integers(0, 255), st.sampled_from([1, 2, 3]))
async def test_corrupted_calls_get_a_well_formed_reply(pos, value, proc):
    call = bytearray(encode_call(11, 400000, 2, proc, words(5), sys_auth(GOOD_SYS)))
    call[pos % len(call)] = value
    reply = await run(Dispatcher([Echo().program()], DuplicateRequestCache()), bytes(call))
    if reply is not None:
        decode_reply(reply)
