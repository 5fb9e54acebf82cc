"""The trio RPC server: TCP (record marking, RFC 5531 §11) and UDP listeners around Dispatcher.

    server = RpcServer([Listener("0.0.0.0", 2049, (nfs, mount))], RpcLimits(), drc)
    bound = await nursery.start(server.run)   # [(host, port)] per listener
    ...
    server.shutdown()                           # e.g. on SIGTERM; run() then returns

Rules:
- Generic: a list of Listeners, each (host, port, programs) on TCP and/or UDP. NFS and MOUNT
  share one; portmap has its own. Port 0 binds a free port, the same number for TCP and UDP.
- Limits on everything (RpcLimits): record size, connections (the excess is accepted and closed
  at once), requests in flight per connection and request bytes in flight over all connections
  (at either limit a connection stops reading its socket: the kernel's buffers and TCP flow
  control push back; nothing queues without bound), UDP requests in flight, UDP reply size,
  idle time (one watchdog task, not a timer per receive).
- Replies on one connection may complete out of order, but each is written whole under the
  connection's send lock, without copying (sendpath.py): READ data is never copied into a
  joined buffer (small replies are joined; that is cheaper).
- The per-request path is kept free of scheduling rounds: a connection's socket is a plain
  non-blocking socket used with trio.lowlevel.wait_readable/wait_writable (only when it would
  block), a call that can be answered from memory (Dispatcher.dispatch_nowait) is answered by the
  read loop itself, and only the others get a task. The read loop still yields every few
  receives, so a client that keeps its socket full cannot starve the other tasks.
- Large records (WRITE) are received straight into their final buffer (RecordDecoder.direct_view).
- With a single client connected and nothing else to do, the read loop busy-polls the socket
  for a few tens of µs after a reply before sleeping (RpcLimits.busy_poll_us, limits.py, says why);
  so does a task that answered that client's call.
- Graceful shutdown: `shutdown()` stops accepting and reading; requests already read are answered
  (within `shutdown_grace_s`), then connections close and `run` returns.
"""

from __future__ import annotations

import errno
import logging
import select
import socket as stdlib_socket
import struct
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from nfs_gateway.backend import FileSlice
from nfs_gateway.dispatch import Dispatcher, Pending
from nfs_gateway.drc import DuplicateRequestCache
from nfs_gateway.limits import ByteBudget, RpcLimits
from nfs_gateway.opstats import OpStats
from nfs_gateway.portmap import IPPROTO_TCP, IPPROTO_UDP, Mapping, mappings_for
from nfs_gateway.program import Program
from nfs_gateway.record import (
    Buffer,
    RecordDecoder,
    RecordError,
    encode_record,
)
from nfs_gateway.rpc import AcceptStat, accepted_reply
from nfs_gateway.sendpath import release_slices, send_buffers, send_some

try:  # private, so optional (tasks_runnable)
    from trio._core._run import GLOBAL_RUN_CONTEXT as _RUN_CONTEXT
except ImportError:  # pragma: no cover - another trio
    _RUN_CONTEXT = None

log = logging.getLogger("objcache.rpc.server")

_RECEIVES_PER_YIELD = 8  # the read loop lets other tasks run at least this often
_BIND_ATTEMPTS = 20
_ACCEPT_BACKOFF_S = 0.1
# accept(2) errors about one connection that died in the backlog, and about exhausted resources.
_ACCEPT_TRANSIENT = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN})
_ACCEPT_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_Sock = trio.socket.SocketType


@dataclass(frozen=True, slots=True)
class Listener:
    host: str
    port: int  # 0: a free port, the same for TCP and UDP
    programs: tuple[Program, ...]
    tcp: bool = True
    udp: bool = True


