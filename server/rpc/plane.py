"""The node-to-node plane: a WebSocket server, a dialer per known peer, one connection per pair.

Rules:
- Every connection is authenticated first (handshake.py); an unauthenticated peer is refused,
  counted in `counters.auth_failures` and in `refusals` by (peer kind, reason) (node: a peer
  node; admin: an `objcache admin` client, which proves the admin token), and logged without
  flooding: the 1st, 2nd, 4th, ... refusal from one address for one (kind, reason).
  Reasons: bad_proof (wrong secret or token), bad_identity (a node id it may not claim),
  bad_handshake (garbage or silence instead of a handshake), forbidden (an admin client sent a
  message admins may not send).
- A dialer whose proof the acceptor refused (close code AUTH_FAILED_CLOSE_CODE) says so: calls
  to that peer fail at once with AuthRefused instead of waiting for their deadline, and it
  redials only every backoff_max_s / 2 to backoff_max_s.
- One connection per pair of nodes, decided by the acceptor after authentication and before
  any traffic flows (handshake `admit`): it refuses a dial from a peer it is already connected
  to (and pings the old connection, which is closed if the peer does not answer), and in a
  simultaneous dial the node with the smaller id refuses the other's dial, so its own wins.
  A connection from a new incarnation of the peer (it restarted) replaces the old one.
- A peer's dialer runs while the peer is known: it waits while a connection is up, and otherwise
  dials with exponential backoff and full jitter from a seeded `random.Random`.
- `send()` is one-way, never blocks, and may drop (not connected, queue full): Raft messages
  tolerate loss. `call()` waits for a connection and for queue space until its deadline.
- Handlers are a table by message type: `async handler(peer_id, message) -> reply`. A handler
  answers an operating error by raising RemoteError(code, message).
- A connection task that fails unexpectedly (e.g. a bug in the WebSocket library that a peer
  can trigger) ends that connection only, logged with its stack and counted
  (`counters.connection_crashes`); the plane and its other connections run on.
- Every limit comes from RpcConfig.
"""

from __future__ import annotations

import logging
import random
import secrets
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)

from nfs_gateway.sparselog import SparseLog
from server.rpc import handshake
from server.rpc.codec import CodecError
from server.rpc.connection import (
    POLICY_VIOLATION,
    Connection,
    ConnectionLimits,
    Counters,
    Handler,
)
from server.rpc.frames import PeerUnavailable, ProtocolViolation, RemoteError
from server.rpc.handshake import AuthFailed, BadIdentity, NotAdmitted

T = TypeVar("T")

log = logging.getLogger("objcache.rpc")
ADMIN_ID_BASE = 1 << 40  # plane ids of admin clients (`objcache admin`); node ids are smaller
AUTH_FAILED_CLOSE_CODE = 4001  # application range of WebSocket close codes (RFC 6455 §7.4.2)
FORBIDDEN = "forbidden"  # RemoteError code: admin clients may not send this message
REFUSAL_LOG_ENTRIES = 1024  # (address, kind, reason) whose refusals are counted for the log


class AuthRefused(PeerUnavailable):
    """The peer refused our proof of the cluster secret (or admin token): a wrong secret."""


@dataclass(frozen=True, slots=True)
class RpcConfig:
    node_id: int
    cluster_secret: bytes
    # Admin clients (node ids >= ADMIN_ID_BASE) prove this token instead of the cluster
    # secret, and reach only the messages registered with admin=True. None: the cluster
    # secret admits them too (no separate token configured).
    admin_token: bytes | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port (tests); see RpcPlane.port
    # One WebSocket message; larger messages are chunked. 1 MiB of NFS READ or WRITE data and
    # its message header fit one frame: no reassembly copy on the data path.
    max_frame_bytes: int = (1 << 20) + (16 << 10)
    max_message_bytes: int = 256 << 20  # a reassembled streamed message
    send_queue_frames: int = 1024  # small frames queued per peer
    bulk_queue_messages: int = 4  # large messages queued per peer
    receive_queue_frames: int = 4  # trio-websocket's queue: the receive window in frames
    receive_buffer_bytes: int = 256 << 10  # one socket read
    max_concurrent_requests: int = 64  # per connection
    max_connections: int = 64  # accepted and dialed, all peers
    keepalive_interval_s: float = 2.0  # a connection silent this long is pinged
    keepalive_timeout_s: float = 4.0  # no pong in this time: the connection is closed
    handshake_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    disconnect_timeout_s: float = 1.0
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 5.0
    tls_cert_path: str | None = None  # TLS when set: this node's certificate chain (PEM)
    tls_key_path: str | None = None
    tls_ca_path: str | None = None  # the cluster CA that signs every node's certificate

    def __post_init__(self) -> None:
        assert self.node_id >= 1, "node ids are >= 1"
        assert self.max_frame_bytes > 4 * 1024, "frames must hold a chunk header and data"
        assert len(self.cluster_secret) >= 16, "the cluster secret must be at least 16 bytes"

    @property
    def limits(self) -> ConnectionLimits:
        return ConnectionLimits(self.max_frame_bytes, self.max_message_bytes,
                                self.send_queue_frames, self.bulk_queue_messages,
                                self.max_concurrent_requests, self.keepalive_interval_s,
                                self.keepalive_timeout_s)


