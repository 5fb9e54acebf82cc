"""MOUNT protocol version 3 (RFC 1813 appendix I) as a Program table.

Rules:
- MNT finds the export by exact (normalized) path, checks the client against it, asks the backend
  for the export's root, and returns the handle made by the caller-given `make_handle` (the NFS3
  code owns the handle format). Operating errors become a mountstat3 in one table, `_MNT_ERRORS`.
- Paths longer than MNTPATHLEN (1024) answer MNT3ERR_NAMETOOLONG; much longer ones (beyond what
  any client sends) are garbage arguments. Paths that are not UTF-8 answer MNT3ERR_INVAL.
- The mount list (DUMP) is advisory, as in every implementation: bounded, oldest dropped first.
- EXPORT lists every export with its client networks ("*" for everyone); libnfs calls it.
"""

from __future__ import annotations

import enum
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nfs_gateway import backend as be
from nfs_gateway.exports import ALL_NETWORKS, Export, ExportTable, Network, normalize_path
from nfs_gateway.program import (
    AUTH_NONE,
    AUTH_SYS,
    CallContext,
    Procedure,
    Program,
    decode_void,
    encode_void,
)
from nfs_gateway.xdr import Packer, Unpacker

log = logging.getLogger("objcache.mount")

MOUNT_PROG = 100005
MOUNT_V3 = 3
MNTPROC3_NULL, MNTPROC3_MNT, MNTPROC3_DUMP, MNTPROC3_UMNT, MNTPROC3_UMNTALL, MNTPROC3_EXPORT = (
    range(6)
)
MNTPATHLEN = 1024
MNTNAMLEN = 255
FHSIZE3 = 64
MAX_DIRPATH_DECODE = 8192  # beyond this a path is garbage, not just too long
DEFAULT_MAX_MOUNTS = 1024


class MountStat(enum.IntEnum):
    """mountstat3 (RFC 1813 appendix I)."""

    MNT3_OK = 0
    MNT3ERR_PERM = 1
    MNT3ERR_NOENT = 2
    MNT3ERR_IO = 5
    MNT3ERR_ACCES = 13
    MNT3ERR_NOTDIR = 20
    MNT3ERR_INVAL = 22
    MNT3ERR_NAMETOOLONG = 63
    MNT3ERR_NOTSUPP = 10004
    MNT3ERR_SERVERFAULT = 10006


_MNT_ERRORS: dict[type[be.FsError], MountStat] = {
    be.Perm: MountStat.MNT3ERR_PERM,
    be.NoEnt: MountStat.MNT3ERR_NOENT,
    be.Stale: MountStat.MNT3ERR_NOENT,
    be.IOError_: MountStat.MNT3ERR_IO,
    be.Access: MountStat.MNT3ERR_ACCES,
    be.NotDir: MountStat.MNT3ERR_NOTDIR,
    be.Inval: MountStat.MNT3ERR_INVAL,
    be.NameTooLong: MountStat.MNT3ERR_NAMETOOLONG,
    be.NotSupp: MountStat.MNT3ERR_NOTSUPP,
}


@dataclass(frozen=True, slots=True)
class MntResult:
    """mountres3: on MNT3_OK, the root handle and the auth flavors the server accepts."""

    status: MountStat
    fhandle: bytes = b""
    auth_flavors: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class MountEntry:
    hostname: str
    directory: str


@dataclass(frozen=True, slots=True)
class ExportEntry:
    directory: str
    groups: tuple[str, ...]


# --- XDR ---------------------------------------------------------------------------------------


def unpack_dirpath(u: Unpacker) -> bytes:
    return u.unpack_string(MAX_DIRPATH_DECODE)


def pack_mntres(p: Packer, r: MntResult) -> None:
    p.pack_enum(r.status)
    if r.status == MountStat.MNT3_OK:
        p.pack_opaque(r.fhandle)
        p.pack_array(list(r.auth_flavors), p.pack_int)


def _pack_str(p: Packer, s: str) -> None:
    p.pack_string(s.encode("utf-8", "surrogateescape"))


def pack_mountlist(p: Packer, entries: Sequence[MountEntry]) -> None:
    """mountlist: (TRUE, hostname, directory)* FALSE."""
    for e in entries:
        p.pack_bool(True)
        _pack_str(p, e.hostname)
        _pack_str(p, e.directory)
    p.pack_bool(False)


def pack_exports(p: Packer, entries: Sequence[ExportEntry]) -> None:
    """exports: (TRUE, dirpath, groups)* FALSE; groups: (TRUE, name)* FALSE."""
    for e in entries:
        p.pack_bool(True)
        _pack_str(p, e.directory)
        for g in e.groups:
            p.pack_bool(True)
            _pack_str(p, g)
        p.pack_bool(False)
    p.pack_bool(False)


