"""server/rpc/bulk.py: the bulk channel beside the plane, over real loopback sockets."""

from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass

import pytest
import trio

from nfs_gateway.backend import FileSlice
from server.rpc.bulk import (
    BulkClient,
    BulkServer,
    BulkTicket,
    BulkUnavailable,
)
from server.rpc.codec import encode, message
from server.rpc.frames import RemoteError, RpcTimeout
from server.rpc.plane import RpcConfig, RpcPlane

pytestmark = pytest.mark.integration
SECRET = b"cluster-secret-for-tests-0123456789"
MiB = 1 << 20


@message("test.bulk.read")
@dataclass(frozen=True, slots=True)
class Read:
    """Answered with `count` bytes of a pattern that starts at `offset`."""

    offset: int
    count: int
    delay_s: float = 0.0
    refuse: bool = False
    from_file: bool = False  # answered with a FileSlice of a file holding the pattern
    crash: bool = False  # the handler has a bug


@message("test.bulk.other")
@dataclass(frozen=True, slots=True)
class Other:
    pass


def pattern(offset: int, count: int) -> bytes:
    start = offset % 251
    return (bytes(range(251)) * (count // 251 + 2))[start:start + count]


class Owner:
    """A plane with a bulk server that answers Read; `peers_seen` records who asked."""

    def __init__(self, node_id: int) -> None:
        self.plane = RpcPlane(RpcConfig(node_id=node_id, cluster_secret=SECRET))
        self.bulk = BulkServer(self.plane, "127.0.0.1")
        self.bulk.serve(Read, self.on_read)
        self.peers_seen: list[int] = []
        self.slices: list[FileSlice] = []
        self.file = tempfile.TemporaryFile()  # noqa: SIM115  (closed when collected)
        self.file.write(pattern(0, 8 * MiB))
        self.file.flush()

    async def on_read(self, peer: int, r: Read) -> bytes:
        self.peers_seen.append(peer)
        if r.delay_s:
            await trio.sleep(r.delay_s)
        if r.refuse:
            raise RemoteError("not_leader", "2")
        if r.crash:
            raise ValueError("a bug")
        if r.from_file:
            self.slices.append(FileSlice(os.dup(self.file.fileno()), r.offset, r.count))
            return self.slices[-1]
        return pattern(r.offset, r.count)


async def setup(nursery: trio.Nursery, *, bulk: bool = True, **client_kw):
    """Node 2 owns the bytes (with a bulk server unless `bulk` is False); node 1 reads them."""
    reader = RpcPlane(RpcConfig(node_id=1, cluster_secret=SECRET))
    owner = Owner(2)
    await nursery.start(reader.run)
    await nursery.start(owner.plane.run)
    if bulk:
        await nursery.start(owner.bulk.run)
    reader.add_peer(2, f"ws://127.0.0.1:{owner.plane.port}/")
    owner.plane.add_peer(1, f"ws://127.0.0.1:{reader.port}/")
    client = BulkClient(reader, max_reply_bytes=client_kw.pop("max_reply_bytes", 16 * MiB),
                        **client_kw)
    return client, owner


async def test_replies_come_whole_over_one_pooled_connection(nursery):
    client, owner = await setup(nursery)
    for offset, count in [(0, 1), (5, 4 * MiB), (7, 0), (3, 100_000)] * 3:
        got = await client.call(2, Read(offset, count), timeout_s=10)
        assert bytes(got) == pattern(offset, count)
    assert client.stats["connections"] == 1 and owner.bulk.stats["connections"] == 1
    assert client.stats["requests"] == owner.bulk.stats["requests"] == 12
    assert owner.peers_seen == [1] * 12  # answered as the peer the ticket was issued to
    (sock,) = client._idle[2]
    client.forget(2)  # node 2 left the cluster: its idle connection is closed
    assert sock.fileno() == -1 and 2 not in client._idle


async def test_a_file_slice_is_sent_from_its_file_and_released(nursery):
    client, owner = await setup(nursery)
    got = await client.call(2, Read(3, 5 * MiB, from_file=True), timeout_s=10)
    assert bytes(got) == pattern(3, 5 * MiB)
    assert owner.slices[0].fd == -1  # released (its descriptor closed) once sent


async def test_a_refusal_arrives_as_the_remote_error_and_the_connection_stays(nursery):
    client, _owner = await setup(nursery)
    with pytest.raises(RemoteError) as e:
        await client.call(2, Read(0, 10, refuse=True), timeout_s=10)
    assert (e.value.code, e.value.message) == ("not_leader", "2")
    assert bytes(await client.call(2, Read(1, 10), timeout_s=10)) == pattern(1, 10)
    assert client.stats["connections"] == 1


async def test_a_failing_handler_answers_internal_and_the_server_runs_on(nursery):
    client, owner = await setup(nursery)
    with pytest.raises(RemoteError) as e:
        await client.call(2, Read(0, 10, crash=True), timeout_s=10)
    assert e.value.code == "internal" and "a bug" in e.value.message
    assert owner.bulk.stats["errors"] == 1
    assert bytes(await client.call(2, Read(1, 10), timeout_s=10)) == pattern(1, 10)


async def test_concurrent_calls_use_separate_connections(nursery):
    client, _owner = await setup(nursery, pool_per_peer=2)
    results: dict[int, bytes] = {}

    async def one(i: int) -> None:
        results[i] = bytes(await client.call(2, Read(i, MiB + i, delay_s=0.05), timeout_s=10))

    async with trio.open_nursery() as inner:
        for i in range(5):
            inner.start_soon(one, i)
    assert results == {i: pattern(i, MiB + i) for i in range(5)}
    assert client.stats["connections"] == 5
    assert len(client._idle[2]) == 2  # the pool keeps at most pool_per_peer idle


async def test_a_timeout_closes_that_connection_and_the_next_call_opens_another(nursery):
    client, _owner = await setup(nursery)
    await client.call(2, Read(0, 1), timeout_s=10)
    with pytest.raises(RpcTimeout):
        await client.call(2, Read(0, 1, delay_s=5), timeout_s=0.2)
    assert bytes(await client.call(2, Read(9, 9), timeout_s=10)) == pattern(9, 9)
    assert client.stats["connections"] == 2


async def test_a_peer_without_a_bulk_server_sends_the_caller_to_the_plane(nursery):
    client, _owner = await setup(nursery, bulk=False)
    with pytest.raises(BulkUnavailable):
        await client.call(2, Read(0, 1), timeout_s=10)
    # For a while the client does not ask again: no plane round trip per read.
    with pytest.raises(BulkUnavailable, match="for now"):
        await client.call(2, Read(0, 1), timeout_s=10)
    assert client.stats["unavailable"] == 1


async def test_a_reply_over_the_clients_bound_is_refused(nursery):
    client, _owner = await setup(nursery, max_reply_bytes=MiB)
    with pytest.raises(BulkUnavailable):
        await client.call(2, Read(0, MiB + 1), timeout_s=10)
    assert not client._idle.get(2)  # that connection was closed, not pooled


async def test_a_restarted_server_is_reached_on_a_fresh_connection(nursery):
    client, owner = await setup(nursery, bulk=False)
    async with trio.open_nursery() as first_run:
        await first_run.start(owner.bulk.run)
        await client.call(2, Read(0, 1), timeout_s=10)
        first_run.cancel_scope.cancel()  # its connections close with it
    assert len(client._idle[2]) == 1  # the client still holds its (now dead) connection
    await nursery.start(owner.bulk.run)  # the same port again
    assert bytes(await client.call(2, Read(4, 4), timeout_s=10)) == pattern(4, 4)
    assert client.stats["connections"] == 2 and client.stats["unavailable"] == 0


async def raw_connection(owner: Owner) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", owner.bulk.port)


async def closed_by_server(stream: trio.SocketStream) -> bool:
    with trio.fail_after(15):
        while True:
            try:
                if await stream.receive_some(65536) == b"":
                    return True
            except trio.BrokenResourceError:
                return True


async def test_a_connection_without_a_valid_ticket_is_refused(nursery):
    client, owner = await setup(nursery)
    stream = await raw_connection(owner)
    await stream.send_all(b"\x00" * 32)  # never issued
    assert await closed_by_server(stream)
    assert owner.bulk.stats["refused"] == 1
    # A ticket works once: the second connection presenting it is refused.
    reply = await client.plane.call(2, BulkTicket(), timeout_s=10)
    first, second = await raw_connection(owner), await raw_connection(owner)
    await first.send_all(reply.ticket)
    await second.send_all(reply.ticket)
    assert await closed_by_server(second)
    assert owner.bulk.stats["refused"] == 2
    body = encode(Read(0, 3))
    await first.send_all(struct.pack(">I", len(body)) + body)
    with trio.fail_after(10):
        got = b""
        while len(got) < 8:
            got += await first.receive_some(65536)
    assert got == b"\x00" + struct.pack(">I", 3) + pattern(0, 3)


@pytest.mark.parametrize("garbage", [
    struct.pack(">I", 1 << 30),  # a request longer than MAX_REQUEST_BYTES
    struct.pack(">I", 4) + b"\xff\xff\xff\xff",  # not CBOR
    struct.pack(">I", len(encode(Other()))) + encode(Other()),  # a type not served here
])
async def test_garbage_closes_that_connection_and_the_server_runs_on(nursery, garbage):
    client, owner = await setup(nursery)
    reply = await client.plane.call(2, BulkTicket(), timeout_s=10)
    stream = await raw_connection(owner)
    await stream.send_all(reply.ticket + garbage)
    assert await closed_by_server(stream)
    assert owner.bulk.stats["garbage"] == 1
    assert bytes(await client.call(2, Read(2, 5), timeout_s=10)) == pattern(2, 5)
