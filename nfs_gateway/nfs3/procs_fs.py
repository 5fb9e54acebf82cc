"""NFS version 3 handlers: FSSTAT, FSINFO, PATHCONF (RFC 1813 §3.3.18-§3.3.20).

Rules (env.py): success result returned, FsError escapes to program.py. FSINFO and PATHCONF
describe the gateway's limits (Nfs3Config); they still ask the backend for the object's
attributes, which also answers STALE for a deleted handle.
"""

from __future__ import annotations

from nfs_gateway.backend import Wcc
from nfs_gateway.nfs3.const import (
    FSF3_CANSETTIME,
    FSF3_HOMOGENEOUS,
    FSF3_LINK,
    FSF3_SYMLINK,
    NAME_MAX,
    Stat,
)
from nfs_gateway.nfs3.env import Env, Nfs3Config
from nfs_gateway.nfs3.types import (
    FhArgs,
    FsInfo,
    FsinfoRes,
    FsstatRes,
    PathConf,
    PathconfRes,
)
from nfs_gateway.program import CallContext

OK = Stat.OK
# Hard links, symbolic links, the same PATHCONF everywhere, times settable by SETATTR.
PROPERTIES = FSF3_LINK | FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME


def fs_info(c: Nfs3Config) -> FsInfo:
    return FsInfo(
        c.rtmax, c.rtpref, c.rtmult, c.wtmax, c.wtpref, c.wtmult, c.dtpref,
        c.maxfilesize, c.time_delta_ns, PROPERTIES,
    )  # fmt: skip


def path_conf(c: Nfs3Config) -> PathConf:
    # Names are kept byte for byte: longer ones are refused (no_trunc), case is preserved and
    # significant; only root may chown (chown_restricted), as POSIX systems do.
    return PathConf(c.linkmax, NAME_MAX, True, True, False, True)


async def fsstat(env: Env, ctx: CallContext, args: FhArgs) -> FsstatRes:
    """FSSTAT (§3.3.18)."""
    t = env.resolve(ctx, args.fh)
    stat, attr = await env.backend.fsstat(t.fid)
    return FsstatRes(OK, attr, stat)


def fsstat_fail(status: Stat, wcc: Wcc) -> FsstatRes:
    return FsstatRes(status, wcc.after)


async def fsinfo(env: Env, ctx: CallContext, args: FhArgs) -> FsinfoRes:
    """FSINFO (§3.3.19)."""
    t = env.resolve(ctx, args.fh)
    attr = await env.backend.getattr(t.fid)
    return FsinfoRes(OK, attr, fs_info(env.config.for_transport(ctx.transport)))


def fsinfo_fail(status: Stat, wcc: Wcc) -> FsinfoRes:
    return FsinfoRes(status, wcc.after)


async def pathconf(env: Env, ctx: CallContext, args: FhArgs) -> PathconfRes:
    """PATHCONF (§3.3.20)."""
    t = env.resolve(ctx, args.fh)
    attr = await env.backend.getattr(t.fid)
    return PathconfRes(OK, attr, path_conf(env.config))


def pathconf_fail(status: Stat, wcc: Wcc) -> PathconfRes:
    return PathconfRes(status, wcc.after)
