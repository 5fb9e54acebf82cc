"""NFS version 3 handlers: GETATTR, SETATTR, LOOKUP, ACCESS, READLINK (RFC 1813 §3.3.1-§3.3.5).

Rules (env.py): each handler resolves its handle, calls the backend, and returns the success
result; an FsError escapes to program.py, which builds the failure result with the matching
`*_fail` function below from the status and the error's wcc (its `after` holds the post-op
attributes the failure arm returns). The `*_nowait` twins (program.py's fast path) give the same
answers from the backend's `*_nowait` methods, or NOT_READY.
"""

from __future__ import annotations

from nfs_gateway.backend import Wcc
from nfs_gateway.nfs3.const import ACCESS_WRITE_BITS, Stat
from nfs_gateway.nfs3.env import Env, check_name
from nfs_gateway.nfs3.types import (
    AccessArgs,
    AccessRes,
    DirOpArgs,
    FhArgs,
    GetattrRes,
    LookupRes,
    ReadlinkRes,
    SetattrArgs,
    WccRes,
)
from nfs_gateway.program import NOT_READY, CallContext

OK = Stat.OK


async def null(env: Env, ctx: CallContext, args: None) -> None:
    """NULL (§3.3.0): do nothing, answer nothing; clients ping with it."""
    return None


def null_nowait(env: Env, ctx: CallContext, args: None) -> None:
    return None


async def getattr_(env: Env, ctx: CallContext, args: FhArgs) -> GetattrRes:
    """GETATTR (§3.3.1)."""
    t = env.resolve(ctx, args.fh)
    return GetattrRes(OK, await env.backend.getattr(t.fid))


def getattr_nowait(env: Env, ctx: CallContext, args: FhArgs) -> GetattrRes:
    t = env.resolve(ctx, args.fh)
    attr = env.backend.getattr_nowait(t.fid)  # type: ignore[attr-defined]
    return NOT_READY if attr is None else GetattrRes(OK, attr)


def getattr_fail(status: Stat, wcc: Wcc) -> GetattrRes:
    return GetattrRes(status)


async def setattr_(env: Env, ctx: CallContext, args: SetattrArgs) -> WccRes:
    """SETATTR (§3.3.2). The guard is the ctime the client last saw: the backend answers
    NOT_SYNC if it differs, so a retransmitted SETATTR cannot undo a later change."""
    t = env.resolve(ctx, args.fh, modify=True)
    wcc = await env.backend.setattr(t.cred, t.fid, args.sattr, args.guard_ctime_ns)
    return WccRes(OK, wcc)


def wcc_fail(status: Stat, wcc: Wcc) -> WccRes:
    """Failure of SETATTR, REMOVE, RMDIR: wcc_data in the failure arm too."""
    return WccRes(status, wcc)


async def lookup(env: Env, ctx: CallContext, args: DirOpArgs) -> LookupRes:
    """LOOKUP (§3.3.3). ".." at an export's root is the root itself: a client must not climb
    out of what it mounted (the export may be a subdirectory)."""
    t = env.resolve(ctx, args.dir)
    check_name(args.name)
    if args.name == b".." and t.fid == await env.export_root(t.export):
        attr = await env.backend.getattr(t.fid)
        return LookupRes(OK, attr, env.handle(t.export, t.fid), attr)
    r = await env.backend.lookup(t.cred, t.fid, args.name)
    return LookupRes(OK, r.dir_attr, env.handle(t.export, r.fid), r.attr)


def lookup_nowait(env: Env, ctx: CallContext, args: DirOpArgs) -> LookupRes:
    t = env.resolve(ctx, args.dir)
    check_name(args.name)
    if args.name == b"..":
        root = env.export_root_nowait(t.export)
        if root is None:
            return NOT_READY
        if t.fid == root:
            attr = env.backend.getattr_nowait(t.fid)  # type: ignore[attr-defined]
            if attr is None:
                return NOT_READY
            return LookupRes(OK, attr, env.handle(t.export, t.fid), attr)
    r = env.backend.lookup_nowait(t.cred, t.fid, args.name)  # type: ignore[attr-defined]
    if r is None:
        return NOT_READY
    return LookupRes(OK, r.dir_attr, env.handle(t.export, r.fid), r.attr)


def lookup_fail(status: Stat, wcc: Wcc) -> LookupRes:
    return LookupRes(status, wcc.after)


async def access(env: Env, ctx: CallContext, args: AccessArgs) -> AccessRes:
    """ACCESS (§3.3.4). On a read-only export the bits that would change something are never
    granted, whatever the mode bits say: the client then fails early with the right error."""
    t = env.resolve(ctx, args.fh)
    granted, attr = await env.backend.access(t.cred, t.fid, args.access)
    if t.export.read_only:
        granted &= ~ACCESS_WRITE_BITS
    return AccessRes(OK, attr, granted & args.access)


def access_nowait(env: Env, ctx: CallContext, args: AccessArgs) -> AccessRes:
    t = env.resolve(ctx, args.fh)
    r = env.backend.access_nowait(t.cred, t.fid, args.access)  # type: ignore[attr-defined]
    if r is None:
        return NOT_READY
    granted, attr = r
    if t.export.read_only:
        granted &= ~ACCESS_WRITE_BITS
    return AccessRes(OK, attr, granted & args.access)


def access_fail(status: Stat, wcc: Wcc) -> AccessRes:
    return AccessRes(status, wcc.after)


async def readlink(env: Env, ctx: CallContext, args: FhArgs) -> ReadlinkRes:
    """READLINK (§3.3.5). INVAL for a handle that is not a symbolic link (the backend's)."""
    t = env.resolve(ctx, args.fh)
    target, attr = await env.backend.readlink(t.cred, t.fid)
    return ReadlinkRes(OK, attr, target)


def readlink_fail(status: Stat, wcc: Wcc) -> ReadlinkRes:
    return ReadlinkRes(status, wcc.after)
