"""NFS version 3 handlers that change a directory: CREATE, MKDIR, SYMLINK, MKNOD, REMOVE,
RMDIR, RENAME, LINK (RFC 1813 §3.3.8-§3.3.15).

Rules (env.py): success result returned, FsError escapes to program.py. All of these modify, so
a read-only export answers ROFS before the backend is asked; all are non-idempotent (program.py
sends their retransmissions to the duplicate request cache). Names longer than 255 bytes are
NAMETOOLONG, symlink targets longer than 1024 bytes too.
"""

from __future__ import annotations

from collections.abc import Mapping

from nfs_gateway.backend import BadType, Created, CreateMode, FileType, SetAttrs, Wcc
from nfs_gateway.nfs3.const import Stat
from nfs_gateway.nfs3.env import Env, Target, check_name, check_path
from nfs_gateway.nfs3.types import (
    NO_WCC,
    CreateArgs,
    CreateRes,
    DirOpArgs,
    LinkArgs,
    LinkRes,
    MkdirArgs,
    MknodArgs,
    RenameArgs,
    RenameRes,
    SymlinkArgs,
    WccRes,
)
from nfs_gateway.program import CallContext

OK = Stat.OK

# MKNOD (§3.3.11) makes special files only: whether each type keeps its specdata3.
_MKNOD_KEEPS_RDEV: Mapping[FileType, bool] = {
    FileType.CHR: True,
    FileType.BLK: True,
    FileType.SOCK: False,
    FileType.FIFO: False,
}


def _resolve_where(env: Env, ctx: CallContext, where: DirOpArgs) -> Target:
    t = env.resolve(ctx, where.dir, modify=True)
    check_name(where.name)
    return t


def _created(env: Env, t: Target, c: Created) -> CreateRes:
    return CreateRes(OK, c.dir_wcc, env.handle(t.export, c.fid), c.attr)


def create_fail(status: Stat, wcc: Wcc) -> CreateRes:
    """Failure of CREATE, MKDIR, SYMLINK, MKNOD: the directory's wcc_data."""
    return CreateRes(status, wcc)


async def create(env: Env, ctx: CallContext, args: CreateArgs) -> CreateRes:
    """CREATE (§3.3.8). UNCHECKED truncates an existing file per its sattr3, GUARDED answers
    EXIST, EXCLUSIVE stores the verifier so that a retransmission with the same verifier
    succeeds (the client then sets the attributes with SETATTR)."""
    t = _resolve_where(env, ctx, args.where)
    verf = args.verf if args.how == CreateMode.EXCLUSIVE else None
    sattr = SetAttrs() if args.how == CreateMode.EXCLUSIVE else args.sattr
    c = await env.backend.create(t.cred, t.fid, args.where.name, args.how, sattr, verf)
    return _created(env, t, c)


async def mkdir(env: Env, ctx: CallContext, args: MkdirArgs) -> CreateRes:
    """MKDIR (§3.3.9)."""
    t = _resolve_where(env, ctx, args.where)
    c = await env.backend.mkdir(t.cred, t.fid, args.where.name, args.sattr)
    return _created(env, t, c)


async def symlink(env: Env, ctx: CallContext, args: SymlinkArgs) -> CreateRes:
    """SYMLINK (§3.3.10). The target is stored as given; the server never follows it."""
    t = _resolve_where(env, ctx, args.where)
    check_path(args.target)
    c = await env.backend.symlink(t.cred, t.fid, args.where.name, args.target, args.sattr)
    return _created(env, t, c)


async def mknod(env: Env, ctx: CallContext, args: MknodArgs) -> CreateRes:
    """MKNOD (§3.3.11): character and block devices (with specdata3), sockets and FIFOs.
    Regular files, directories and symbolic links have their own procedures: BADTYPE."""
    t = _resolve_where(env, ctx, args.where)
    keeps_rdev = _MKNOD_KEEPS_RDEV.get(args.ftype)
    if keeps_rdev is None:
        raise BadType(f"MKNOD cannot make a {args.ftype.name}")
    rdev = args.rdev if keeps_rdev else (0, 0)
    c = await env.backend.mknod(t.cred, t.fid, args.where.name, args.ftype, args.sattr, rdev)
    return _created(env, t, c)


async def remove(env: Env, ctx: CallContext, args: DirOpArgs) -> WccRes:
    """REMOVE (§3.3.12): a non-directory; the backend answers ISDIR (or NOTDIR) as fits."""
    t = _resolve_where(env, ctx, args)
    return WccRes(OK, await env.backend.remove(t.cred, t.fid, args.name))


async def rmdir(env: Env, ctx: CallContext, args: DirOpArgs) -> WccRes:
    """RMDIR (§3.3.13): an empty directory (NOTEMPTY otherwise)."""
    t = _resolve_where(env, ctx, args)
    return WccRes(OK, await env.backend.rmdir(t.cred, t.fid, args.name))


async def rename(env: Env, ctx: CallContext, args: RenameArgs) -> RenameRes:
    """RENAME (§3.3.14): atomic, also onto an existing name; XDEV across exports."""
    src, dst = env.resolve_pair(ctx, args.source.dir, args.target.dir, modify=True)
    check_name(args.source.name)
    check_name(args.target.name)
    r = await env.backend.rename(src.cred, src.fid, args.source.name, dst.fid, args.target.name)
    return RenameRes(OK, r.from_dir_wcc, r.to_dir_wcc)


def rename_fail(status: Stat, wcc: Wcc) -> RenameRes:
    # An FsError carries one wcc: the source directory's, the one a failed rename examined first.
    return RenameRes(status, wcc, NO_WCC)


async def link(env: Env, ctx: CallContext, args: LinkArgs) -> LinkRes:
    """LINK (§3.3.15): a new name for an existing file; XDEV across exports."""
    file, d = env.resolve_pair(ctx, args.fh, args.link.dir, modify=True)
    check_name(args.link.name)
    r = await env.backend.link(d.cred, file.fid, d.fid, args.link.name)
    return LinkRes(OK, r.attr, r.dir_wcc)


def link_fail(status: Stat, wcc: Wcc) -> LinkRes:
    # The error's wcc is the link directory's (the one LINK changes).
    return LinkRes(status, None, wcc)
