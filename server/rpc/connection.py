"""One authenticated WebSocket connection to a peer: queues, a writer, a reader, pending calls.

Rules:
- One writer task owns `send_message`. It sends small frames first and interleaves the chunks of
  at most one large message between them, so a many-MiB snapshot never holds back a heartbeat.
  Small frames queued together go as one Batch frame (bounded by max_frame_bytes and
  MAX_BATCH_FRAMES): a loopback send() costs far more than encoding, so under load this is
  most of the throughput.
- Both send queues are bounded (config). A full small queue drops one-way frames (`send_nowait`
  returns False; Raft tolerates loss) and makes requests and replies wait (backpressure).
- Flow control of large messages is TCP's: trio-websocket reads the socket only while its
  receive queue (message_queue_size frames) has room, so a slow receiver stalls the sender's
  `send_message` and with it the writer task; at most one frame per chunk is in memory.
- Garbage from the peer (undecodable frame, unexpected frame kind, bad chunk) ends this
  connection with a log line and a counter; the node keeps running.
- A call waits for its reply without a cancel scope of its own: entering and leaving one
  costs about as much as encoding the request, and a Raft client makes a call per proposal
  (bench/raft.py measured 15-20 % more 3-member throughput without them). One expirer task
  per connection keeps the calls' deadlines in a heap and fails each call still waiting at
  its deadline with RpcTimeout; a call that finds the send queue full, or the expirer not
  running (the connection not yet or no longer served), waits under move_on_at instead.
- One-way handlers run inline in the reader, in arrival order, and must be quick (the Raft driver
  only queues the message). Request handlers run as tasks, at most max_concurrent_requests at
  once, each cancelled at the caller's deadline. When all slots are taken the reader stops
  reading (backpressure), which also holds back replies on this connection: a handler must not
  wait for a reply from the peer that called it (deadlines would break such a cycle).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection
from wsproto.utilities import LocalProtocolError

from server.rpc import ws_compat, ws_framing
from server.rpc.codec import CodecError, decode, encode, encode_with_bytes
from server.rpc.frames import (
    DEADLINE,
    Batch,
    Chunk,
    ConnectionLost,
    Failure,
    OneWay,
    ProtocolViolation,
    RemoteError,
    Reply,
    Request,
    RpcTimeout,
)

log = logging.getLogger("objcache.rpc")
ws_compat.install()  # before any connection exists: see ws_compat.py (a peer could crash us)
ws_framing.install()  # framing and masking at C speed: see ws_framing.py

Handler = Callable[[int, Any], Awaitable[Any]]
CHUNK_OVERHEAD_BYTES = 128  # the Chunk envelope around a slice: tag, ids, offsets, CBOR heads
BATCH_OVERHEAD_BYTES = 64  # the Batch envelope: tag, version, array heads
MAX_BATCH_FRAMES = 256
NO_HANDLER = "no_handler"  # the peer serves no such message (yet: it may be starting)
MESSAGE_TOO_BIG = 1009  # WebSocket close code (RFC 6455 §7.4.1)
POLICY_VIOLATION = 1008


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_frame_bytes: int
    max_message_bytes: int
    send_queue_frames: int
    bulk_queue_messages: int
    max_concurrent_requests: int
    keepalive_interval_s: float = 2.0  # ping a connection silent this long...
    keepalive_timeout_s: float = 4.0  # ...and close it if no pong comes back in this time


@dataclass(slots=True)
class Counters:
    """Shared by the plane and all its connections; exported as metrics later."""

    auth_failures: int = 0
    protocol_errors: int = 0
    dropped_messages: int = 0
    keepalive_timeouts: int = 0
    connection_crashes: int = 0  # unexpected errors contained to one connection
    handler_errors: int = 0
    connections_accepted: int = 0
    connections_dialed: int = 0


@dataclass(slots=True)
class _Pending:
    deadline: float
    done: trio.Event = field(default_factory=trio.Event)
    body: Any = None
    error: Exception | None = None


class Connection:
    def __init__(self, ws: WebSocketConnection, *, peer_id: int, peer_incarnation: int,
                 dialer_id: int, limits: ConnectionLimits, handlers: dict[type, Handler],
                 counters: Counters):
        self.ws = ws
        self.peer_id = peer_id
        self.peer_incarnation = peer_incarnation  # a new one means the peer restarted
        self.dialer_id = dialer_id
        self._limits = limits
        self._handlers = handlers
        self._counters = counters
        self._small: deque[bytes] = deque()
        self._bulk: deque[Iterator[bytes]] = deque()
        self._wake = trio.Event()  # something was queued
        self._space = trio.Event()  # something was dequeued
        self._pending: dict[int, _Pending] = {}
        self._deadlines: list[tuple[float, int]] = []  # heap of (deadline, request id)
        self._deadline_moved = trio.Event()  # a call's deadline is before every one watched
        self._expiring = False  # the expirer runs (module rules)
        self._ids = itertools.count(1)
        self._streams = itertools.count(1)
        self._request_slots = trio.Semaphore(limits.max_concurrent_requests)
        # A streamed message's slices so far (joined once, into bytes: cbor2 decodes a
        # bytearray about ten times slower than bytes, 0.84 against 0.08 ms per MiB).
        self._assembly: list[bytes] | None = None
        self._assembled = 0  # bytes in _assembly
        self._assembly_stream = 0
        self._scope = trio.CancelScope()
        self._last_received = trio.current_time()
        self._close_with: tuple[int, str | None] = (1000, None)  # WebSocket close code, reason
        self.closed = trio.Event()

    # ---- sending ----

    def send_nowait(self, body: Any) -> bool:
        """Queue a one-way message; False if it was dropped (closed or queue full)."""
        if self.closed.is_set():
            return False
        return self._enqueue(encode(OneWay(body)))

    async def call(self, body: Any, deadline: float) -> Any:
        request_id = next(self._ids)
        pending = self._pending[request_id] = _Pending(deadline)
        try:
            timeout_ms = max(1, math.ceil((deadline - trio.current_time()) * 1000))
            data = encode(Request(request_id, timeout_ms, body))
            if self._expiring and not self.closed.is_set() and self._enqueue(data):
                self._watch(deadline, request_id)  # the common case (module rules)
                await pending.done.wait()
            else:
                with trio.move_on_at(deadline):
                    await self._enqueue_wait(data)
                    await pending.done.wait()
        finally:
            del self._pending[request_id]
        if not pending.done.is_set():
            raise RpcTimeout(f"no reply from node {self.peer_id} before the deadline")
        if pending.error is not None:
            raise pending.error
        return pending.body

    def _watch(self, deadline: float, request_id: int) -> None:
        """Hand a waiting call's deadline to the expirer."""
        heap = self._deadlines
        if not heap or deadline < heap[0][0]:
            self._deadline_moved.set()
        heapq.heappush(heap, (deadline, request_id))
        if len(heap) > 2 * len(self._pending) + 64:
            # Mostly answered calls (dropped lazily, see _expirer): keep the waiting ones.
            self._deadlines = [(p.deadline, i) for i, p in self._pending.items()
                               if not p.done.is_set()]
            heapq.heapify(self._deadlines)

    async def _expirer(self) -> None:
        """Fail calls still waiting at their deadline (module rules). Entries of calls that
        were answered stay in the heap until they reach its top, where they are dropped, so
        the task sleeps until the first deadline of a call that still waits."""
        self._expiring = True
        try:
            while True:
                now = trio.current_time()
                heap = self._deadlines
                while heap:
                    deadline, request_id = heap[0]
                    pending = self._pending.get(request_id)
                    if pending is not None and deadline > now:
                        break
                    heapq.heappop(heap)
                    if pending is not None and not pending.done.is_set():
                        pending.error = RpcTimeout(
                            f"no reply from node {self.peer_id} before the deadline")
                        pending.done.set()
                self._deadline_moved = trio.Event()
                with trio.move_on_at(heap[0][0] if heap else math.inf):
                    await self._deadline_moved.wait()
        finally:
            self._expiring = False

    def _enqueue(self, data: bytes) -> bool:
        if len(data) <= self._limits.max_frame_bytes:
            if len(self._small) >= self._limits.send_queue_frames:
                return False
            self._small.append(data)
        else:
            if len(self._bulk) >= self._limits.bulk_queue_messages:
                return False
            self._bulk.append(self._chunks(data))
        self._wake.set()
        return True

    async def _enqueue_wait(self, data: bytes) -> None:
        while self.closed.is_set() or not self._enqueue(data):
            if self.closed.is_set():  # nobody would ever fail a call queued now
                raise ConnectionLost(f"connection to node {self.peer_id} closed")
            await self._space.wait()

    def _chunks(self, data: bytes) -> Iterator[bytes]:
        # Lazily: only the chunk being sent is materialized.
        stream_id = next(self._streams)
        step = self._limits.max_frame_bytes - CHUNK_OVERHEAD_BYTES
        view = memoryview(data)
        for offset in range(0, len(data), step):
            yield encode_with_bytes(Chunk(stream_id, offset, len(data), b""),
                                    view[offset:offset + step])

    async def _writer(self) -> None:
        current: Iterator[bytes] | None = None
        while True:
            data: bytes | None = None
            if self._small:
                data = self._take_small()
            elif current is not None:
                data = next(current, None)
                if data is None:
                    current = None
                    continue
            elif self._bulk:
                current = self._bulk.popleft()
                continue
            else:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            self._space.set()
            self._space = trio.Event()
            await self.ws.send_message(data)

    def _take_small(self) -> bytes:
        """The next small frame, or a Batch of all that fit in one frame."""
        first = self._small.popleft()
        budget = self._limits.max_frame_bytes - BATCH_OVERHEAD_BYTES - len(first)
        if not self._small or len(self._small[0]) + 8 > budget:
            return first
        frames = [first]
        while (self._small and len(frames) < MAX_BATCH_FRAMES
               and len(self._small[0]) + 8 <= budget):  # 8: the CBOR head of one item, at most
            frame = self._small.popleft()
            budget -= len(frame) + 8
            frames.append(frame)
        return encode(Batch(tuple(frames)))

    # ---- receiving ----

    async def _reader(self, nursery: trio.Nursery) -> None:
        while True:
            data = await self.ws.get_message()
            self._last_received = trio.current_time()
            if not isinstance(data, bytes):
                raise ProtocolViolation("text frame")
            frame = decode(data)
            if isinstance(frame, Batch):
                for inner in frame.frames:
                    await self._dispatch(decode(inner), nursery)
                continue
            if isinstance(frame, Chunk):
                frame = self._assemble(frame)
                if frame is None:
                    continue
            await self._dispatch(frame, nursery)

    def _assemble(self, chunk: Chunk) -> Any:
        if chunk.offset == 0 and self._assembly is None:
            if not 0 < chunk.total <= self._limits.max_message_bytes:
                raise ProtocolViolation(f"streamed message of {chunk.total} bytes")
            self._assembly, self._assembled = [], 0
            self._assembly_stream = chunk.stream_id
        parts = self._assembly
        if (parts is None or chunk.stream_id != self._assembly_stream or not chunk.data
                or chunk.offset != self._assembled
                or self._assembled + len(chunk.data) > chunk.total):
            raise ProtocolViolation(f"chunk out of order (stream {chunk.stream_id}, "
                                    f"offset {chunk.offset})")
        parts.append(chunk.data)
        self._assembled += len(chunk.data)
        if self._assembled < chunk.total:
            return None
        self._assembly = None
        frame = decode(b"".join(parts))
        if isinstance(frame, Chunk | Batch):
            raise ProtocolViolation(f"a {type(frame).__name__} inside a chunk")
        return frame

    async def _dispatch(self, frame: Any, nursery: trio.Nursery) -> None:
        kind = type(frame)
        if kind is OneWay:
            await self._handle_one_way(frame.body)
        elif kind is Request:
            # Backpressure: stop reading when saturated. A free slot is taken without a
            # scheduling round (acquire() always yields once; the reader yields per message).
            try:
                self._request_slots.acquire_nowait()
            except trio.WouldBlock:
                await self._request_slots.acquire()
            nursery.start_soon(self._handle_request, frame)
        elif kind is Reply or kind is Failure:
            pending = self._pending.get(frame.id)
            if pending is None:
                return  # the caller gave up (deadline) before the reply came
            if kind is Reply:
                pending.body = frame.body
            else:
                pending.error = RemoteError(frame.code, frame.message)
            pending.done.set()
        else:
            raise ProtocolViolation(f"unexpected {kind.__name__} after the handshake")

    async def _handle_one_way(self, body: Any) -> None:
        handler = self._handlers.get(type(body))
        if handler is None:
            log.warning("node %d sent %s, which has no handler; dropped", self.peer_id,
                        type(body).__name__)
            return
        try:
            await handler(self.peer_id, body)
        except RemoteError as exc:  # a refusal by the handler (which logged it): none to answer
            log.debug("%s from node %d refused: %s", type(body).__name__, self.peer_id, exc)
        except Exception:  # a bug in one handler must not take down the connection
            self._counters.handler_errors += 1
            log.exception("handler for %s from node %d failed", type(body).__name__,
                          self.peer_id)

    async def _handle_request(self, request: Request) -> None:
        try:
            reply = await self._run_handler(request)
            await self._enqueue_wait(encode(reply))
        except ConnectionLost:
            return  # nobody is left to answer
        finally:
            self._request_slots.release()

    async def _run_handler(self, request: Request) -> Reply | Failure:
        handler = self._handlers.get(type(request.body))
        if handler is None:
            return Failure(request.id, NO_HANDLER, type(request.body).__name__)
        try:
            # A bare CancelScope, not fail_after (a generator context manager): this runs once
            # per request and fail_after's wrapping showed up in profiles of the Raft leader.
            with trio.move_on_after(request.timeout_ms / 1000):
                return Reply(request.id, await handler(self.peer_id, request.body))
            return Failure(request.id, DEADLINE, "the handler ran past the caller's deadline")
        except RemoteError as exc:
            return Failure(request.id, exc.code, exc.message)
        except Exception as exc:  # reported to the caller and logged; the node keeps serving
            self._counters.handler_errors += 1
            log.exception("handler for %s from node %d failed", type(request.body).__name__,
                          self.peer_id)
            return Failure(request.id, "internal", repr(exc))

    # ---- lifetime ----

    def close(self) -> None:
        self._scope.cancel()

    async def run(self) -> None:
        """Serve until the peer closes, garbage arrives, or close() is called."""
        with self._scope:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._guard, self._writer, nursery)
                    nursery.start_soon(self._guard, self._keepalive, nursery)
                    nursery.start_soon(self._expirer)
                    await self._guard(self._reader, nursery, nursery)
            finally:
                self.closed.set()
                self._space.set()
                for pending in self._pending.values():
                    pending.error = ConnectionLost(f"connection to node {self.peer_id} closed")
                    pending.done.set()
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await self.ws.aclose(*self._close_with)

    async def _keepalive(self) -> None:
        """A peer that vanished without a FIN or RST (host down, partition) leaves a connection
        that looks alive; a WebSocket ping on a silent connection finds out, so the dialer can
        redial. Raft traffic (heartbeats every tick) keeps busy connections from being pinged."""
        interval = self._limits.keepalive_interval_s
        while True:
            await trio.sleep(interval)
            if trio.current_time() - self._last_received < interval:
                continue
            with trio.move_on_after(self._limits.keepalive_timeout_s):
                await self.ws.ping()
                self._last_received = trio.current_time()
                continue
            self._counters.keepalive_timeouts += 1
            log.warning("node %d did not answer a ping in %.1f s; closing its connection",
                        self.peer_id, self._limits.keepalive_timeout_s)
            return  # _guard cancels the connection

    async def _guard(self, task: Callable[..., Awaitable[None]], nursery: trio.Nursery,
                     *args: Any) -> None:
        """Run the reader or writer; any end of it ends the whole connection."""
        try:
            await task(*args)
        except ConnectionClosed as exc:
            reason = exc.reason
            if reason is not None and reason.code == MESSAGE_TOO_BIG:
                self._counters.protocol_errors += 1
                log.warning("node %d: oversized frame; connection closed", self.peer_id)
        except LocalProtocolError as exc:
            # wsproto refuses a send that raced with the close handshake: the connection is
            # closing anyway (see ws_compat.py for the same race inside trio-websocket).
            log.debug("node %d: send during close: %s", self.peer_id, exc)
        except (CodecError, ProtocolViolation) as exc:
            self._counters.protocol_errors += 1
            log.warning("node %d sent garbage (%s); closing its connection", self.peer_id, exc)
            # Closed by run() once the writer and keepalive are stopped: a frame they sent
            # after our Close frame would be refused by wsproto.
            self._close_with = (POLICY_VIOLATION, str(exc)[:100])
        finally:
            nursery.cancel_scope.cancel()
