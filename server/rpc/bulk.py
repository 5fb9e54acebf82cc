"""The bulk channel: chunk bytes between nodes over plain TCP, beside the WebSocket plane.

Why: a chunk that another node's gateway reads crossed the plane as a CBOR message in
WebSocket frames, so the owner encoded and framed each MiB and the gateway buffered,
reassembled and decoded it again (about 1.3 ms of the gateway's CPU per MiB). Here the owner
sends the bytes as they are (with sendfile from the chunk file when a handler gives a
FileSlice) and the gateway reads them with recv_into into the buffer its NFS reply then
sends (3 nodes, 2 GiB read through the node that holds a third of it: 5.0-5.2 s over the
plane, about 4 s over this channel).

Rules:
- A BulkClient (the gateway) opens connections to a BulkServer (a chunk's owner) and sends one
  request at a time on each; idle connections are pooled per peer (at most `pool_per_peer`).
- Admission rides on the plane's authentication: the client asks the server over the plane
  (BulkTicket) for its bulk port and a one-time ticket, and a new connection starts with that
  ticket. A wrong, used or expired ticket closes the connection (counted as refused). Tickets
  are random (`secrets`), live TICKET_TTL_S, at most MAX_TICKETS are outstanding, and each is
  bound to the peer that asked (its requests are answered as that peer's).
- Wire: request = u32 length | a codec message (a type the server serves, at most
  MAX_REQUEST_BYTES); reply = u8 status | u32 length | body. OK: the body is the reply's
  bytes; ERROR: the body is a codec BulkError and the client raises RemoteError, as a plane
  call would.
- Garbage (a bad length, bad CBOR, a type not served) closes that connection with a log line;
  the server runs on. A reply longer than the client's `max_reply_bytes` closes the connection.
  A handler that fails unexpectedly answers ERROR "internal" (logged with its stack), one that
  runs past HANDLER_TIMEOUT_S answers ERROR "deadline", as over the plane; anything else that
  escapes a connection's task ends that connection only, logged and counted.
- Only idempotent requests (reads) travel here: the client sends a request again on a fresh
  connection when a pooled one turns out dead, and a caller that gets BulkUnavailable (the
  channel cannot carry it now: no bulk server there, or it failed) sends it over the plane.
  A connection the client was cancelled or timed out on is closed (its reply's state is
  unknown); a timeout raises RpcTimeout as a plane call would.
- The node leaves the channel off when the plane uses TLS: these bytes would travel in clear.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket as stdlib_socket
import struct
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import trio

from nfs_gateway.backend import FileSlice
from nfs_gateway.sendpath import send_buffers
from nfs_gateway.sparselog import SparseLog
from server.rpc.codec import CodecError, decode, encode, message
from server.rpc.frames import DEADLINE, RemoteError, RpcError, RpcTimeout
from server.rpc.plane import RpcPlane

log = logging.getLogger("objcache.bulk")

TICKET_BYTES = 32
TICKET_TTL_S = 30.0
MAX_TICKETS = 1024
MAX_REQUEST_BYTES = 64 << 10
TICKET_WAIT_S = 10.0  # a new connection must present its ticket within this
HANDLER_TIMEOUT_S = 60.0  # the server's bound on one answer (the client gives up sooner)
OK, ERROR = 0, 1
NOT_SERVING = "bulk_not_serving"  # RemoteError code of a BulkTicket while the server is down
_LENGTH = struct.Struct(">I")
_REPLY = struct.Struct(">BI")

# What a server's handler gives back: the reply's bytes, or a FileSlice sent from its file.
BulkHandler = Callable[[int, Any], Awaitable[bytes | bytearray | memoryview | FileSlice]]


@message("bulk.ticket")
@dataclass(frozen=True, slots=True)
class BulkTicket:
    """Over the plane: a one-time ticket to open a bulk connection to the called node."""


@message("bulk.ticket_reply")
@dataclass(frozen=True, slots=True)
class BulkTicketReply:
    port: int
    ticket: bytes


@message("bulk.error")
@dataclass(frozen=True, slots=True)
class BulkError:
    code: str
    message: str


class BulkUnavailable(RpcError):
    """The bulk channel cannot carry this request now: send it over the plane instead."""


class _Garbage(Exception):
    """The peer broke the wire format: close the connection."""


async def _recv_into(sock: stdlib_socket.socket, view: memoryview) -> None:
    """Fill `view` from the non-blocking `sock`; EOFError if the peer closes first."""
    got = 0
    while got < len(view):
        try:
            n = sock.recv_into(view[got:])
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            continue
        if n == 0:
            raise EOFError("the peer closed the connection")
        got += n


async def _recv(sock: stdlib_socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    await _recv_into(sock, memoryview(buf))
    return buf


def _take_socket(sock: trio.socket.SocketType) -> stdlib_socket.socket:
    """The stdlib socket behind a trio socket (sendpath.py writes to stdlib sockets)."""
    raw = stdlib_socket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    raw.setblocking(False)
    raw.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
    return raw


class BulkServer:
    """Answers bulk requests on HOST:PORT (0: any free port; `port` is the bound one)."""

    def __init__(self, plane: RpcPlane, host: str, port: int = 0, *,
                 max_connections: int = 256) -> None:
        self.plane = plane
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self._handlers: dict[type, BulkHandler] = {}
        self._tickets: OrderedDict[bytes, tuple[int, float]] = OrderedDict()
        self._connections = 0
        self._refusals = SparseLog(1024)
        self._serving = False
        self.stats = {"connections": 0, "requests": 0, "bytes": 0, "refused": 0, "garbage": 0,
                      "errors": 0}
        plane.register(BulkTicket, self._on_ticket)

    def serve(self, kind: type, handler: BulkHandler) -> None:
        """Answer requests of `kind` with `handler(peer id, request)`, which returns the bytes
        or raises RemoteError."""
        self._handlers[kind] = handler

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]  # a restart keeps the port
        self._serving = True
        try:
            task_status.started()
            await trio.serve_listeners(self._accepted, listeners)
        finally:
            self._serving = False

    async def _on_ticket(self, peer: int, msg: BulkTicket) -> BulkTicketReply:
        if not self._serving:
            raise RemoteError(NOT_SERVING, "no bulk server runs here now")
        now = trio.current_time()
        while self._tickets and (len(self._tickets) >= MAX_TICKETS
                                 or next(iter(self._tickets.values()))[1] <= now):
            self._tickets.popitem(last=False)  # the oldest: expired, or over the bound
        ticket = secrets.token_bytes(TICKET_BYTES)
        self._tickets[ticket] = (peer, now + TICKET_TTL_S)
        return BulkTicketReply(self.port, ticket)

    def _admit(self, ticket: bytes) -> int | None:
        """The peer a ticket was issued to, once (None: not issued, used or expired)."""
        issued = self._tickets.pop(bytes(ticket), None)
        if issued is None or issued[1] <= trio.current_time():
            return None
        return issued[0]

    async def _accepted(self, stream: trio.SocketStream) -> None:
        sock = _take_socket(stream.socket)
        with sock:
            if self._connections >= self.max_connections:
                self._refuse(sock, "too many bulk connections")
                return
            self._connections += 1
            try:
                await self._serve(sock)
            except Exception:  # a bug must end this connection, not the node
                self.stats["errors"] += 1
                log.exception("a bulk connection's task failed; that connection is closed")
            finally:
                self._connections -= 1

    def _refuse(self, sock: stdlib_socket.socket, reason: str) -> None:
        self.stats["refused"] += 1
        address = _address(sock)
        count = self._refusals.count((address.rpartition(":")[0], reason))
        if count is not None:
            log.warning("bulk connection from %s refused (%d so far): %s", address, count,
                        reason)

    async def _serve(self, sock: stdlib_socket.socket) -> None:
        peer = None
        with trio.move_on_after(TICKET_WAIT_S):
            with contextlib.suppress(EOFError, OSError):
                peer = self._admit(await _recv(sock, TICKET_BYTES))
        if peer is None:
            self._refuse(sock, "no valid ticket")
            return
        self.stats["connections"] += 1
        try:
            while True:
                try:
                    head = await _recv(sock, _LENGTH.size)
                except EOFError:
                    return  # the client closed between requests
                await self._answer(sock, peer, await self._request(sock, head))
        except _Garbage as e:
            self.stats["garbage"] += 1
            log.warning("bulk connection from node %d closed: %s", peer, e)
        except (EOFError, OSError) as e:
            log.debug("bulk connection from node %d ended: %r", peer, e)

    async def _request(self, sock: stdlib_socket.socket, head: bytearray) -> Any:
        (n,) = _LENGTH.unpack(head)
        if n > MAX_REQUEST_BYTES:
            raise _Garbage(f"a request of {n} bytes (at most {MAX_REQUEST_BYTES})")
        try:
            request = decode(bytes(await _recv(sock, n)))
        except CodecError as e:
            raise _Garbage(f"a request that does not decode: {e}") from None
        if type(request) not in self._handlers:
            raise _Garbage(f"a request this channel does not serve: {type(request).__name__}")
        return request

    async def _answer(self, sock: stdlib_socket.socket, peer: int, request: Any) -> None:
        data: bytes | bytearray | memoryview | FileSlice
        try:
            with trio.move_on_after(HANDLER_TIMEOUT_S) as scope:
                data = await self._handlers[type(request)](peer, request)
            if scope.cancelled_caught:
                raise RemoteError(DEADLINE, "the handler ran too long")
            status = OK
        except RemoteError as e:
            data, status = encode(BulkError(e.code, e.message)), ERROR
        except Exception as e:  # reported to the caller and logged; the server runs on
            self.stats["errors"] += 1
            log.exception("bulk handler for %s from node %d failed", type(request).__name__,
                          peer)
            data, status = encode(BulkError("internal", repr(e))), ERROR
        n = len(data)
        self.stats["requests"] += 1
        self.stats["bytes"] += n
        # A FileSlice goes out with sendfile and is released once sent (sendpath.py).
        await send_buffers(sock, [_REPLY.pack(status, n), data])


class BulkClient:
    """Sends requests over bulk connections to peers of `plane` (module rules)."""

    def __init__(self, plane: RpcPlane, *, max_reply_bytes: int, pool_per_peer: int = 8,
                 retry_after_s: float = 30.0) -> None:
        self.plane = plane
        self.max_reply_bytes = max_reply_bytes
        self.pool_per_peer = pool_per_peer
        self.retry_after_s = retry_after_s
        self._idle: dict[int, list[stdlib_socket.socket]] = {}
        self._off_until: dict[int, float] = {}  # peers without a channel, until then
        self.stats = {"requests": 0, "bytes": 0, "connections": 0, "unavailable": 0}

    async def call(self, peer: int, request: Any, timeout_s: float) -> memoryview:
        """The reply's bytes. RemoteError as the server's handler raised it, RpcTimeout after
        `timeout_s`, BulkUnavailable when the caller should use the plane."""
        if self._off_until.get(peer, 0.0) > trio.current_time():
            raise BulkUnavailable(f"no bulk channel to node {peer} for now")
        body = encode(request)
        with trio.move_on_after(timeout_s):
            try:
                pooled = self._idle.get(peer)
                while pooled:  # a pooled connection may have died idle: then a fresh one
                    with contextlib.suppress(EOFError, OSError):
                        return await self._exchange(peer, pooled.pop(), body)
                return await self._exchange(peer, await self._open(peer), body)
            except (EOFError, OSError, _Garbage) as e:
                self._unavailable(peer, e)
        raise RpcTimeout(f"bulk request to node {peer}: no reply in {timeout_s} s")

    def forget(self, peer: int) -> None:
        """Close the idle connections to `peer` (it left the cluster)."""
        for sock in self._idle.pop(peer, []):
            sock.close()
        self._off_until.pop(peer, None)

    def close(self) -> None:
        for peer in list(self._idle):
            self.forget(peer)

    async def _open(self, peer: int) -> stdlib_socket.socket:
        host = self.plane.peer_host(peer)
        if host is None:
            self._unavailable(peer, "its address is not known")
        try:
            reply = await self.plane.call(peer, BulkTicket(), TICKET_WAIT_S)
        except RemoteError as e:  # an older node, or one with the channel off
            self._unavailable(peer, e)
        sock = trio.socket.socket(trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET)
        try:
            await sock.connect((host, reply.port))
        except OSError as e:
            sock.close()
            self._unavailable(peer, e)
        raw = _take_socket(sock)
        self.stats["connections"] += 1
        try:
            await send_buffers(raw, [reply.ticket])
        except BaseException:
            raw.close()
            raise
        return raw

    def _unavailable(self, peer: int, why: object) -> NoReturn:
        """Raise BulkUnavailable; the plane carries this peer's requests for a while."""
        self.stats["unavailable"] += 1
        self._off_until[peer] = trio.current_time() + self.retry_after_s
        log.info("bulk channel to node %d unavailable for %.0f s (%s): using the plane",
                 peer, self.retry_after_s, why)
        raise BulkUnavailable(f"bulk channel to node {peer}: {why}")

    async def _exchange(self, peer: int, sock: stdlib_socket.socket, body: bytes) -> memoryview:
        """One request and its reply on `sock`; the socket goes back to the pool after a
        whole reply and is closed on anything else (module rules)."""
        try:
            await send_buffers(sock, [_LENGTH.pack(len(body)), body])
            status, n = _REPLY.unpack(await _recv(sock, _REPLY.size))
            if n > self.max_reply_bytes:
                raise _Garbage(f"a reply of {n} bytes (at most {self.max_reply_bytes})")
            data = memoryview(await _recv(sock, n))
        except BaseException:
            sock.close()
            raise
        pool = self._idle.setdefault(peer, [])
        if len(pool) < self.pool_per_peer:
            pool.append(sock)
        else:
            sock.close()
        if status != OK:
            try:
                error = decode(bytes(data))
            except CodecError as e:
                raise _Garbage(f"an error reply that does not decode: {e}") from None
            if not isinstance(error, BulkError):
                raise _Garbage(f"an error reply of type {type(error).__name__}")
            raise RemoteError(error.code, error.message)
        self.stats["requests"] += 1
        self.stats["bytes"] += n
        return data


def _address(sock: stdlib_socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "(closed)"
    return f"{host}:{port}"
