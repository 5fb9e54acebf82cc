"""Regression tests for what the fuzzers found: plain pytest, deterministic inputs, one test per
failure, each naming the fuzzer that found it. Each failed before its fix."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import cbor2
import pytest
import trio
from fakews import LIMITS, SECRET, FakeWs, Ping, ping_handler

from nfs_gateway.backend import CreateMode, Cred, SetAttrs
from nfs_gateway.dispatch import Dispatcher
from nfs_gateway.exports import Export, ExportTable
from nfs_gateway.limits import RpcLimits
from nfs_gateway.mount import MNTPROC3_MNT, MOUNT_PROG, MountStat, make_mount_program
from nfs_gateway.nfs3 import types as t
from nfs_gateway.nfs3.client_codec import CLIENT_CODECS
from nfs_gateway.nfs3.const import NFS_PROGRAM, NFS_V3, Proc, Stat
from nfs_gateway.nfs3.program import handle_maker, make_nfs3_program
from nfs_gateway.rpc import AcceptStat, decode_reply, encode_call
from nfs_gateway.xdr import Packer
from server.fs.backend import LocalBackend
from server.rpc import handshake
from server.rpc.codec import CodecError, decode, encode
from server.rpc.connection import POLICY_VIOLATION, Connection, Counters
from server.rpc.frames import Proof, Request

CLIENT = ("127.0.0.1", 700)


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[LocalBackend]:
    async with LocalBackend(tmp_path / "fs") as be:
        yield be


def _string(data: bytes) -> bytes:
    p = Packer()
    p.pack_string(data)
    return p.get_bytes()


@pytest.mark.parametrize("path", [b"\x80", b"/\xff", b"/d/\xc3"])
async def test_mnt_of_a_path_that_is_not_utf8_is_an_error_not_a_fault(backend, path):
    """test_fuzz_rpc streams: MNT of b"\\x80" made the backend encode a surrogate-escaped
    name (UnicodeEncodeError), answered SYSTEM_ERR with a stack in the log. RFC 1813
    appendix I: the path names nothing we can mount, MNT3ERR_INVAL."""
    d = Dispatcher(
        [make_mount_program(backend, ExportTable([Export("/", 1)]), handle_maker(backend))]
    )
    reply = await d.dispatch(encode_call(7, MOUNT_PROG, 3, MNTPROC3_MNT, _string(path)), CLIENT)
    hdr, u = decode_reply(b"".join(reply))
    assert hdr.accept_stat == AcceptStat.SUCCESS
    assert u.unpack_enum() == MountStat.MNT3ERR_INVAL
    u.done()
    assert d.counters["system_err"] == 0


# --- the node RPC plane -------------------------------------------------------------------------


def test_decode_of_a_message_that_contains_itself_is_a_codec_error():
    """test_fuzz_plane (arbitrary CBOR): cbor2 decodes the value-sharing tags 28/29 into a
    cyclic structure; a OneWay whose body is itself made decode() recurse until RecursionError,
    which escaped it (only CodecError may) and crashed the connection's task."""
    cyclic = bytes.fromhex("d81c83") + b"jrpc.oneway" + bytes.fromhex("0181d81d00")
    with pytest.raises(CodecError):
        decode(cyclic)


@pytest.mark.parametrize("timeout_ms", [-1, 10**400], ids=["negative", "bignum"])
async def test_request_with_a_deadline_out_of_range_is_garbage(timeout_ms):
    """test_fuzz_plane (connection frames): Request(timeout_ms=-1) reached the handler layer,
    where trio.move_on_after(-0.001) raised ValueError (10**400 / 1000: OverflowError): logged
    with a stack and counted as a handler error, answered Failure("internal"). A deadline
    that no cancel scope can take is garbage from the peer: CodecError, the connection is
    closed as a protocol violation, no handler runs."""
    frame = encode(Request(1, 1000, Ping(1)))
    garbage = frame.replace(b"\x19\x03\xe8", cbor2.dumps(timeout_ms))
    assert garbage != frame
    with pytest.raises(CodecError):
        decode(garbage)
    ws, counters = FakeWs([garbage]), Counters()
    conn = Connection(
        ws,
        peer_id=2,
        peer_incarnation=1,
        dialer_id=2,
        limits=LIMITS,
        handlers={Ping: ping_handler},
        counters=counters,
    )
    with trio.fail_after(10):
        await conn.run()
    assert counters.handler_errors == 0 and counters.protocol_errors == 1
    assert ws.closed_with is not None and ws.closed_with[0] == POLICY_VIOLATION