class _Connection:
    __slots__ = (
        "answering",
        "in_flight",
        "last_active",
        "limit",
        "nursery",
        "peer",
        "poller",
        "read_scope",
        "send_lock",
        "sock",
        "stop_asked",
    )

    def __init__(self, sock: stdlib_socket.socket, peer: tuple[str, int], limit: int) -> None:
        self.sock = sock  # non-blocking; waited on with trio.lowlevel.wait_readable/writable
        self.poller = select.poll()
        self.poller.register(sock, select.POLLIN)
        self.peer = peer
        self.limit = limit
        self.read_scope = trio.CancelScope()  # cancelled to stop reading: shutdown or idle
        # A call answered in the read loop (RpcServer answer_inline) is finished before the
        # loop stops: stop() then only asks, and the loop cancels its scope after the answer.
        self.answering = False
        self.stop_asked = False
        # Held from the first byte of a reply to its last. A Semaphore, not a Lock: a reply that
        # the read loop starts may be finished by another task.
        self.send_lock = trio.Semaphore(1)
        self.in_flight = trio.Semaphore(limit)
        self.nursery: trio.Nursery | None = None
        self.last_active = trio.current_time()

    def stop_reading(self) -> None:
        """Stop reading requests (shutdown, idle); what was read is still answered."""
        if self.answering:
            self.stop_asked = True
        else:
            self.read_scope.cancel()

    def idle_since(self, now: float) -> float:
        """Seconds without a request received or in flight."""
        busy = self.in_flight.value < self.limit
        return 0.0 if busy else now - self.last_active


def tasks_runnable() -> int:
    """trio.lowlevel.current_statistics().tasks_runnable, from trio's run queue when this trio
    has one where we look: building the whole statistics counts every descriptor in epoll
    (about 2 µs, asked several times per call). Other trio versions get the public figure;
    tests/unit/test_rpc_server_poll.py checks that the two agree."""
    runq = getattr(getattr(_RUN_CONTEXT, "runner", None), "runq", None)
    if runq is None:
        return trio.lowlevel.current_statistics().tasks_runnable
    return len(runq)


def _poll_briefly(poller: select.poll, seconds: float) -> bool:
    """Poll (without sleeping) for up to `seconds`; whether the socket became readable. Each
    poll(0) releases the GIL, so worker threads are not held up."""
    deadline = time.perf_counter() + seconds
    while True:
        if poller.poll(0):
            return True
        if time.perf_counter() >= deadline:
            return False


def _framed(reply: list[Buffer], join_below: int) -> list[Buffer]:
    framed = encode_record(reply)
    if len(framed) > 2 and sum(len(b) for b in framed) < join_below:
        return [b"".join(framed)]
    return framed