def group_names(clients: Sequence[Network]) -> tuple[str, ...]:
    """Client networks as exports(5) names: "*" for everyone, bare addresses for hosts."""
    if any(net in ALL_NETWORKS for net in clients):
        return ("*",)
    return tuple(
        str(net.network_address) if net.num_addresses == 1 else str(net) for net in clients
    )


# --- Procedures --------------------------------------------------------------------------------


class MountService:
    """The MOUNT v3 procedures over one ExportTable and Backend."""

    def __init__(
        self,
        backend: be.Backend,
        exports: ExportTable,
        make_handle: Callable[[Export, be.FileId], bytes],
        max_mounts: int = DEFAULT_MAX_MOUNTS,
    ) -> None:
        assert max_mounts > 0
        self.backend = backend
        self.exports = exports
        self.make_handle = make_handle
        self.max_mounts = max_mounts
        self._mounts: OrderedDict[MountEntry, None] = OrderedDict()

    def program(self) -> Program:
        procs = {
            MNTPROC3_NULL: Procedure("NULL", decode_void, self.null, encode_void),
            MNTPROC3_MNT: Procedure("MNT", unpack_dirpath, self.mnt, pack_mntres),
            MNTPROC3_DUMP: Procedure("DUMP", decode_void, self.dump, pack_mountlist),
            MNTPROC3_UMNT: Procedure("UMNT", unpack_dirpath, self.umnt, encode_void),
            MNTPROC3_UMNTALL: Procedure("UMNTALL", decode_void, self.umntall, encode_void),
            MNTPROC3_EXPORT: Procedure("EXPORT", decode_void, self.export, pack_exports),
        }
        return Program(MOUNT_PROG, "mount", {MOUNT_V3: procs})

    async def null(self, _ctx: CallContext, _args: None) -> None:
        return None

    async def mnt(self, ctx: CallContext, raw_path: bytes) -> MntResult:
        if len(raw_path) > MNTPATHLEN:
            return MntResult(MountStat.MNT3ERR_NAMETOOLONG)
        try:
            # Exports and Backend.export_root take paths as str, and backends encode each
            # name as UTF-8: a path that is not UTF-8 names nothing we can mount.
            path = normalize_path(raw_path.decode("utf-8"))
        except UnicodeDecodeError:
            log.info("%s: MNT %r: not UTF-8", ctx.client, raw_path[:64])
            return MntResult(MountStat.MNT3ERR_INVAL)
        export = self.exports.containing(path)
        if export is None:
            log.info("%s: MNT %r: no such export", ctx.client, path)
            return MntResult(MountStat.MNT3ERR_NOENT)
        try:
            self.exports.check_client(export, ctx.client)
        except be.FsError:  # address or port (logged and counted there): mountd answers
            return MntResult(MountStat.MNT3ERR_ACCES)  # MNT3ERR_ACCES to either
        try:
            fid = await self.backend.export_root(path)
        except be.FsError as e:
            status = _MNT_ERRORS.get(type(e), MountStat.MNT3ERR_SERVERFAULT)
            log.info("%s: MNT %s: %s (%s)", ctx.client, path, status.name, e)
            return MntResult(status)
        handle = self.make_handle(export, fid)
        assert len(handle) <= FHSIZE3, len(handle)
        self._remember(MountEntry(ctx.client[0], path))
        return MntResult(MountStat.MNT3_OK, handle, (AUTH_SYS, AUTH_NONE))

    def _remember(self, entry: MountEntry) -> None:
        self._mounts[entry] = None
        self._mounts.move_to_end(entry)
        while len(self._mounts) > self.max_mounts:
            self._mounts.popitem(last=False)

    async def dump(self, _ctx: CallContext, _args: None) -> Sequence[MountEntry]:
        return list(self._mounts)

    async def umnt(self, ctx: CallContext, raw_path: bytes) -> None:
        path = normalize_path(raw_path.decode("utf-8", "surrogateescape"))
        self._mounts.pop(MountEntry(ctx.client[0], path), None)

    async def umntall(self, ctx: CallContext, _args: None) -> None:
        for entry in [e for e in self._mounts if e.hostname == ctx.client[0]]:
            del self._mounts[entry]

    async def export(self, _ctx: CallContext, _args: None) -> Sequence[ExportEntry]:
        return [ExportEntry(e.path, group_names(e.clients)) for e in self.exports.all()]


def make_mount_program(
    backend: be.Backend,
    exports: ExportTable,
    make_handle: Callable[[Export, be.FileId], bytes],
    max_mounts: int = DEFAULT_MAX_MOUNTS,
) -> Program:
    """MOUNT v3 for `exports`, with root handles from `make_handle`."""
    return MountService(backend, exports, make_handle, max_mounts).program()
