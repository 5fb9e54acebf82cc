"""The NFS version 3 program (RFC 1813 §3): one declarative table of all 22 procedures.

Rules:
- Each row: number, decoder, handler, failure-result builder, encoder, idempotent. The table is
  the only place a procedure is wired; dispatch is a lookup, never an if-chain.
- `_guarded` is the only place an FsError is caught: it becomes the procedure's failure result,
  with the status from errors.py and the error's wcc. Other exceptions are bugs: they escape
  (the RPC layer answers SYSTEM_ERR).
- Non-idempotent procedures (CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, RENAME, LINK) are
  marked so: a retransmission gets the first reply from the duplicate request cache (§4.4).
  SETATTR counts as idempotent: with a guard a replay answers NOT_SYNC instead of undoing.
- NULL, GETATTR, LOOKUP, ACCESS and READ also have a synchronous twin (`nowait`), wired when the
  backend offers the `*_nowait` method it needs (backend.NowaitBackend): the RPC layer answers
  such calls from memory without a task, or falls back to the async handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nfs_gateway.backend import Backend, FileId, FsError, Wcc
from nfs_gateway.nfs3 import codec_args as da
from nfs_gateway.nfs3 import codec_res as er
from nfs_gateway.nfs3 import procs_attr, procs_data, procs_dir, procs_fs, procs_readdir
from nfs_gateway.nfs3.const import NFS_PROGRAM, NFS_V3, Proc, Stat
from nfs_gateway.nfs3.env import Env, Nfs3Config
from nfs_gateway.nfs3.errors import status_of
from nfs_gateway.nfs3.fhandle import encode_fhandle
from nfs_gateway.nfs3.types import NO_WCC
from nfs_gateway.program import CallContext, Procedure, Program, decode_void, encode_void
from nfs_gateway.xdr import Packer, Unpacker

if TYPE_CHECKING:
    from nfs_gateway.exports import Export, ExportTable

__all__ = ["Nfs3Config", "handle_maker", "make_handle", "make_nfs3_program"]

Body = Callable[[Env, CallContext, Any], Awaitable[Any]]
NowaitBody = Callable[[Env, CallContext, Any], Any]  # the result or NOT_READY
Fail = Callable[[Stat, Wcc], Any]


@dataclass(frozen=True, slots=True)
class Row:
    proc: Proc
    decode: Callable[[Unpacker], Any]
    body: Body
    fail: Fail | None  # None: the procedure cannot fail (NULL)
    encode: Callable[[Packer, Any], None]
    idempotent: bool = True
    nowait: NowaitBody | None = None
    needs: str = ""  # the backend method `nowait` calls (wired only if the backend has it)


_p, _d, _r = procs_attr, procs_dir, procs_readdir
TABLE: tuple[Row, ...] = (
    Row(Proc.NULL, decode_void, _p.null, None, encode_void, nowait=_p.null_nowait),
    Row(
        Proc.GETATTR,
        da.decode_fh_args,
        _p.getattr_,
        _p.getattr_fail,
        er.encode_getattr,
        nowait=_p.getattr_nowait,
        needs="getattr_nowait",
    ),
    Row(Proc.SETATTR, da.decode_setattr, _p.setattr_, _p.wcc_fail, er.encode_wcc_res),
    Row(
        Proc.LOOKUP,
        da.unpack_diropargs,
        _p.lookup,
        _p.lookup_fail,
        er.encode_lookup,
        nowait=_p.lookup_nowait,
        needs="lookup_nowait",
    ),
    Row(
        Proc.ACCESS,
        da.decode_access,
        _p.access,
        _p.access_fail,
        er.encode_access,
        nowait=_p.access_nowait,
        needs="access_nowait",
    ),
    Row(Proc.READLINK, da.decode_fh_args, _p.readlink, _p.readlink_fail, er.encode_readlink),
    Row(
        Proc.READ,
        da.decode_read,
        procs_data.read,
        procs_data.read_fail,
        er.encode_read,
        nowait=procs_data.read_nowait,
        needs="read_nowait",
    ),
    Row(
        Proc.WRITE,
        da.decode_write,
        procs_data.write,
        procs_data.write_fail,
        er.encode_write,
        nowait=procs_data.write_nowait,
        needs="write_nowait",
    ),
    Row(Proc.CREATE, da.decode_create, _d.create, _d.create_fail, er.encode_create, False),
    Row(Proc.MKDIR, da.decode_mkdir, _d.mkdir, _d.create_fail, er.encode_create, False),
    Row(Proc.SYMLINK, da.decode_symlink, _d.symlink, _d.create_fail, er.encode_create, False),
    Row(Proc.MKNOD, da.decode_mknod, _d.mknod, _d.create_fail, er.encode_create, False),
    Row(Proc.REMOVE, da.unpack_diropargs, _d.remove, _p.wcc_fail, er.encode_wcc_res, False),
    Row(Proc.RMDIR, da.unpack_diropargs, _d.rmdir, _p.wcc_fail, er.encode_wcc_res, False),
    Row(Proc.RENAME, da.decode_rename, _d.rename, _d.rename_fail, er.encode_rename, False),
    Row(Proc.LINK, da.decode_link, _d.link, _d.link_fail, er.encode_link, False),
    Row(Proc.READDIR, da.decode_readdir, _r.readdir, _r.readdir_fail, er.encode_readdir),
    Row(
        Proc.READDIRPLUS,
        da.decode_readdirplus,
        _r.readdirplus,
        _r.readdirplus_fail,
        er.encode_readdirplus,
    ),
    Row(Proc.FSSTAT, da.decode_fh_args, procs_fs.fsstat, procs_fs.fsstat_fail, er.encode_fsstat),
    Row(Proc.FSINFO, da.decode_fh_args, procs_fs.fsinfo, procs_fs.fsinfo_fail, er.encode_fsinfo),
    Row(
        Proc.PATHCONF,
        da.decode_fh_args,
        procs_fs.pathconf,
        procs_fs.pathconf_fail,
        er.encode_pathconf,
    ),
    Row(Proc.COMMIT, da.decode_commit, procs_data.commit, procs_data.commit_fail, er.encode_commit),
)
assert [row.proc for row in TABLE] == list(Proc), "one row per procedure, in order"


def _guarded(env: Env, body: Body, fail: Fail | None) -> Callable[[CallContext, Any], Any]:
    """The handler the RPC layer calls: the body, with FsError turned into the failure result."""

    async def handle(ctx: CallContext, args: Any) -> Any:
        try:
            return await body(env, ctx, args)
        except FsError as err:
            if fail is None:
                raise
            return fail(status_of(err), err.wcc if err.wcc is not None else NO_WCC)

    handle.__name__ = body.__name__
    return handle


def _guarded_nowait(
    env: Env, body: NowaitBody, fail: Fail | None
) -> Callable[[CallContext, Any], Any]:
    """`_guarded` for the synchronous twin."""

    def handle_nowait(ctx: CallContext, args: Any) -> Any:
        try:
            return body(env, ctx, args)
        except FsError as err:
            if fail is None:
                raise
            return fail(status_of(err), err.wcc if err.wcc is not None else NO_WCC)

    handle_nowait.__name__ = body.__name__
    return handle_nowait


def _nowait_of(env: Env, row: Row) -> Callable[[CallContext, Any], Any] | None:
    if row.nowait is None or (row.needs and not hasattr(env.backend, row.needs)):
        return None
    return _guarded_nowait(env, row.nowait, row.fail)


def make_nfs3_program(
    backend: Backend, exports: ExportTable, config: Nfs3Config | None = None
) -> Program:
    """NFS program 100003 version 3 over `backend`, serving `exports`."""
    env = Env(backend, exports, config if config is not None else Nfs3Config())
    procs = {
        int(row.proc): Procedure(
            row.proc.name,
            row.decode,
            _guarded(env, row.body, row.fail),
            row.encode,
            row.idempotent,
            _nowait_of(env, row),
        )
        for row in TABLE
    }
    return Program(NFS_PROGRAM, "nfs", {NFS_V3: procs})


def make_handle(export: Export, fid: FileId, fsid: int) -> bytes:
    """The NFS file handle of `fid` in `export` of file system `fsid` (MOUNT MNT's reply)."""
    return encode_fhandle(export.export_id, fsid, fid)


def handle_maker(backend: Backend) -> Callable[[Export, FileId], bytes]:
    """`make_handle(export, fid)` bound to the backend's fsid, for the MOUNT program."""

    def make(export: Export, fid: FileId) -> bytes:
        return encode_fhandle(export.export_id, backend.fsid, fid)

    return make