@dataclass(slots=True)
class _Peer:
    node_id: int
    url: str | None  # None: known only because it dialed us
    conn: Connection | None = None
    changed: trio.Event = field(default_factory=trio.Event)  # set when conn is replaced
    dialer_scope: trio.CancelScope | None = None
    dialing: bool = False  # our handshake to it is in progress
    refused: bool = False  # it refused our proof on the last dial (and no connection since)

    def live(self) -> Connection | None:
        return self.conn if self.conn is not None and not self.conn.closed.is_set() else None


class RpcPlane:
    def __init__(self, config: RpcConfig, *, rng: random.Random | None = None):
        self.config = config
        self.node_id = config.node_id
        self.counters = Counters()
        # (peer kind, reason) -> refusals (objcache_rpc_auth_refusals_total); bounded: both
        # labels take a few fixed values.
        self.refusals: dict[tuple[str, str], int] = {}
        self._refusal_log = SparseLog(REFUSAL_LOG_ENTRIES)  # by (address, kind, reason)
        self.port: int | None = None  # the bound port, once run() has started
        self.incarnation = secrets.randbits(63)  # identity of this process, not seeded
        self._rng = rng or random.Random(config.node_id)
        self._handlers: dict[type, Handler] = {}
        self._admin_handlers: dict[type, Handler] = {}  # what admin clients may call
        self._peers: dict[int, _Peer] = {}
        self._connections = 0
        self._nursery: trio.Nursery | None = None
        self._server_ssl, self._client_ssl = _ssl_contexts(config)

    # ---- public API ----

    def register(self, msg_type: type, handler: Handler, *, admin: bool = False) -> None:
        """`admin`: admin clients may send it too (status, jobs, fsck's reads)."""
        assert msg_type not in self._handlers, f"{msg_type.__name__} already has a handler"
        self._handlers[msg_type] = handler
        self._admin_handlers[msg_type] = handler if admin else partial(self._forbidden, msg_type)

    async def _forbidden(self, msg_type: type, peer_id: int, _msg: Any) -> Any:
        """What an admin client gets for a message only nodes may send."""
        self.refuse("admin", FORBIDDEN, f"client {peer_id}", msg_type.__name__)
        raise RemoteError(FORBIDDEN, f"admin clients may not send {msg_type.__name__}")

    def refuse(self, kind: str, reason: str, remote: str, detail: object) -> None:
        """Count a refusal and log it without flooding (module rules)."""
        key = (kind, reason)
        self.refusals[key] = self.refusals.get(key, 0) + 1
        n = self._refusal_log.count((remote.rpartition(":")[0] or remote, kind, reason))
        if n is not None:  # the address's 1st, 2nd, 4th, 8th, ... for this (kind, reason)
            log.warning("refused %s %s (%s): %s; %d refusals from this address so far",
                        kind, remote, reason, detail, n)

    def _secret_for(self, peer_id: int) -> bytes:
        token = self.config.admin_token
        return token if peer_id >= ADMIN_ID_BASE and token is not None else (
            self.config.cluster_secret)

    def _handlers_for(self, peer_id: int) -> dict[type, Handler]:
        return self._admin_handlers if peer_id >= ADMIN_ID_BASE else self._handlers

    def add_peer(self, node_id: int, url: str) -> None:
        """Know `node_id` at `url` (ws://host:port/ or wss://...) and keep a connection to it."""
        assert node_id != self.node_id
        peer = self._peers.setdefault(node_id, _Peer(node_id, url))
        peer.url = url
        if self._nursery is not None and peer.dialer_scope is None:
            self._nursery.start_soon(self._dialer, peer)

    async def identify(self, url: str, timeout_s: float) -> int:
        """The node id of whoever serves the plane at `url` (a node joining through an address
        only): one authenticated handshake, then the connection is closed. Raises
        PeerUnavailable if it cannot be reached or authenticated in time."""
        cfg = self.config
        try:
            with trio.fail_after(timeout_s):
                async with open_websocket_url(
                        url, self._client_ssl, max_message_size=cfg.max_frame_bytes,
                        connect_timeout=cfg.connect_timeout_s,
                        disconnect_timeout=cfg.disconnect_timeout_s) as ws:
                    who = await handshake.dial(
                        ws, secret=cfg.cluster_secret, my_id=self.node_id,
                        incarnation=self.incarnation, expected_id=None)
        except (OSError, HandshakeError, ConnectionClosed, trio.TooSlowError, AuthFailed,
                ProtocolViolation, CodecError) as exc:
            raise PeerUnavailable(f"no plane answered at {url}: {exc!r}") from None
        return who[0]

    def remove_peer(self, node_id: int) -> None:
        peer = self._peers.pop(node_id, None)
        if peer is None:
            return
        if peer.dialer_scope is not None:
            peer.dialer_scope.cancel()
        if peer.conn is not None:
            peer.conn.close()

    def connected(self, node_id: int) -> bool:
        peer = self._peers.get(node_id)
        return peer is not None and peer.live() is not None

    def send(self, peer_id: int, msg: Any) -> bool:
        """One-way, never blocks; False (and counted) if dropped."""
        peer = self._peers.get(peer_id)
        conn = peer.live() if peer is not None else None
        if conn is None or not conn.send_nowait(msg):
            self.counters.dropped_messages += 1
            return False
        return True

    def peer_host(self, peer_id: int) -> str | None:
        """The host this plane dials `peer_id` at (None: a peer known only by its dial)."""
        peer = self._peers.get(peer_id)
        return urlsplit(peer.url).hostname if peer is not None and peer.url else None

    def is_connected(self, peer_id: int) -> bool:
        """A connection to the peer is up now (a call would not wait for one)."""
        peer = self._peers.get(peer_id)
        return peer is not None and peer.live() is not None

    async def call(self, peer_id: int, msg: Any, timeout_s: float) -> Any:
        """Request/response. Raises PeerUnavailable, RpcTimeout, ConnectionLost, RemoteError."""
        deadline = trio.current_time() + timeout_s
        conn = await self._wait_connected(peer_id, deadline)
        return await conn.call(msg, deadline)

    async def run(self, *, task_status: trio.TaskStatus[RpcPlane] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        cfg = self.config
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(
                serve_websocket, self._on_request, cfg.host, cfg.port, self._server_ssl,
                handler_nursery=_ContainingNursery(nursery, self),  # type: ignore[arg-type]
                message_queue_size=cfg.receive_queue_frames,
                max_message_size=cfg.max_frame_bytes,
                receive_buffer_size=cfg.receive_buffer_bytes,
                connect_timeout=cfg.connect_timeout_s,
                disconnect_timeout=cfg.disconnect_timeout_s))
            self.port = server.port
            self._nursery = nursery
            for peer in self._peers.values():
                if peer.url is not None:
                    nursery.start_soon(self._dialer, peer)
            task_status.started(self)

    # ---- connections ----

    async def _wait_connected(self, peer_id: int, deadline: float) -> Connection:
        peer = self._peers.get(peer_id)
        conn = peer.live() if peer is not None else None
        if conn is not None:  # the common case, without a cancel scope (once per call)
            return conn
        with trio.move_on_at(deadline):
            while True:
                peer = self._peers.get(peer_id)
                if peer is None:
                    raise PeerUnavailable(f"node {peer_id} is not a known peer")
                conn = peer.live()
                if conn is not None:
                    return conn
                if peer.refused:
                    raise AuthRefused(f"node {peer_id} refused our proof of the cluster "
                                      "secret (or admin token): check that it is the same")
                await peer.changed.wait()
        raise PeerUnavailable(f"no connection to node {peer_id} before the deadline")

    def _refusal(self, peer_id: int, incarnation: int) -> str | None:
        """Why the acceptor refuses an authenticated dial from `peer_id`, or None to take it."""
        peer = self._peers.get(peer_id)
        if peer is None:
            return None
        current = peer.live()
        if current is not None:
            if current.peer_incarnation != incarnation:
                return None  # the peer restarted: its old connection is dead
            assert self._nursery is not None
            self._nursery.start_soon(self._probe, current)
            return "already connected"
        if peer.dialing and self.node_id < peer_id:
            return "simultaneous dial: the smaller node id's dial wins"
        return None

    async def _probe(self, conn: Connection) -> None:
        """The peer dialed again although we hold a connection: is ours still alive?"""
        with trio.move_on_after(self.config.handshake_timeout_s):
            try:
                await conn.ws.ping()
                return
            except ConnectionClosed:
                pass  # closed meanwhile: close() below is a no-op for the cancel scope
        log.info("connection to node %d did not answer a ping; closing it", conn.peer_id)
        conn.close()

    def _adopt(self, conn: Connection) -> None:
        peer = self._peers.get(conn.peer_id)
        if peer is None:
            peer = self._peers[conn.peer_id] = _Peer(conn.peer_id, None)
        current = peer.live()
        if current is not None:
            current.close()
        peer.conn = conn
        self._changed(peer)

    def _forget(self, conn: Connection) -> None:
        conn.closed.set()
        peer = self._peers.get(conn.peer_id)
        if peer is not None and peer.conn is conn:
            peer.conn = None
            self._changed(peer)

    @staticmethod
    def _changed(peer: _Peer) -> None:
        peer.changed.set()
        peer.changed = trio.Event()

    async def _serve(self, conn: Connection) -> None:
        try:
            await conn.run()
        finally:
            self._forget(conn)

    async def _on_request(self, request: WebSocketRequest) -> None:
        # Counted from the first byte, handshakes included: a flood of unauthenticated
        # connections cannot hold more than max_connections slots (each for a bounded time).
        if self._connections >= self.config.max_connections:
            await request.reject(503, body=b"too many connections")
            return
        self._connections += 1
        try:
            await self._accept(request)
        finally:
            self._connections -= 1

    async def _accept(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        adopted: list[Connection] = []

        def admit(peer_id: int, incarnation: int) -> str | None:
            reason = self._refusal(peer_id, incarnation)
            if reason is None:
                conn = Connection(ws, peer_id=peer_id, peer_incarnation=incarnation,
                                  dialer_id=peer_id, limits=self.config.limits,
                                  handlers=self._handlers_for(peer_id),
                                  counters=self.counters)
                self._adopt(conn)
                adopted.append(conn)
            return reason

        claimed: list[int] = []

        def secret(peer_id: int) -> bytes:
            claimed.append(peer_id)
            return self._secret_for(peer_id)

        ok = await self._authenticate(ws, handshake.accept(
            ws, secret=secret, my_id=self.node_id, incarnation=self.incarnation,
            admit=admit), lambda: "admin" if claimed and claimed[0] >= ADMIN_ID_BASE else "node")
        if ok is None:
            for conn in adopted:  # the Welcome did not get through
                self._forget(conn)
            return
        self.counters.connections_accepted += 1
        await self._serve(adopted[0])

    async def _contain(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run one connection's task. Errors a peer can provoke inside the WebSocket library
        (it has had several) must not take down the plane and every other connection with it:
        they end this connection, with a stack trace in the log and a counter."""
        try:
            return await fn(*args)
        except Exception:
            self.counters.connection_crashes += 1
            log.exception("a connection task failed; that connection is closed, the node runs on")
            return None

    async def _authenticate(self, ws: WebSocketConnection, steps: Awaitable[T],
                            kind: Callable[[], str] = lambda: "node",
                            peer: _Peer | None = None) -> T | None:
        """Run one side of the handshake; None (logged, counted, closed) if it fails.
        `kind`: who the peer is (node or admin), once the handshake has said it;
        `peer`: the peer we dial (its `refused` is set when it refuses our proof)."""
        remote = _remote(ws)  # now: once the socket is closed its address is gone
        try:
            with trio.fail_after(self.config.handshake_timeout_s):
                return await steps
        except AuthFailed as exc:
            self.counters.auth_failures += 1
            reason = "bad_identity" if isinstance(exc, BadIdentity) else "bad_proof"
            self.refuse(kind(), reason, remote, exc)
            await _close(ws, AUTH_FAILED_CLOSE_CODE, "authentication failed")
        except NotAdmitted as exc:
            log.info("refused a second connection from %s: %s", remote, exc)
            await _close(ws, handshake.DUPLICATE_CLOSE_CODE, str(exc))
        except (CodecError, ProtocolViolation, trio.TooSlowError) as exc:
            self.counters.protocol_errors += 1
            self.refuse(kind(), "bad_handshake", remote, f"handshake failed: {exc or 'timeout'}")
            await _close(ws, POLICY_VIOLATION, "bad handshake")
        except ConnectionClosed as exc:
            if peer is not None and exc.reason.code == AUTH_FAILED_CLOSE_CODE:
                peer.refused = True
                self._changed(peer)
                log.warning("node %d at %s refused our proof of the cluster secret (or admin "
                            "token)", peer.node_id, remote)
            else:
                log.info("peer %s closed during the handshake: %s", remote, exc.reason)
        return None

    async def _dialer(self, peer: _Peer) -> None:
        with trio.CancelScope() as scope:
            peer.dialer_scope = scope
            backoff_s = self.config.backoff_initial_s
            while self._peers.get(peer.node_id) is peer:
                conn = peer.live()
                if conn is not None:
                    await conn.closed.wait()
                    continue
                if await self._contain(self._dial_once, peer):
                    backoff_s = self.config.backoff_initial_s
                if peer.refused:
                    # It refused our secret: it will again until an operator changes one of
                    # them. Redial slowly, not to fill its log and refusal counts.
                    backoff_s = self.config.backoff_max_s
                    await trio.sleep(self._rng.uniform(backoff_s / 2, backoff_s))
                    continue
                # Full jitter: spreads the redials of many nodes after a shared outage.
                await trio.sleep(self._rng.uniform(0, backoff_s))
                backoff_s = min(backoff_s * 2, self.config.backoff_max_s)
        peer.dialer_scope = None

    async def _dial_once(self, peer: _Peer) -> bool:
        """Dial, authenticate and serve one connection; True if it was authenticated."""
        cfg = self.config
        assert peer.url is not None
        if self._connections >= cfg.max_connections:
            return False
        self._connections += 1
        try:
            async with open_websocket_url(
                    peer.url, self._client_ssl, message_queue_size=cfg.receive_queue_frames,
                    max_message_size=cfg.max_frame_bytes,
                    receive_buffer_size=cfg.receive_buffer_bytes,
                    connect_timeout=cfg.connect_timeout_s,
                    disconnect_timeout=cfg.disconnect_timeout_s) as ws:
                peer.dialing = True
                try:
                    who = await self._authenticate(ws, handshake.dial(
                        ws, secret=cfg.cluster_secret, my_id=self.node_id,
                        incarnation=self.incarnation, expected_id=peer.node_id), peer=peer)
                finally:
                    peer.dialing = False
                if who is None:
                    return False
                peer.refused = False
                self.counters.connections_dialed += 1
                current = peer.live()
                if current is not None and current.peer_incarnation == who[1]:
                    return True  # the peer's own dial won meanwhile; drop ours unused
                conn = Connection(ws, peer_id=who[0], peer_incarnation=who[1],
                                  dialer_id=self.node_id, limits=cfg.limits,
                                  handlers=self._handlers, counters=self.counters)
                self._adopt(conn)
                await self._serve(conn)
                return True
        except (OSError, HandshakeError, ConnectionClosed, trio.TooSlowError) as exc:
            log.debug("dialing node %d at %s failed: %r", peer.node_id, peer.url, exc)
            return False
        finally:
            self._connections -= 1


class _ContainingNursery:
    """What serve_websocket gets as its handler nursery: every accepted connection runs through
    RpcPlane._contain, so an error that escapes it ends that connection, not the node."""

    def __init__(self, nursery: trio.Nursery, plane: RpcPlane):
        self._nursery, self._plane = nursery, plane

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        self._nursery.start_soon(self._plane._contain, fn, *args)


def _remote(ws: WebSocketConnection) -> str:
    """The peer's HOST:PORT."""
    try:
        remote = ws.remote
    except OSError:  # the peer already closed: getpeername() fails
        return "(closed)"
    address = getattr(remote, "address", remote)  # a string for a Unix socket
    port = getattr(remote, "port", None)
    return f"{address}:{port}" if port is not None else str(address)


async def _close(ws: WebSocketConnection, code: int, reason: str) -> None:
    with trio.move_on_after(1) as scope:
        scope.shield = True
        await ws.aclose(code, reason)


def _ssl_contexts(cfg: RpcConfig) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """Mutual TLS from config paths, or (None, None) for plain ws://.

    Peers are addressed by IP and authenticated by the HMAC handshake, so the client does not
    check host names; it does require a certificate signed by the cluster CA.
    """
    if cfg.tls_cert_path is None:
        return None, None
    assert cfg.tls_key_path is not None and cfg.tls_ca_path is not None
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=cfg.tls_ca_path)
    server.load_cert_chain(cfg.tls_cert_path, cfg.tls_key_path)
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.tls_ca_path)
    client.load_cert_chain(cfg.tls_cert_path, cfg.tls_key_path)
    client.check_hostname = False
    return server, client
