"""server/rpc: the node-to-node plane over real loopback sockets."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from functools import partial

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from server.rpc import handshake
from server.rpc.codec import encode, message
from server.rpc.frames import Batch, Chunk, PeerUnavailable, RemoteError, RpcTimeout
from server.rpc.plane import RpcConfig, RpcPlane

pytestmark = pytest.mark.integration
SECRET = b"cluster-secret-for-tests-0123456789"


@message("test.rpc.ping")
@dataclass(frozen=True)
class Ping:
    n: int


@message("test.rpc.pong")
@dataclass(frozen=True)
class Pong:
    n: int
    by: int


@message("test.rpc.note")
@dataclass(frozen=True)
class Note:
    text: str


@message("test.rpc.blob")
@dataclass(frozen=True)
class Blob:
    data: bytes


@message("test.rpc.slow")
@dataclass(frozen=True)
class Slow:
    delay_s: float


@message("test.rpc.refuse")
@dataclass(frozen=True)
class Refuse:
    pass


async def eventually(predicate, timeout_s: float = 10.0) -> None:
    """Poll a condition with a deadline (TESTING.md: no test sleeps to wait for something)."""
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.01)


class Node:
    """A plane with test handlers: pong for Ping, an inbox for Note, len for Blob, ..."""

    def __init__(self, node_id: int, secret: bytes = SECRET, **overrides):
        self.plane = RpcPlane(RpcConfig(node_id=node_id, cluster_secret=secret, **overrides))
        self.inbox_send, self.inbox = trio.open_memory_channel[tuple[int, Note]](100)
        self.cancelled_handlers = 0
        self.plane.register(Ping, self.on_ping)
        self.plane.register(Note, self.on_note)
        self.plane.register(Blob, self.on_blob)
        self.plane.register(Slow, self.on_slow)
        self.plane.register(Refuse, self.on_refuse)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.plane.port}/"

    async def on_ping(self, peer: int, msg: Ping) -> Pong:
        return Pong(msg.n, self.plane.node_id)

    async def on_note(self, peer: int, msg: Note) -> None:
        self.inbox_send.send_nowait((peer, msg))

    async def on_blob(self, peer: int, msg: Blob) -> Blob:
        return Blob(msg.data[::-1])

    async def on_slow(self, peer: int, msg: Slow) -> Pong:
        try:
            await trio.sleep(msg.delay_s)
        except trio.Cancelled:
            self.cancelled_handlers += 1
            raise
        return Pong(0, self.plane.node_id)

    async def on_refuse(self, peer: int, msg: Refuse) -> None:
        raise RemoteError("not_leader", "try node 3")


async def start(nursery: trio.Nursery, node: Node) -> Node:
    await nursery.start(node.plane.run)
    return node


async def pair(nursery: trio.Nursery, **overrides) -> tuple[Node, Node]:
    a = await start(nursery, Node(1, **overrides))
    b = await start(nursery, Node(2, **overrides))
    a.plane.add_peer(2, b.url)
    b.plane.add_peer(1, a.url)
    return a, b


async def test_request_response_both_ways(nursery):
    a, b = await pair(nursery)
    assert await a.plane.call(2, Ping(7), timeout_s=5) == Pong(7, by=2)
    assert await b.plane.call(1, Ping(8), timeout_s=5) == Pong(8, by=1)


async def test_both_dial_and_keep_one_connection(nursery):
    a, b = await pair(nursery)
    await a.plane.call(2, Ping(1), timeout_s=5)
    await b.plane.call(1, Ping(1), timeout_s=5)
    await eventually(lambda: a.plane._connections == 1 and b.plane._connections == 1)
    # Both sides hold the same connection (the one whose dial was admitted).
    assert a.plane._peers[2].conn.dialer_id == b.plane._peers[1].conn.dialer_id


async def test_one_way_messages_arrive_in_order(nursery):
    a, b = await pair(nursery)
    assert not a.plane.send(3, Note("unknown peer"))  # dropped and counted
    assert a.plane.counters.dropped_messages == 1
    await eventually(lambda: a.plane.connected(2))
    for i in range(100):
        assert a.plane.send(2, Note(f"n{i}"))
    with trio.fail_after(5):
        got = [await b.inbox.receive() for _ in range(100)]
    assert got == [(1, Note(f"n{i}")) for i in range(100)]


async def test_full_send_queue_drops_one_way_messages(nursery):
    a, _b = await pair(nursery, send_queue_frames=4)
    await eventually(lambda: a.plane.connected(2))
    results = [a.plane.send(2, Note(str(i))) for i in range(10)]  # no checkpoint in between
    assert results == [True] * 4 + [False] * 6
    assert a.plane.counters.dropped_messages == 6


async def test_64_mib_payload_streams_in_bounded_frames(nursery):
    # The receiver refuses any WebSocket message above max_frame_bytes (close 1009), so this
    # only passes if the payload went as a sequence of bounded Chunk frames.
    a, b = await pair(nursery, max_frame_bytes=1 << 20)
    payload = bytes(range(256)) * (64 * 4096)  # 64 MiB
    async with trio.open_nursery() as inner:
        small_done = trio.Event()

        async def small_calls():
            for i in range(5):
                assert await a.plane.call(2, Ping(i), timeout_s=30) == Pong(i, by=2)
            small_done.set()

        inner.start_soon(small_calls)
        reply = await a.plane.call(2, Blob(payload), timeout_s=120)
    assert reply.data == payload[::-1]
    assert small_done.is_set()
    assert a.plane.counters.protocol_errors == b.plane.counters.protocol_errors == 0


async def test_reconnect_after_the_peer_restarts(nursery):
    a = await start(nursery, Node(1))
    b = Node(2)
    async with trio.open_nursery() as b_nursery:
        await b_nursery.start(b.plane.run)
        port = b.plane.port
        a.plane.add_peer(2, b.url)
        assert await a.plane.call(2, Ping(1), timeout_s=5) == Pong(1, by=2)
        b_nursery.cancel_scope.cancel()  # node 2 goes away
    await eventually(lambda: not a.plane.connected(2))
    with pytest.raises(PeerUnavailable):
        await a.plane.call(2, Ping(2), timeout_s=0.2)
    b2 = await start(nursery, Node(2, port=port))  # the same node restarts on the same port
    assert await a.plane.call(2, Ping(3), timeout_s=10) == Pong(3, by=2)
    assert a.plane.counters.connections_dialed >= 2
    assert b2.plane.counters.connections_accepted == 1


async def test_wrong_secret_is_refused_and_counted(nursery, caplog):
    a = await start(nursery, Node(1))
    intruder = await start(nursery, Node(3, secret=b"not-the-cluster-secret-at-all"))
    intruder.plane.add_peer(1, a.url)
    await eventually(lambda: a.plane.counters.auth_failures >= 2)  # it keeps retrying
    assert not intruder.plane.connected(1) and not a.plane.connected(3)
    with pytest.raises(PeerUnavailable):
        await intruder.plane.call(1, Ping(1), timeout_s=0.3)
    assert "failed to prove the cluster secret" in caplog.text


async def authenticated_raw_client(url: str, node_id: int):
    """A hand-driven client: a real handshake, then whatever bytes the test sends."""
    ws_cm = open_websocket_url(url, max_message_size=1 << 22)
    ws = await ws_cm.__aenter__()
    await handshake.dial(ws, secret=SECRET, my_id=node_id, incarnation=1, expected_id=1)
    return ws_cm, ws


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"\xff\xfe not cbor", id="bad-cbor"),
        pytest.param(b"\x83\x64nope\x01\x80", id="unknown-tag"),
        pytest.param(encode(handshake.Hello(5, 1, b"x" * 32, 1)), id="unexpected-kind"),
        pytest.param(b"\x00" * (300 << 10), id="oversized"),
        pytest.param(encode(Chunk(1, 0, 1 << 40, b"x")), id="stream-too-large"),
        pytest.param(encode(Chunk(1, 5, 10, b"x")), id="chunk-out-of-order"),
        pytest.param(encode(Chunk(1, 0, 10, b"")), id="empty-chunk"),
        pytest.param(encode(Batch((encode(Batch(())),))), id="batch-in-batch"),
    ],
)
async def test_garbage_closes_that_connection_only(nursery, garbage):
    a = await start(nursery, Node(1, max_frame_bytes=256 << 10))
    b = await start(nursery, Node(2, max_frame_bytes=256 << 10))
    b.plane.add_peer(1, a.url)
    assert await b.plane.call(1, Ping(1), timeout_s=5) == Pong(1, by=1)
    ws_cm, ws = await authenticated_raw_client(a.url, node_id=9)
    await ws.send_message(garbage)
    with trio.fail_after(5), pytest.raises(ConnectionClosed):
        await ws.get_message()
    await ws_cm.__aexit__(None, None, None)
    assert a.plane.counters.protocol_errors == 1
    assert await b.plane.call(1, Ping(2), timeout_s=5) == Pong(2, by=1)


async def test_garbage_before_the_handshake_is_refused(nursery):
    a = await start(nursery, Node(1))
    async with open_websocket_url(a.url) as ws:
        await ws.send_message(b"\xff\xff")
        with trio.fail_after(5), pytest.raises(ConnectionClosed):
            await ws.get_message()
    assert a.plane.counters.protocol_errors == 1


async def test_deadline_cancels_the_remote_handler(nursery):
    a, b = await pair(nursery)
    start_s = trio.current_time()
    with pytest.raises(RpcTimeout):
        await a.plane.call(2, Slow(30), timeout_s=0.3)
    assert trio.current_time() - start_s < 5
    await eventually(lambda: b.cancelled_handlers == 1)
    assert await a.plane.call(2, Ping(1), timeout_s=5) == Pong(1, by=2)


async def test_each_waiting_call_times_out_at_its_own_deadline(nursery):
    # Calls wait without cancel scopes; the connection's expirer fails them (connection.py).
    # A later call with an earlier deadline must wake it, and a call's timeout must not wait
    # for the calls before it.
    a, b = await pair(nursery)
    start_s = trio.current_time()
    ended: dict[str, float] = {}

    async def call(name: str, timeout_s: float) -> None:
        with pytest.raises(RpcTimeout):
            await a.plane.call(2, Slow(30), timeout_s=timeout_s)
        ended[name] = trio.current_time() - start_s

    async with trio.open_nursery() as calls:
        calls.start_soon(call, "long", 3.0)
        await trio.sleep(0.05)
        calls.start_soon(call, "short", 0.3)
    assert 0.3 <= ended["short"] < 1.5 < 3.0 <= ended["long"] < 5
    await eventually(lambda: b.cancelled_handlers == 2)


async def test_answered_calls_do_not_pile_up_in_the_deadline_heap(nursery):
    a, _b = await pair(nursery)
    waiting = trio.Event()

    async def stuck() -> None:  # keeps an early deadline at the heap's top: nothing expires
        with pytest.raises(RpcTimeout):
            waiting.set()
            await a.plane.call(2, Slow(30), timeout_s=20)

    nursery.start_soon(stuck)
    await waiting.wait()
    for i in range(500):
        assert await a.plane.call(2, Ping(i), timeout_s=30) == Pong(i, by=2)
    conn = a.plane._peers[2].live()
    assert conn is not None and len(conn._deadlines) <= 2 * 1 + 64 + 1


async def test_remote_error_is_typed(nursery):
    a, _b = await pair(nursery)
    with pytest.raises(RemoteError) as info:
        await a.plane.call(2, Refuse(), timeout_s=5)
    assert (info.value.code, info.value.message) == ("not_leader", "try node 3")


async def test_unknown_peer_and_no_handler(nursery):
    a, _b = await pair(nursery)
    with pytest.raises(PeerUnavailable):
        await a.plane.call(5, Ping(1), timeout_s=1)
    with pytest.raises(RemoteError, match="no_handler"):
        await a.plane.call(2, Pong(1, 1), timeout_s=5)


async def test_many_concurrent_calls(nursery):
    a, _b = await pair(nursery, max_concurrent_requests=4, send_queue_frames=8)
    results: list[Pong] = []

    async def one(i: int) -> None:
        results.append(await a.plane.call(2, Ping(i), timeout_s=20))

    async with trio.open_nursery() as inner:
        for i in range(200):
            inner.start_soon(partial(one, i))
    assert sorted(r.n for r in results) == list(range(200))


# ---- optional TLS (mutual, certificates signed by the cluster CA) ----


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=objcache test CA")
    openssl("req", *ec, "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=node")
    openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "node.pem", "-days", "1")
    return {"tls_cert_path": str(d / "node.pem"), "tls_key_path": str(d / "node.key"),
            "tls_ca_path": str(d / "ca.pem")}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
async def test_tls_between_nodes(nursery, tls_files):
    a = await start(nursery, Node(1, **tls_files))
    b = await start(nursery, Node(2, **tls_files))
    a.plane.add_peer(2, b.url.replace("ws://", "wss://"))
    assert await a.plane.call(2, Ping(5), timeout_s=10) == Pong(5, by=2)
    plain = await start(nursery, Node(3))  # no certificate: the TLS handshake fails
    plain.plane.add_peer(2, b.url)
    with pytest.raises(PeerUnavailable):
        await plain.plane.call(2, Ping(1), timeout_s=0.5)


async def test_connection_limit_counts_handshakes(nursery):
    a = await start(nursery, Node(1, max_connections=1))
    async with open_websocket_url(a.url):  # holds the only slot, never authenticates
        await eventually(lambda: a.plane._connections == 1)
        b = await start(nursery, Node(2))
        b.plane.add_peer(1, a.url)
        with pytest.raises(PeerUnavailable):  # refused with 503 while the slot is taken
            await b.plane.call(1, Ping(1), timeout_s=0.5)
    assert await b.plane.call(1, Ping(2), timeout_s=10) == Pong(2, by=1)


# ---- a peer that goes silent without closing (partition, host down) ----


class FreezableProxy:
    """Forwards TCP to a port; while frozen it holds all bytes, as a partition would."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.frozen = False
        self.port = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, upstream, nursery)
            nursery.start_soon(self._pump, upstream, client, nursery)

    async def _pump(self, src, dst, nursery: trio.Nursery) -> None:
        try:
            while data := await src.receive_some(65536):
                while self.frozen:
                    await trio.sleep(0.01)
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the other side went away: so does this forwarding
        nursery.cancel_scope.cancel()


