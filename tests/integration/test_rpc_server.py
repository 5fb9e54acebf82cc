"""RpcServer over real loopback sockets: RFC 5531 errors, record marking, limits, shutdown.

The server runs in-process with MOUNT (over the real single-node backend, LocalBackend on a
temporary directory), portmap, and a small test program. After each kind of malformed input, a
new connection must still get NULL answered.
"""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing
from rpcclient import RpcClient, UdpRpcClient, authsys, u32, xdr_string

from nfs_gateway.backend import FileSlice
from nfs_gateway.drc import DuplicateRequestCache
from nfs_gateway.exports import Export, ExportTable
from nfs_gateway.limits import RpcLimits
from nfs_gateway.mount import MOUNT_PROG, MountStat, make_mount_program
from nfs_gateway.nfs3.program import handle_maker
from nfs_gateway.portmap import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    PMAP_PROG,
    Mapping,
    make_portmap_program,
    unpack_pmaplist,
)
from nfs_gateway.program import CallContext, Procedure, Program, decode_void, encode_void
from nfs_gateway.record import LAST_FRAGMENT
from nfs_gateway.rpc import MSG_DENIED, AcceptStat, AuthStat, OpaqueAuth, encode_call
from nfs_gateway.server import Listener, RpcServer
from nfs_gateway.xdr import Packer, Unpacker
from server.fs.backend import LocalBackend

pytestmark = pytest.mark.integration

TEST_PROG = 0x2000_0001  # the user-defined range (RFC 5531 §7.3)
MiB = 1 << 20
LIMITS = RpcLimits(max_connections=64, max_in_flight_per_connection=4, shutdown_grace_s=5.0)


class _Unsendable:
    """Claims 8 KiB but is no buffer: sending it fails with TypeError."""

    def __len__(self) -> int:
        return 8192