@pytest.mark.parametrize("node_id", [2**64, 2**70])
async def test_handshake_with_a_node_id_beyond_u64_is_garbage(node_id):
    """test_fuzz_plane (handshake): an unauthenticated peer's Hello with node id 2**64 passed the
    checks and made the MAC's struct.pack(">QQ") raise struct.error, which escaped accept()
    (the plane counted a connection crash and logged a stack); a Challenge did the same to a
    dialer that does not know whom it dials (identify). Node ids are u64: CodecError."""
    hello = cbor2.dumps(["rpc.hello", 1, [node_id, 1, b"n" * 32, 1]])
    proof = encode(Proof(b"m" * 32))
    with pytest.raises(CodecError):
        await handshake.accept(
            FakeWs([hello, proof]), secret=SECRET, my_id=1, incarnation=7, admit=lambda p, i: None
        )
    challenge = cbor2.dumps(["rpc.challenge", 1, [node_id, 1, b"n" * 32]])
    with pytest.raises(CodecError):
        await handshake.dial(
            FakeWs([challenge]), secret=SECRET, my_id=1, incarnation=7, expected_id=None
        )


# --- NFS over UDP -------------------------------------------------------------------------------


@pytest.mark.parametrize("proc", [Proc.READDIR, Proc.READDIRPLUS])
async def test_readdir_over_udp_fits_one_datagram(backend, proc):
    """test_fuzz_rpc (records, READDIRPLUS over UDP): a budget of 1 MiB on a directory of 300
    long names got a reply of 164 KB, which server.py cannot send as a datagram: it answered
    SYSTEM_ERR and logged an error, so a UDP client could never list a large directory. READ
    was already capped at udp_xfer_max over UDP; READDIR and READDIRPLUS budgets now are too
    (RFC 1813 §3.3.16-17: a reply may hold fewer entries than the budget allows)."""
    cred, root = Cred(0, 0), await backend.export_root("/")
    big = (await backend.mkdir(cred, root, b"big", SetAttrs(mode=0o755))).fid
    for i in range(300):
        name = (b"entry-%04d-" % i).ljust(255, b"x")
        await backend.create(cred, big, name, CreateMode.UNCHECKED, SetAttrs(), None)
    export = Export("/", 1, root_squash=False)
    d = Dispatcher([make_nfs3_program(backend, ExportTable([export]))])
    fh = handle_maker(backend)(export, big)
    args = (
        t.ReaddirArgs(fh, 0, bytes(8), 1 << 20)
        if proc == Proc.READDIR
        else t.ReaddirplusArgs(fh, 0, bytes(8), 1 << 20, 1 << 20)
    )
    p = Packer()
    CLIENT_CODECS[proc][0](p, args)
    call = encode_call(9, NFS_PROGRAM, NFS_V3, proc, p.get_bytes())
    for transport, entries in (("udp", range(1, 300)), ("tcp", [300 + 2])):  # + "." and ".."
        reply = b"".join(await d.dispatch(call, CLIENT, transport))
        hdr, u = decode_reply(reply)
        assert hdr.accept_stat == AcceptStat.SUCCESS, transport
        res = CLIENT_CODECS[proc][1](u)
        assert res.status == Stat.OK and len(res.entries) in entries, (transport, len(res.entries))
        if transport == "udp":
            assert len(reply) <= RpcLimits().max_udp_reply_bytes and not res.eof
