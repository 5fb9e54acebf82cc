"""ONC RPC version 2 (RFC 5531) dispatch: the reply to one call record, given a table of Programs.

Rules of this module:
- Pure code: a record (bytes) in, reply buffers out. No sockets, no clock; the trio server in
  server.py owns the I/O. `Dispatcher.dispatch` is async only because handlers are awaited.
- The header is decoded by rpc.py, whose typed exceptions end a call before any procedure is
  looked up. Then, in the order of RFC 5531 §9: program, version, procedure, args.
- Procedures are found by table (Program.procedures[version][procedure]), never by `if` chains.
- An exception escaping a handler or an encoder is a server fault: logged, answered SYSTEM_ERR.
- Non-idempotent procedures go through the duplicate request cache (drc.py) when one is given.
- `dispatch_nowait` answers a call without awaiting when its procedure has a `handle_nowait` that
  can (program.py); else it returns the call decoded so far as a Pending, which the caller
  passes to `finish` (in a task): the header is decoded once per call. The same decoding,
  rejections and faults apply on both paths.
- Every call a procedure answers is recorded in its OpStats (opstats.py): the time from its
  record to its encoded reply by the clock the server injects (`now`; the default reads none:
  every latency is 0), and its status when not OK. Calls rejected before a procedure is known
  are only counted (`counters`); replies replayed from the duplicate request cache are not
  calls.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from collections.abc import Callable, Sequence

from nfs_gateway.drc import DrcKey, DuplicateRequestCache
from nfs_gateway.opstats import Op, op_table
from nfs_gateway.program import NOT_READY, CallContext, Procedure, Program
from nfs_gateway.rpc import (
    AcceptStat,
    AuthError,
    CallHeader,
    CredCache,
    Rejected,
    Unanswerable,
    accepted_reply,
    decode_call,
    pack_accepted_header,
)
from nfs_gateway.sparselog import SparseLog
from nfs_gateway.xdr import Packer, Unpacker, XdrError

# The same logger as rpc.py: one RPC layer to whoever reads the logs.
log = logging.getLogger("objcache.rpc")

Buffers = list[bytes | bytearray | memoryview]


_UNDECODED = object()  # Pending.args before the arguments are decoded


def _no_clock() -> float:
    return 0.0


class Dispatcher:
    """Decides the reply to one record, given a table of Programs (RFC 5531 §9)."""

    def __init__(
        self,
        programs: Sequence[Program],
        drc: DuplicateRequestCache | None = None,
        now: Callable[[], float] = _no_clock,
    ) -> None:
        self.programs = {p.prog: p for p in programs}
        assert len(self.programs) == len(programs), "duplicate program numbers"
        self.drc = drc
        self.now = now  # seconds, for latencies only (module rules)
        self.counters: Counter[str] = Counter()  # for metrics: calls, rejections, faults
        self.creds = CredCache()
        self._auth_log = SparseLog()
        # What each procedure did (per program and procedure name), and `_find`'s table.
        self.ops, self._ops = op_table(programs)

    def _header(
        self, record: bytes | memoryview, client: tuple[str, int]
    ) -> tuple[CallHeader, Op, Unpacker] | Buffers | None:
        """The decoded header and its procedure, or the reply (None: none) that ends the call."""
        try:
            hdr, u = decode_call(record, self.creds)
        except Unanswerable as e:
            self.counters["dropped"] += 1
            log.debug("%s: dropped: %s", client, e)
            return None
        except Rejected as e:
            self.counters[type(e).__name__] += 1
            if isinstance(e, AuthError):  # a refusal: logged, sparsely (sparselog.py)
                n = self._auth_log.count((client[0], e.stat))
                if n is not None:
                    log.warning("%s: AUTH_ERROR %s; %d from this address so far", client,
                                e.stat.name, n)
            else:
                log.debug("%s: rejected: %r", client, e)
            return [e.reply()]
        found = self._find(hdr)
        if isinstance(found, bytes):
            return [found]
        return hdr, found, u

    async def dispatch(
        self, record: bytes | memoryview, client: tuple[str, int], transport: str = "tcp"
    ) -> Buffers | None:
        """The reply buffers for `record`, or None when no reply must be sent."""
        t0 = self.now()
        found = self._header(record, client)
        if not isinstance(found, tuple):
            return found
        hdr, op, u = found
        return await self._call(hdr, op, u, record, client, transport, t0)

    def dispatch_nowait(
        self,
        record: bytes | memoryview,
        client: tuple[str, int],
        transport: str = "tcp",
    ) -> Buffers | Pending | None:
        """Like `dispatch` without awaiting, or a Pending: then `finish` answers the call."""
        t0 = self.now()
        found = self._header(record, client)
        if not isinstance(found, tuple):
            return found
        hdr, op, u = found
        proc = op.proc
        nowait = proc.handle_nowait
        if nowait is None or not (proc.idempotent or self.drc is None):
            return Pending(hdr, op, u, _UNDECODED, t0)
        args = self._decode_args(hdr, op, u, client, t0)
        if type(args) is _Reply:
            return args.buffers
        ctx = CallContext(client, hdr.auth.flavor, hdr.cred, hdr.xid, transport)
        try:
            result = nowait(ctx, args)
            if result is NOT_READY:
                return Pending(hdr, op, u, args, t0)
            self.counters["calls"] += 1
            reply = self._encode(ctx, proc, result)
        except Exception:
            return self._fault(ctx, op, t0)
        op.stats.record(self.now() - t0, getattr(result, "status", 0))
        return reply

    async def finish(
        self,
        pending: Pending,
        record: bytes | memoryview,
        client: tuple[str, int],
        transport: str = "tcp",
    ) -> Buffers | None:
        """The reply to the call `dispatch_nowait` returned as `pending` for `record`."""
        p = pending
        return await self._call(p.hdr, p.op, p.u, record, client, transport, p.t0, p.args)

    def _find(self, hdr: CallHeader) -> Op | bytes:
        """The procedure, or the PROG_UNAVAIL / PROG_MISMATCH / PROC_UNAVAIL reply."""
        by_vers = self._ops.get(hdr.prog)
        if by_vers is None:
            self.counters["prog_unavail"] += 1
            return accepted_reply(hdr.xid, AcceptStat.PROG_UNAVAIL)
        procs = by_vers.get(hdr.vers)
        if procs is None:
            self.counters["prog_mismatch"] += 1
            program = self.programs[hdr.prog]
            lo, hi = program.low_version, program.high_version
            return accepted_reply(hdr.xid, AcceptStat.PROG_MISMATCH, lo, hi)
        op = procs.get(hdr.proc)
        if op is None:
            self.counters["proc_unavail"] += 1
            return accepted_reply(hdr.xid, AcceptStat.PROC_UNAVAIL)
        return op

    async def _call(
        self,
        hdr: CallHeader,
        op: Op,
        u: Unpacker,
        record: bytes | memoryview,
        client: tuple[str, int],
        transport: str,
        t0: float,
        args: object = _UNDECODED,
    ) -> Buffers | None:
        """Run the call whose arguments `u` is at, or which `args` holds decoded already."""
        args_at = u.pos
        if args is _UNDECODED:
            args = self._decode_args(hdr, op, u, client, t0)
            if type(args) is _Reply:
                return args.buffers
        # Arguments decoded before (dispatch_nowait) belong to an idempotent call or a
        # dispatcher without a cache: `args_at` (past them) is never used below.
        self.counters["calls"] += 1
        ctx = CallContext(client, hdr.auth.flavor, hdr.cred, hdr.xid, transport)
        if op.proc.idempotent or self.drc is None:
            return await self._run(ctx, op, args, t0)
        return await self._run_once(ctx, hdr, op, args, memoryview(record)[args_at:], t0)

    async def _run_once(
        self,
        ctx: CallContext,
        hdr: CallHeader,
        op: Op,
        args: object,
        raw: memoryview,
        t0: float,
    ) -> Buffers | None:
        """Run a non-idempotent call at most once per retransmission (RFC 5531 §8, drc.py)."""
        assert self.drc is not None
        crc = zlib.crc32(raw)
        key = DrcKey(ctx.client[0], hdr.xid, hdr.prog, hdr.vers, hdr.proc, crc, len(raw))
        hit = self.drc.begin(key)
        if hit is not None:
            self.counters["drc_replay" if hit.reply is not None else "drc_in_progress"] += 1
            return None if hit.reply is None else [hit.reply]
        reply: bytes | None = None
        try:
            reply = b"".join(await self._run(ctx, op, args, t0))
            return [reply]
        finally:
            if reply is not None:
                self.drc.finish(key, reply)
            else:  # cancelled (shutdown, closed connection): forget, so a retry runs it
                self.drc.abandon(key)

    def _decode_args(
        self, hdr: CallHeader, op: Op, u: Unpacker, client: tuple[str, int], t0: float
    ) -> object:
        """The procedure's arguments, or a _Reply with GARBAGE_ARGS or SYSTEM_ERR."""
        try:
            args = op.proc.decode(u)
            u.done()
            return args
        except XdrError as e:
            self.counters["garbage_args"] += 1
            log.debug("%s: xid %#x %s: garbage args: %s", client, hdr.xid, op.proc.name, e)
            op.stats.record(self.now() - t0, AcceptStat.GARBAGE_ARGS)
            return _Reply([accepted_reply(hdr.xid, AcceptStat.GARBAGE_ARGS)])
        except Exception:
            # A decoder bug (decoders raise only XdrError): a server fault for this call only.
            self.counters["system_err"] += 1
            log.exception("%s: xid %#x %s: decoder failed", client, hdr.xid, op.proc.name)
            op.stats.record(self.now() - t0, AcceptStat.SYSTEM_ERR)
            return _Reply([accepted_reply(hdr.xid, AcceptStat.SYSTEM_ERR)])

    async def _run(self, ctx: CallContext, op: Op, args: object, t0: float) -> Buffers:
        try:
            result = await op.proc.handle(ctx, args)
            reply = self._encode(ctx, op.proc, result)
        except Exception:
            return self._fault(ctx, op, t0)
        op.stats.record(self.now() - t0, getattr(result, "status", 0))
        return reply

    @staticmethod
    def _encode(ctx: CallContext, proc: Procedure, result: object) -> Buffers:
        p = Packer()
        pack_accepted_header(p, ctx.xid, AcceptStat.SUCCESS)
        proc.encode(p, result)
        return p.buffers()

    def _fault(self, ctx: CallContext, op: Op, t0: float) -> Buffers:
        """A server fault, not an operating error (handlers return those as results); called
        from an exception handler."""
        self.counters["system_err"] += 1
        log.exception("%s: xid %#x %s failed", ctx.client, ctx.xid, op.proc.name)
        op.stats.record(self.now() - t0, AcceptStat.SYSTEM_ERR)
        return [accepted_reply(ctx.xid, AcceptStat.SYSTEM_ERR)]


class Pending:
    """A call that `dispatch_nowait` could not answer, as far as it was decoded: its header,
    procedure, the Unpacker after what was read, its arguments (or _UNDECODED) and the clock
    reading its latency counts from."""

    __slots__ = ("args", "hdr", "op", "t0", "u")

    def __init__(self, hdr: CallHeader, op: Op, u: Unpacker, args: object, t0: float) -> None:
        self.hdr = hdr
        self.op = op
        self.u = u
        self.args = args
        self.t0 = t0


class _Reply:
    """A reply decided while decoding arguments (not the arguments themselves)."""

    __slots__ = ("buffers",)

    def __init__(self, buffers: Buffers) -> None:
        self.buffers = buffers
