"""NFS version 3 handlers: READ, WRITE, COMMIT (RFC 1813 §3.3.6, §3.3.7, §3.3.21).

Rules (env.py): success result returned, FsError escapes to program.py. These are the hot path,
benchmarked for sequential I/O: no per-byte Python work and no copy of the payload — WRITE data
is a view into the received record, READ data goes to the encoder as the backend returned it.
"""

from __future__ import annotations

from nfs_gateway.backend import Inval, Wcc
from nfs_gateway.nfs3.const import Stat
from nfs_gateway.nfs3.env import Env, Target
from nfs_gateway.nfs3.types import CommitArgs, CommitRes, ReadArgs, ReadRes, WriteArgs, WriteRes
from nfs_gateway.program import NOT_READY, CallContext

OK = Stat.OK


def _read_count(env: Env, ctx: CallContext, count: int) -> int:
    c = env.config
    return min(count, c.rtmax if ctx.transport != "udp" else min(c.rtmax, c.udp_xfer_max))


async def read(env: Env, ctx: CallContext, args: ReadArgs) -> ReadRes:
    """READ (§3.3.6). A count above rtmax is cut to rtmax: the reply is short, not an error,
    and `eof` tells the client whether it reached the end of the file. Over UDP the cap is
    lower, so that the reply fits one datagram."""
    t = env.resolve(ctx, args.fh)
    count = _read_count(env, ctx, args.count)
    r = await env.backend.read(t.cred, t.fid, args.offset, count)
    return ReadRes(OK, r.attr, len(r.data), r.eof, r.data)


def read_nowait(env: Env, ctx: CallContext, args: ReadArgs) -> ReadRes:
    """READ from the page cache (the fast path), or NOT_READY."""
    t = env.resolve(ctx, args.fh)
    count = _read_count(env, ctx, args.count)
    r = env.backend.read_nowait(t.cred, t.fid, args.offset, count)  # type: ignore[attr-defined]
    if r is None:
        return NOT_READY
    return ReadRes(OK, r.attr, len(r.data), r.eof, r.data)


def read_fail(status: Stat, wcc: Wcc) -> ReadRes:
    return ReadRes(status, wcc.after)


async def write(env: Env, ctx: CallContext, args: WriteArgs) -> WriteRes:
    """WRITE (§3.3.7). Writes at most wtmax bytes (a short write the client continues); the
    backend decides how stable it made them (`committed` ≥ what was asked) and gives the
    write verifier, which changes only when unstable data may have been lost."""
    t, view = _write_target(env, ctx, args)
    r = await env.backend.write(t.cred, t.fid, args.offset, view, args.stable)
    return WriteRes(OK, r.wcc, r.count, r.committed, r.verifier)


def write_nowait(env: Env, ctx: CallContext, args: WriteArgs) -> WriteRes:
    """WRITE that the backend can do from memory (a small unstable one), or NOT_READY."""
    t, view = _write_target(env, ctx, args)
    r = env.backend.write_nowait(  # type: ignore[attr-defined]
        t.cred, t.fid, args.offset, view, args.stable
    )
    if r is None:
        return NOT_READY
    return WriteRes(OK, r.wcc, r.count, r.committed, r.verifier)


def _write_target(env: Env, ctx: CallContext, args: WriteArgs) -> tuple[Target, memoryview]:
    t = env.resolve(ctx, args.fh, modify=True)
    data = args.data
    if len(data) < args.count:
        raise Inval(f"WRITE count {args.count} but {len(data)} bytes of data")
    count = min(args.count, env.config.wtmax)
    return t, memoryview(data)[:count]  # a view: no copy of the payload


def write_fail(status: Stat, wcc: Wcc) -> WriteRes:
    return WriteRes(status, wcc)


async def commit(env: Env, ctx: CallContext, args: CommitArgs) -> CommitRes:
    """COMMIT (§3.3.21): everything written so far is on stable storage before the reply. Not a
    modification (it changes no data), so it is allowed on a read-only export."""
    t = env.resolve(ctx, args.fh)
    r = await env.backend.commit(t.cred, t.fid, args.offset, args.count)
    return CommitRes(OK, r.wcc, r.verifier)


def commit_fail(status: Stat, wcc: Wcc) -> CommitRes:
    return CommitRes(status, wcc)