class ToyProgram:
    """NULL, ECHO opaque, BLOCK until released, BUMP (non-idempotent), BIG n bytes, FAIL."""

    def __init__(self) -> None:
        self.gate = trio.Event()
        self.blocked = 0
        self.bumps = 0
        self.slice_file: Path | None = None  # SLICE sends from this file
        self.slices: list[FileSlice] = []

    async def null(self, ctx: CallContext, _args: None) -> None:
        return None

    async def echo(self, ctx: CallContext, data: memoryview) -> memoryview:
        return data

    async def block(self, ctx: CallContext, v: int) -> int:
        self.blocked += 1
        await self.gate.wait()
        return v

    async def bump(self, ctx: CallContext, _args: None) -> int:
        self.bumps += 1
        return self.bumps

    async def big(self, ctx: CallContext, n: int) -> bytes:
        return bytes(range(256)) * (n // 256) + bytes(n % 256)

    async def fail(self, ctx: CallContext, _args: None) -> None:
        raise RuntimeError("deliberate handler fault")

    def slice_nowait(self, ctx: CallContext, count: int) -> FileSlice:
        """`count` bytes of slice_file from offset 1 (past its end: zeros), as a FileSlice."""
        assert self.slice_file is not None
        piece = FileSlice(os.open(self.slice_file, os.O_RDONLY), 1, count)
        self.slices.append(piece)
        return piece

    async def slice(self, ctx: CallContext, count: int) -> FileSlice:
        return self.slice_nowait(ctx, count)

    def unsendable_nowait(self, ctx: CallContext, _args: None) -> object:
        return _Unsendable()

    async def unsendable(self, ctx: CallContext, _args: None) -> object:
        return _Unsendable()

    def program(self) -> Program:
        uint_in, uint_out = Unpacker.unpack_uint, Packer.pack_uint
        procs = {
            0: Procedure("NULL", decode_void, self.null, encode_void),
            1: Procedure(
                "ECHO", lambda u: u.unpack_opaque_view(2 * MiB), self.echo, Packer.pack_opaque_ref
            ),
            2: Procedure("BLOCK", uint_in, self.block, uint_out),
            3: Procedure("BUMP", decode_void, self.bump, uint_out, idempotent=False),
            4: Procedure("BIG", uint_in, self.big, Packer.pack_opaque_ref),
            5: Procedure("FAIL", decode_void, self.fail, encode_void),
            6: Procedure(
                "SLICE", uint_in, self.slice, Packer.pack_opaque_ref, True, self.slice_nowait
            ),
            # A reply that cannot be sent: a bug in the send path, on the fast path.
            7: Procedure(
                "UNSENDABLE",
                decode_void,
                self.unsendable,
                Packer.pack_opaque_ref,
                True,
                self.unsendable_nowait,
            ),
        }
        return Program(TEST_PROG, "test", {1: procs})


def make_server(
    backend: LocalBackend,
    test_prog: ToyProgram,
    limits: RpcLimits = LIMITS,
    portmap_udp: bool = False,
    answer_inline: bool = False,
) -> RpcServer:
    exports = ExportTable([Export("/", 1, insecure=True)])
    mount = make_mount_program(backend, exports, handle_maker(backend))
    server: RpcServer | None = None
    portmap = make_portmap_program(lambda: server.mappings())
    server = RpcServer(
        [
            Listener("127.0.0.1", 0, (mount, test_prog.program())),
            Listener("127.0.0.1", 0, (portmap,), udp=portmap_udp),
        ],
        limits,
        DuplicateRequestCache(),
        answer_inline=answer_inline,
    )
    return server


@pytest.fixture
def prog() -> ToyProgram:
    return ToyProgram()


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[LocalBackend]:
    async with LocalBackend(tmp_path / "fs") as be:
        yield be


@pytest.fixture
async def server(nursery, backend, prog):
    srv = make_server(backend, prog)
    await nursery.start(srv.run)
    yield srv
    prog.gate.set()
    srv.shutdown()


def port(server: RpcServer, i: int = 0) -> int:
    return server.bound[i][1]


async def assert_null_answers(server: RpcServer) -> None:
    async with await RpcClient.connect("127.0.0.1", port(server)) as c:
        hdr, body = await c.call(TEST_PROG, 1, 0)
        assert hdr.accept_stat == AcceptStat.SUCCESS
        body.done()


# --- Malformed input ----------------------------------------------------------------------------


async def test_truncated_fragment_then_eof_closes(server):
    async with await RpcClient.connect("127.0.0.1", port(server)) as c:
        await c.send(struct.pack(">I", LAST_FRAGMENT | 100) + bytes(10))
        await c.stream.send_eof()
        assert await c.recv_record() is None
    await assert_null_answers(server)


async def test_fragment_over_the_limit_closes(server):
    async with await RpcClient.connect("127.0.0.1", port(server)) as c:
        await c.send(struct.pack(">I", LAST_FRAGMENT | (2 * MiB)) + bytes(64))
        assert await c.recv_record() is None
    await assert_null_answers(server)


async def test_record_over_the_limit_in_many_fragments_closes(server):
    async with await RpcClient.connect("127.0.0.1", port(server)) as c:
        call = encode_call(1, TEST_PROG, 1, 1, xdr_string(bytes(LIMITS.max_record_bytes)))
        try:
            await c.send_record(call, 64 * 1024)
        except trio.BrokenResourceError:
            pass  # the server closed while we were still sending: what we expect
        assert await c.recv_record() is None
    await assert_null_answers(server)


@pytest.mark.parametrize(
    "args",
    [u32(100) + b"abc", u32(0xFFFF_FFFF), b"\0\0"],
    ids=["length-past-end", "huge-length", "truncated-length"],
)
async def test_xdr_lengths_past_the_end_are_garbage_args(server, args):
    async with await RpcClient.connect("127.0.0.1", port(server)) as c:
        hdr, _ = await c.call(TEST_PROG, 1, 1, args)
        assert hdr.accept_stat == AcceptStat.GARBAGE_ARGS
        hdr, _ = await c.call(TEST_PROG, 1, 0)  # the connection stays usable
        assert hdr.accept_stat == AcceptStat.SUCCESS


async def test_unknown_program_version_procedure(server):
    async with await RpcClient.connect("127.0.0.1", port(server)) as c:
        assert (await c.call(TEST_PROG + 1, 1, 0))[0].accept_stat == AcceptStat.PROG_UNAVAIL
        hdr, _ = await c.call(MOUNT_PROG, 1, 0)
        assert (hdr.accept_stat, hdr.low, hdr.high) == (AcceptStat.PROG_MISMATCH, 3, 3)
        assert (await c.call(TEST_PROG, 1, 99))[0].accept_stat == AcceptStat.PROC_UNAVAIL
        assert (await c.call(PMAP_PROG, 2, 0))[0].accept_stat == AcceptStat.PROG_UNAVAIL
    await assert_null_answers(server)


@pytest.mark.parametrize(
    "auth",
    [
        OpaqueAuth(99, b""),
        OpaqueAuth(1, b"\0" * 12),
        OpaqueAuth(1, authsys().body + b"\0\0\0\0"),
    ],
    ids=["bad-flavor", "bad-authsys-body", "authsys-trailing-bytes"],
)
async def test_garbage_credentials_are_auth_badcred(server, auth):
    async with await RpcClient.connect("127.0.0.1", port(server)) as c:
        hdr, _ = await c.call(TEST_PROG, 1, 0, auth=auth)
        assert (hdr.reply_stat, hdr.auth_stat) == (MSG_DENIED, AuthStat.AUTH_BADCRED)
    await assert_null_answers(server)


async def test_oversized_credential_body_is_auth_badcred(server):
    async with await RpcClient.connect("127.0.0.1", port(server)) as c:
        record = u32(77, 0, 2, TEST_PROG, 1, 0, 1, 404) + bytes(404) + u32(0, 0)
        await c.send_record(record)
        hdr_words = struct.unpack(">5I", (await c.recv_record())[:20])
        assert hdr_words == (77, 1, MSG_DENIED, 1, AuthStat.AUTH_BADCRED)
    await assert_null_answers(server)


async def test_rpc_version_3_is_rpc_mismatch(server):
    async with await RpcClient.connect("127.0.0.1", port(server)) as c:
        hdr, _ = await c.call(TEST_PROG, 1, 0, rpcvers=3)
        assert (hdr.reply_stat, hdr.reject_stat, hdr.low, hdr.high) == (MSG_DENIED, 0, 2, 2)
    await assert_null_answers(server)


async def test_a_fault_while_sending_closes_only_that_connection(server, caplog):
    async with await RpcClient.connect("127.0.0.1", port(server)) as c:
        _xid, record = await c.call_raw(TEST_PROG, 1, 7)
        assert record is None  # closed, not answered
    assert "internal error" in caplog.text
    await assert_null_answers(server)


async def test_handler_fault_is_system_err(server, caplog):
    async with await RpcClient.connect("127.0.0.1", port(server)) as c:
        assert (await c.call(TEST_PROG, 1, 5))[0].accept_stat == AcceptStat.SYSTEM_ERR
    assert "deliberate handler fault" in caplog.text
    assert server.stats()["system_err"] == 1
    await assert_null_answers(server)


async def test_a_thousand_connections(server):
    clients = [await RpcClient.connect("127.0.0.1", port(server)) for _ in range(1000)]
    try:
        # The excess was accepted and closed at once: the last one sees EOF.
        assert await clients[-1].recv_record() is None
        assert server.refused_connections >= 1000 - LIMITS.max_connections
        assert server.connection_count <= LIMITS.max_connections
        assert server.stats()["refused_connections"] == server.refused_connections
    finally:
        for c in clients:
            await c.aclose()
    with trio.fail_after(10):
        while server.connection_count:  # the server sees the EOFs
            await trio.sleep(0.01)
    await assert_null_answers(server)


# --- Concurrency, limits, large payloads --------------------------------------------------------


async def test_replies_complete_out_of_order(server, prog):
    async with await RpcClient.connect("127.0.0.1", port(server)) as c:
        await c.send_record(encode_call(1, TEST_PROG, 1, 2, u32(11)))  # blocks
        await c.send_record(encode_call(2, TEST_PROG, 1, 0))
        assert struct.unpack(">I", (await c.recv_record())[:4])[0] == 2
        prog.gate.set()
        assert struct.unpack(">I", (await c.recv_record())[:4])[0] == 1


async def test_in_flight_limit_stops_reading(server, prog):
    limit = LIMITS.max_in_flight_per_connection
    async with await RpcClient.connect("127.0.0.1", port(server)) as c:
        for xid in range(limit + 3):
            await c.send_record(encode_call(xid, TEST_PROG, 1, 2, u32(xid)))
        with trio.fail_after(5):
            while prog.blocked < limit:
                await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked(0.05)  # let it (wrongly) start more
        assert prog.blocked == limit
        prog.gate.set()
        xids = {struct.unpack(">I", (await c.recv_record())[:4])[0] for _ in range(limit + 3)}
        assert xids == set(range(limit + 3))


async def test_large_request_and_reply(server):
    data = bytes(range(256)) * (MiB // 256)
    async with await RpcClient.connect("127.0.0.1", port(server)) as c:
        hdr, body = await c.call(TEST_PROG, 1, 1, xdr_string(data))
        assert hdr.accept_stat == AcceptStat.SUCCESS
        assert body.unpack_opaque(2 * MiB) == data
        hdr, body = await c.call(TEST_PROG, 1, 4, u32(MiB + 3))
        assert len(body.unpack_opaque(2 * MiB)) == MiB + 3


async def test_file_slices_are_sent_with_sendfile_and_released(server, prog, tmp_path):
    """A reply with a FileSlice (READ data in the page cache) carries the file's bytes, zeros
    past its end, and its padding; the slice's descriptor is closed afterwards."""
    content = os.urandom(3 * MiB)
    prog.slice_file = tmp_path / "data"
    prog.slice_file.write_bytes(content)
    async with await RpcClient.connect("127.0.0.1", port(server)) as c:
        for count in (2 * MiB + 1, 3 * MiB + 2):  # the second runs 3 bytes past the end
            hdr, body = await c.call(TEST_PROG, 1, 6, u32(count))
            assert hdr.accept_stat == AcceptStat.SUCCESS
            expected = content[1 : 1 + count]
            assert body.unpack_opaque(4 * MiB) == expected + bytes(count - len(expected))
            body.done()
    assert [s.fd for s in prog.slices] == [-1, -1]


async def test_multi_fragment_call(server):
    async with await RpcClient.connect("127.0.0.1", port(server)) as c:
        await c.send_record(encode_call(5, TEST_PROG, 1, 1, xdr_string(b"x" * 1001)), 7)
        record = await c.recv_record()
        assert record[-1004:] == b"x" * 1001 + b"\0\0\0"


async def test_retransmitted_non_idempotent_call_is_answered_from_the_cache(server, prog):
    call = encode_call(4242, TEST_PROG, 1, 3)
    async with await RpcClient.connect("127.0.0.1", port(server)) as c:
        await c.send_record(call)
        first = await c.recv_record()
    async with await RpcClient.connect("127.0.0.1", port(server)) as c:  # reconnect, resend
        await c.send_record(call)
        assert await c.recv_record() == first
    assert prog.bumps == 1


# --- Portmap and MOUNT over TCP and UDP ---------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_mount_mnt_export_umnt(server, backend, transport):
    cls = RpcClient if transport == "tcp" else UdpRpcClient
    async with await cls.connect("127.0.0.1", port(server)) as c:
        hdr, body = await c.call(MOUNT_PROG, 3, 1, xdr_string(b"/"), auth=authsys())
        assert body.unpack_enum() == MountStat.MNT3_OK
        root = await backend.export_root("/")
        assert body.unpack_opaque(64) == handle_maker(backend)(Export("/", 1), root)
        _, body = await c.call(MOUNT_PROG, 3, 5)
        assert body.unpack_bool() and body.unpack_string(1024) == b"/"
        _, body = await c.call(MOUNT_PROG, 3, 1, xdr_string(b"/missing"))
        assert body.unpack_enum() == MountStat.MNT3ERR_NOENT
        hdr, body = await c.call(MOUNT_PROG, 3, 3, xdr_string(b"/"))
        assert hdr.accept_stat == AcceptStat.SUCCESS
        body.done()


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_portmap_getport_and_dump(nursery, backend, prog, transport):
    srv = make_server(backend, prog, portmap_udp=True)
    await nursery.start(srv.run)
    cls = RpcClient if transport == "tcp" else UdpRpcClient
    nfs_port, pm_port = port(srv, 0), port(srv, 1)
    async with await cls.connect("127.0.0.1", pm_port) as c:
        _, body = await c.call(PMAP_PROG, 2, 3, u32(MOUNT_PROG, 3, IPPROTO_TCP, 0))
        assert body.unpack_uint() == nfs_port
        _, body = await c.call(PMAP_PROG, 2, 4)
        maps = unpack_pmaplist(body)
    assert Mapping(MOUNT_PROG, 3, IPPROTO_UDP, nfs_port) in maps
    assert Mapping(PMAP_PROG, 2, IPPROTO_TCP, pm_port) in maps
    assert Mapping(TEST_PROG, 1, IPPROTO_TCP, nfs_port) in maps
    srv.shutdown()


async def test_udp_errors_and_reply_size_limit(server):
    async with await UdpRpcClient.connect("127.0.0.1", port(server)) as c:
        assert (await c.call(TEST_PROG, 1, 99))[0].accept_stat == AcceptStat.PROC_UNAVAIL
        assert (await c.call(TEST_PROG, 1, 1, b"\0"))[0].accept_stat == AcceptStat.GARBAGE_ARGS
        hdr, _ = await c.call(TEST_PROG, 1, 4, u32(70000))  # too large for one datagram
        assert hdr.accept_stat == AcceptStat.SYSTEM_ERR
        await c.send(b"\0\0")  # no xid: dropped, not answered
        assert (await c.call(TEST_PROG, 1, 0))[0].accept_stat == AcceptStat.SUCCESS


# --- Lifecycle ----------------------------------------------------------------------------------


@pytest.mark.parametrize("inline", [False, True], ids=["task", "answer_inline"])
async def test_graceful_shutdown_answers_in_flight_requests(backend, prog, inline):
    """A call in flight at shutdown is answered, then the connection closes. With
    answer_inline the only connection's lone call runs in the read loop (the connection's next
    call waits for it): shutdown lets it finish too."""
    srv = make_server(backend, prog, answer_inline=inline)
    async with trio.open_nursery() as nursery:
        await nursery.start(srv.run)
        async with await RpcClient.connect("127.0.0.1", port(srv)) as c:
            await c.send_record(encode_call(9, TEST_PROG, 1, 2, u32(5)))
            with trio.fail_after(5):
                while not prog.blocked:
                    await trio.sleep(0.01)
            (conn,) = srv._conns
            assert conn.answering == inline
            if inline:
                await c.send_record(encode_call(10, TEST_PROG, 1, 0))  # NULL: read after BLOCK
                await trio.testing.wait_all_tasks_blocked(0.05)
            srv.shutdown()
            with trio.fail_after(5):  # shutdown has begun once new clients are refused
                while await connects(port(srv)):
                    pass
            prog.gate.set()
            reply = await c.recv_record()
            assert reply is not None and reply[:4] == u32(9) and reply[-4:] == u32(5)
            assert await c.recv_record() is None  # then the connection closes (NULL unread)
    assert srv.connection_count == 0


async def test_calls_that_are_not_lone_run_in_tasks_with_answer_inline(nursery, backend, prog):
    srv = make_server(backend, prog, answer_inline=True)
    await nursery.start(srv.run)
    async with await RpcClient.connect("127.0.0.1", port(srv)) as c:
        # Two calls in one send: neither is lone, so both run at once.
        await c.send(b"".join(_record(encode_call(x, TEST_PROG, 1, 2, u32(x))) for x in (1, 2)))
        with trio.fail_after(5):
            while prog.blocked < 2:
                await trio.sleep(0.01)
        (conn,) = srv._conns
        assert not conn.answering
        prog.gate.set()
        xids = sorted([(await c.recv_record())[:4] for _ in range(2)])
        assert xids == [u32(1), u32(2)]
    srv.shutdown()


def _record(body: bytes) -> bytes:
    return struct.pack(">I", LAST_FRAGMENT | len(body)) + body


async def connects(p: int) -> bool:
    try:
        await (await RpcClient.connect("127.0.0.1", p)).aclose()
    except OSError:
        return False
    return True


async def test_idle_connections_are_closed(nursery, backend, prog):
    srv = make_server(backend, prog, RpcLimits(idle_timeout_s=0.2))
    await nursery.start(srv.run)
    async with await RpcClient.connect("127.0.0.1", port(srv)) as c:
        assert (await c.call(TEST_PROG, 1, 0))[0].accept_stat == AcceptStat.SUCCESS
        assert await c.recv_record(timeout_s=5) is None
    srv.shutdown()


async def test_in_flight_byte_budget_spans_connections(nursery, backend, prog):
    call_bytes = len(encode_call(0, TEST_PROG, 1, 2, u32(0)))
    srv = make_server(backend, prog, RpcLimits(max_in_flight_bytes=3 * call_bytes))
    await nursery.start(srv.run)
    clients = [await RpcClient.connect("127.0.0.1", port(srv)) for _ in range(2)]
    for c in clients:
        for xid in range(3):
            await c.send_record(encode_call(xid, TEST_PROG, 1, 2, u32(xid)))
    with trio.fail_after(5):
        while prog.blocked < 3:
            await trio.sleep(0.01)
    await trio.testing.wait_all_tasks_blocked(0.05)  # let it (wrongly) start more
    assert prog.blocked == 3
    prog.gate.set()
    for c in clients:
        assert {struct.unpack(">I", (await c.recv_record())[:4])[0] for _ in range(3)} == {0, 1, 2}
        await c.aclose()
    srv.shutdown()


async def test_a_connection_with_a_call_in_flight_is_not_idle(nursery, backend, prog):
    srv = make_server(backend, prog, RpcLimits(idle_timeout_s=0.1))
    await nursery.start(srv.run)
    async with await RpcClient.connect("127.0.0.1", port(srv)) as c:
        await c.send_record(encode_call(3, TEST_PROG, 1, 2, u32(3)))
        with trio.fail_after(5):
            while not prog.blocked:
                await trio.sleep(0.01)
        await trio.sleep(0.5)  # several idle periods pass while the call runs
        prog.gate.set()
        reply = await c.recv_record()
        assert reply is not None and reply[-4:] == u32(3)
    srv.shutdown()


def test_busy_poll_limit_may_be_zero_but_is_bounded():
    assert RpcLimits(busy_poll_us=0).busy_poll_us == 0
    for bad in (-1, 10_001):
        with pytest.raises(ValueError):
            RpcLimits(busy_poll_us=bad)


async def test_calls_are_answered_without_busy_polling(nursery, backend, prog):
    srv = make_server(backend, prog, RpcLimits(busy_poll_us=0))
    await nursery.start(srv.run)
    for _ in range(3):
        await assert_null_answers(srv)
    srv.shutdown()