class RpcServer:
    """Serves Programs over TCP and UDP. Start with `await nursery.start(server.run)`."""

    def __init__(
        self,
        listeners: Sequence[Listener],
        limits: RpcLimits | None = None,
        drc: DuplicateRequestCache | None = None,
        *,
        answer_inline: bool = False,
    ) -> None:
        """`answer_inline`: the programs answer every call from local state, within an fsync
        or a disk read (no network waits): a lone call may then be answered in the read loop
        (_may_answer_inline), where a call that waited long would hold up the connection's
        next ones."""
        self.listeners = tuple(listeners)
        self.limits = limits = limits or RpcLimits()
        self.drc = drc
        # The clock times each call for its procedure's latency (opstats.py).
        self.dispatchers = [
            Dispatcher(lst.programs, drc, time.perf_counter) for lst in self.listeners
        ]
        self.bound: list[tuple[str, int]] = []  # (host, port) per listener, once running
        self.refused_connections = 0
        self._conns: set[_Connection] = set()
        self._stop = trio.Event()
        self._budget = ByteBudget(limits.max_in_flight_bytes)
        self._poll_s = limits.busy_poll_us / 1e6
        self._answer_inline = answer_inline

    @property
    def connection_count(self) -> int:
        return len(self._conns)

    def op_stats(self) -> list[OpStats]:
        """What each procedure did, over every listener (for metrics)."""
        return [st for d in self.dispatchers for st in d.ops.values()]

    def stats(self) -> dict[str, int]:
        """Counters and gauges for metrics: connections, calls and rejections by kind, DRC.
        Callable from another thread (a scrape): each dispatcher's counters are copied in one
        step first, so a key added meanwhile cannot break the iteration."""
        out: Counter[str] = Counter()
        for d in self.dispatchers:
            out.update(dict(d.counters))
        out["connections"] = len(self._conns)
        out["refused_connections"] = self.refused_connections
        out["in_flight_bytes"] = self._budget.used
        if self.drc is not None:
            out["drc_entries"] = len(self.drc)
            out["drc_bytes"] = self.drc.nbytes
            out["drc_uncached"] = self.drc.uncached
        return dict(out)

    def mappings(self) -> list[Mapping]:
        """Portmap entries for everything served (empty until `run` has bound)."""
        out: list[Mapping] = []
        for lst, (_host, port) in zip(self.listeners, self.bound, strict=False):
            protos = [p for p, on in ((IPPROTO_TCP, lst.tcp), (IPPROTO_UDP, lst.udp)) if on]
            out += mappings_for(lst.programs, port, protos)
        return out

    def shutdown(self) -> None:
        """Stop accepting and reading; answer what was read; then `run` returns."""
        self._stop.set()

    async def run(
        self, *, task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind every listener, report the bound (host, port) list, serve until shutdown."""
        bound: list[tuple[_Sock | None, _Sock | None, int]] = []
        try:
            for lst in self.listeners:
                bound.append(await _bind(lst))
            async with trio.open_nursery() as conns:
                async with trio.open_nursery() as accepting:
                    for i, (tcp, udp, port) in enumerate(bound):
                        self.bound.append((self.listeners[i].host, port))
                        if tcp is not None:
                            accepting.start_soon(self._accept_loop, tcp, i, conns)
                        if udp is not None:
                            accepting.start_soon(self._udp_loop, udp, i, conns)
                    accepting.start_soon(self._idle_watchdog)
                    task_status.started(list(self.bound))
                    await self._stop.wait()
                    accepting.cancel_scope.cancel()
                for tcp, _udp, _port in bound:
                    if tcp is not None:
                        tcp.close()  # new clients are refused now, not left in the backlog
                log.info("shutting down: %d connections", len(self._conns))
                for conn in self._conns:
                    conn.stop_reading()
                conns.cancel_scope.deadline = trio.current_time() + self.limits.shutdown_grace_s
        finally:
            for tcp, udp, _port in bound:
                for s in (tcp, udp):
                    if s is not None:
                        s.close()

    # --- TCP ----------------------------------------------------------------------------------

    async def _accept_loop(
        self, lsock: trio.socket.SocketType, index: int, conns: trio.Nursery
    ) -> None:
        while True:
            try:
                sock, addr = await lsock.accept()
            except OSError as e:
                if e.errno in _ACCEPT_TRANSIENT:
                    continue
                if e.errno not in _ACCEPT_EXHAUSTED:
                    raise
                log.error("accept failed: %s; backing off", e)
                await trio.sleep(_ACCEPT_BACKOFF_S)
                continue
            if len(self._conns) >= self.limits.max_connections:
                self._refuse(sock, addr)
                continue
            try:
                # Replies are written whole; do not let Nagle hold back their last segment.
                sock.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
            except OSError as e:  # the client already reset the connection
                log.debug("%s: %s", addr[:2], e)
                sock.close()
                continue
            raw = stdlib_socket.socket(fileno=sock.detach())
            raw.setblocking(False)
            conn = _Connection(raw, addr[:2], self.limits.max_in_flight_per_connection)
            self._conns.add(conn)
            conns.start_soon(self._serve_connection, conn, self.dispatchers[index])

    async def _idle_watchdog(self) -> None:
        """Stop reading connections idle for idle_timeout_s (checked 4 times per timeout)."""
        idle_s = self.limits.idle_timeout_s
        while True:
            await trio.sleep(idle_s / 4)
            now = trio.current_time()
            for conn in list(self._conns):
                if conn.idle_since(now) >= idle_s:
                    log.info("%s: idle for %.0f s, closing", conn.peer, idle_s)
                    conn.stop_reading()

    def _refuse(self, sock: trio.socket.SocketType, addr: tuple) -> None:
        sock.close()
        self.refused_connections += 1
        n = self.refused_connections
        # One line per refusal would let a flood fill the log: the 1st, 10th, then every 100th.
        if n == 1 or n % 100 == 0 or n == 10:
            log.warning(
                "refused connection from %s: %d connections is the limit (%d refused so far)",
                addr[:2],
                self.limits.max_connections,
                n,
            )

    async def _serve_connection(self, conn: _Connection, dispatcher: Dispatcher) -> None:
        try:
            async with trio.open_nursery() as nursery:
                conn.nursery = nursery
                with conn.read_scope:
                    try:
                        await self._read_loop(conn, dispatcher, nursery)
                    except Exception:
                        # A bug in the RPC layer: lose this connection, not the whole server.
                        log.exception("%s: internal error; closing the connection", conn.peer)
                        nursery.cancel_scope.cancel()
                # EOF, idle or shutdown: requests already read are still answered.
        finally:
            self._conns.discard(conn)
            conn.sock.close()

    async def _read_loop(
        self, conn: _Connection, dispatcher: Dispatcher, nursery: trio.Nursery
    ) -> None:
        decoder = RecordDecoder(self.limits.max_record_bytes)
        # One receive buffer per connection, reused: the decoder copies out what it keeps.
        buf = bytearray(self.limits.recv_chunk_bytes)
        view = memoryview(buf)
        sock = conn.sock
        receives = 0
        drained = False  # the last receive emptied the socket: wait before the next one
        while True:
            if drained:
                if not (self._may_poll(conn) and _poll_briefly(conn.poller, self._poll_s)):
                    await trio.lowlevel.wait_readable(sock)
                receives = 0
            direct = decoder.direct_view()
            target = view if direct is None else direct
            try:
                nbytes = sock.recv_into(target)
            except BlockingIOError:
                drained = True
                continue
            except OSError as e:
                log.debug("%s: receive failed: %s", conn.peer, e)
                return
            # A short receive means the socket is empty now: a request-reply client sends the
            # next call only after our reply, so trying again would just cost a syscall.
            drained = nbytes < len(target)
            # Idle connections are closed by _idle_watchdog: a timer per receive costs more.
            conn.last_active = trio.current_time()
            if not nbytes:
                return
            try:
                records = (
                    decoder.feed(view[:nbytes]) if direct is None else decoder.received(nbytes)
                )
            except RecordError as e:
                log.warning("%s: %s; closing", conn.peer, e)
                nursery.cancel_scope.cancel()
                return
            # A lone call: the client sent nothing after it, so a request-reply client waits.
            lone = drained and len(records) == 1
            for record in records:
                if not await self._take(conn, dispatcher, record, nursery, lone):
                    return
                if conn.stop_asked:
                    conn.read_scope.cancel()
                    await trio.lowlevel.checkpoint()  # raises Cancelled: reading stops here
            receives += 1
            if receives >= _RECEIVES_PER_YIELD:
                receives = 0
                await trio.lowlevel.checkpoint()

    def _may_poll(self, conn: _Connection) -> bool:
        """Whether to busy-poll `conn` (RpcLimits.busy_poll_us): it is the only connection,
        none of its calls is in flight, no reply is being sent (a task finishing a large one
        waits for the socket, and polling would hold it up) and no task waits to run."""
        return self._poll_s > 0 and self._alone(conn, calls=0)

    def _alone(self, conn: _Connection, calls: int) -> bool:
        """`conn` is the only connection, has `calls` calls in flight, sends nothing, and no
        task waits to run: its client waits for us, and nothing else does."""
        return (
            len(self._conns) == 1
            and conn.in_flight.value == conn.limit - calls
            and conn.send_lock.value == 1
            and tasks_runnable() == 0
        )

    def _may_answer_inline(self, conn: _Connection, lone: bool) -> bool:
        """Whether the read loop answers a call itself rather than in a task (answer_inline):
        a lone call of the only connection, none other in flight (this one holds a slot),
        nothing being sent, no task waiting to run. A task, and the read loop's sleep in
        epoll until the next call, cost about 50 µs per call on our VMs (meta1: creates and
        removes 11-20 % faster inline)."""
        return self._answer_inline and lone and self._alone(conn, calls=1)

    async def _take(
        self, conn: _Connection, dispatcher: Dispatcher, record: bytearray, nursery: trio.Nursery,
        lone: bool = False,
    ) -> bool:
        """Answer `record` at once if it can be, else start a task for it (or answer it here:
        _may_answer_inline). False: stop reading (the connection failed)."""
        try:
            reply = dispatcher.dispatch_nowait(record, conn.peer, "tcp")
        except Exception:
            log.exception("%s: internal error; closing the connection", conn.peer)
            nursery.cancel_scope.cancel()
            return False
        if type(reply) is Pending:
            # Backpressure: at either limit this connection stops reading.
            try:
                conn.in_flight.acquire_nowait()
            except trio.WouldBlock:
                await conn.in_flight.acquire()
            try:
                held = await self._budget.acquire(len(record))
            except BaseException:
                conn.in_flight.release()
                raise
            if self._may_answer_inline(conn, lone):
                conn.answering = True
                try:
                    await self._answer(conn, dispatcher, record, reply, held)
                finally:
                    conn.answering = False
            else:
                nursery.start_soon(self._answer, conn, dispatcher, record, reply, held)
            return True
        if reply is None:
            return True
        framed = _framed(reply, self.limits.join_below_bytes)
        try:
            await _acquire(conn.send_lock)  # nothing is sent yet: cancelling here is harmless
        except BaseException:
            release_slices(framed)
            raise
        try:
            rest = send_some(conn.sock, framed)
        except OSError as e:
            conn.send_lock.release()
            release_slices(framed)
            log.debug("%s: send failed: %s; closing", conn.peer, e)
            nursery.cancel_scope.cancel()
            return False
        if rest:
            # The socket is full: a task finishes this reply (holding the send lock) so that
            # shutdown does not cut it; reading waits for the lock before the next reply.
            nursery.start_soon(self._finish_send, conn, rest)
        else:
            conn.send_lock.release()
        return True

    async def _finish_send(self, conn: _Connection, rest: list[Buffer]) -> None:
        try:
            while rest:
                await trio.lowlevel.wait_writable(conn.sock)
                rest = send_some(conn.sock, rest)
        except OSError as e:
            log.debug("%s: send failed: %s; closing", conn.peer, e)
            assert conn.nursery is not None
            conn.nursery.cancel_scope.cancel()
        finally:
            release_slices(rest)
            conn.send_lock.release()

    async def _answer(
        self,
        conn: _Connection,
        dispatcher: Dispatcher,
        record: bytearray,
        pending: Pending,
        held: int,
    ) -> None:
        try:
            reply = await dispatcher.finish(pending, record, conn.peer, "tcp")
            if reply is None:
                return
            framed = _framed(reply, self.limits.join_below_bytes)
            try:
                await _acquire(conn.send_lock)
            except BaseException:
                release_slices(framed)
                raise
            try:
                await send_buffers(conn.sock, framed)
            finally:
                conn.send_lock.release()
        except OSError as e:
            log.debug("%s: send failed: %s; closing", conn.peer, e)
            assert conn.nursery is not None
            conn.nursery.cancel_scope.cancel()
        except Exception:
            # A bug in the RPC layer: lose this connection, not the whole server.
            log.exception("%s: internal error; closing the connection", conn.peer)
            assert conn.nursery is not None
            conn.nursery.cancel_scope.cancel()
        finally:
            self._budget.release(held)
            conn.in_flight.release()
        # The read loop sleeps in epoll while a call is in flight; polling here for the client's
        # next call spares that sleep's wake-up as it does after a reply the loop sent itself.
        if self._may_poll(conn):
            _poll_briefly(conn.poller, self._poll_s)

    # --- UDP: one datagram is one record (RFC 5531 §11 applies to streams only) ----------------

    async def _udp_loop(
        self, sock: trio.socket.SocketType, index: int, conns: trio.Nursery
    ) -> None:
        limiter = trio.Semaphore(self.limits.max_udp_in_flight)
        while True:
            await limiter.acquire()
            try:
                data, addr = await sock.recvfrom(self.limits.max_udp_request_bytes)
            except OSError as e:  # e.g. ECONNREFUSED from an ICMP error for an earlier reply
                limiter.release()
                log.debug("udp receive failed: %s", e)
                continue
            conns.start_soon(self._answer_udp, sock, self.dispatchers[index], data, addr, limiter)

    async def _answer_udp(
        self,
        sock: trio.socket.SocketType,
        dispatcher: Dispatcher,
        data: bytes,
        addr: tuple,
        limiter: trio.Semaphore,
    ) -> None:
        try:
            reply = await dispatcher.dispatch(data, addr[:2], "udp")
            if reply is None:
                return
            # A datagram needs the bytes themselves (slices are for TCP's sendfile).
            sent_as_bytes = [b.read() if type(b) is FileSlice else b for b in reply]
            release_slices(reply)
            reply = sent_as_bytes
            if sum(len(b) for b in reply) > self.limits.max_udp_reply_bytes:
                log.error("%s: reply too large for UDP; answering SYSTEM_ERR", addr[:2])
                (xid,) = struct.unpack_from(">I", data)
                reply = [accepted_reply(xid, AcceptStat.SYSTEM_ERR)]
            await sock.sendmsg(reply, [], 0, addr)
        except OSError as e:
            log.debug("%s: udp send failed: %s", addr[:2], e)
        except Exception:
            log.exception("%s: internal error answering a datagram", addr[:2])  # drop it
        finally:
            limiter.release()


async def _acquire(sem: trio.Semaphore) -> None:
    """Semaphore.acquire without its scheduling round when the semaphore is free."""
    try:
        sem.acquire_nowait()
    except trio.WouldBlock:
        await sem.acquire()


async def _bind(
    lst: Listener,
) -> tuple[trio.socket.SocketType | None, trio.socket.SocketType | None, int]:
    """Bind TCP and UDP sockets for `lst` on one port number (retrying when port is 0)."""
    assert lst.tcp or lst.udp
    family, _, _, _, sockaddr = (await trio.socket.getaddrinfo(lst.host, lst.port))[0]
    for _ in range(_BIND_ATTEMPTS):
        tcp = udp = None
        try:
            port = lst.port
            if lst.tcp:
                tcp = trio.socket.socket(family, stdlib_socket.SOCK_STREAM)
                tcp.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
                await tcp.bind((sockaddr[0], port, *sockaddr[2:]))
                tcp.listen(1024)
                port = tcp.getsockname()[1]
            if lst.udp:
                udp = trio.socket.socket(family, stdlib_socket.SOCK_DGRAM)
                await udp.bind((sockaddr[0], port, *sockaddr[2:]))
                port = udp.getsockname()[1]
            return tcp, udp, port
        except OSError as e:
            for s in (tcp, udp):
                if s is not None:
                    s.close()
            if lst.port != 0 or e.errno != errno.EADDRINUSE:
                raise
    raise OSError(errno.EADDRINUSE, f"no free port for both TCP and UDP on {lst.host}")