async def test_keepalive_closes_a_silent_connection_and_the_dialer_recovers(nursery):
    fast = {"keepalive_interval_s": 0.2, "keepalive_timeout_s": 0.3}
    a = await start(nursery, Node(1, **fast))
    b = await start(nursery, Node(2, **fast))
    proxy = FreezableProxy(b.plane.port)
    await nursery.start(proxy.run)
    a.plane.add_peer(2, f"ws://127.0.0.1:{proxy.port}/")
    assert await a.plane.call(2, Ping(1), timeout_s=5) == Pong(1, by=2)
    proxy.frozen = True  # no FIN, no RST: only silence
    await eventually(lambda: a.plane.counters.keepalive_timeouts >= 1)
    await eventually(lambda: not a.plane.connected(2))
    proxy.frozen = False
    assert await a.plane.call(2, Ping(2), timeout_s=10) == Pong(2, by=2)


async def test_an_unexpected_error_in_one_connection_does_not_stop_the_node(nursery, monkeypatch):
    # Stands in for a bug a peer can trigger inside the WebSocket library (see ws_compat.py).
    a = await start(nursery, Node(1))
    original, calls = RpcPlane._accept, []

    async def flaky_accept(self, request):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom in the first connection")
        await original(self, request)

    monkeypatch.setattr(RpcPlane, "_accept", flaky_accept)
    b = await start(nursery, Node(2, connect_timeout_s=0.5, handshake_timeout_s=0.5))
    b.plane.add_peer(1, a.url)
    assert await b.plane.call(1, Ping(1), timeout_s=10) == Pong(1, by=1)  # after a redial
    assert a.plane.counters.connection_crashes == 1
