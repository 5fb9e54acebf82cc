"""What every NFS version 3 handler shares: configuration, the backend, the export table, and
turning a file handle into (export, effective credentials, FileId).

Rules:
- Handlers are `async def proc(env, ctx, args) -> result` and raise FsError for every operating
  error; program.py wraps each one so that the FsError becomes its failure result through
  errors.py — the one place that maps errors.
- A handle is checked in this order (RFC 1813 §2.3.3, exports(5)): well-formed (BADHANDLE),
  export still configured and same file system (STALE), client allowed (ACCES; PERM for a port
  that is not reserved on a secure export), export writable for a modifying call (ROFS). Only
  then are credentials squashed and the backend called. Refusals are counted and logged by the
  export table.
- No I/O here but the backend's; no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from nfs_gateway.backend import (
    Access,
    Backend,
    Cred,
    FileId,
    NameTooLong,
    Stale,
    XDev,
)
from nfs_gateway.nfs3.const import KIB, MIB, NAME_MAX, PATH_MAX
from nfs_gateway.nfs3.fhandle import decode_fhandle, encode_fhandle
from nfs_gateway.program import CallContext

if TYPE_CHECKING:
    from nfs_gateway.exports import Export, ExportTable


HANDLE_MEMO_ENTRIES = 16384


@dataclass(frozen=True, slots=True)
class Nfs3Config:
    """Limits the server advertises (FSINFO, PATHCONF) and keeps to (RFC 1813 §3.3.19-20)."""

    rtmax: int = 1 * MIB
    rtpref: int = 1 * MIB
    rtmult: int = 4 * KIB
    wtmax: int = 1 * MIB
    wtpref: int = 1 * MIB
    wtmult: int = 4 * KIB
    dtpref: int = 64 * KIB
    maxfilesize: int = 2**63 - 1
    time_delta_ns: int = 1  # the server keeps times to the nanosecond
    linkmax: int = 65000
    # How many entries one READDIR / READDIRPLUS asks of the backend at most, whatever the
    # client's byte budget: bounds the work and the memory of one call.
    readdir_max_entries: int = 4096
    readdirplus_max_entries: int = 1024
    # Over UDP a reply must fit one datagram (64 KiB): READ is capped lower there, and FSINFO
    # says so, as Linux nfsd does for UDP clients.
    udp_xfer_max: int = 32 * KIB

    def __post_init__(self) -> None:
        assert 0 < self.rtmax <= 2**32 - 1 and 0 < self.wtmax <= 2**32 - 1
        assert self.readdir_max_entries > 0 and self.readdirplus_max_entries > 0
        assert 0 < self.udp_xfer_max <= 60 * KIB

    def for_transport(self, transport: str) -> Nfs3Config:
        """The limits that hold on `transport` ("tcp" or "udp")."""
        if transport != "udp":
            return self
        cap = self.udp_xfer_max
        return replace(
            self,
            rtmax=min(self.rtmax, cap),
            rtpref=min(self.rtpref, cap),
            wtmax=min(self.wtmax, cap),
            wtpref=min(self.wtpref, cap),
        )


@dataclass(frozen=True, slots=True)
class Target:
    """A file handle resolved for one call."""

    export: Export
    cred: Cred
    fid: FileId


@dataclass(frozen=True, slots=True)
class Env:
    backend: Backend
    exports: ExportTable
    config: Nfs3Config = field(default_factory=Nfs3Config)
    # export_id → the export's root FileId, so that ".." at an export's root stays inside it.
    # Bounded by the number of exports; durable ids, so it never goes stale silently.
    _roots: dict[int, FileId] = field(default_factory=dict)
    # Decoded handles (every call decodes one or two): bounded, cleared when full. A handle's
    # decoding never changes; whether its file still exists is the backend's answer each time.
    _handles: dict[bytes, tuple[int, int, FileId]] = field(default_factory=dict)

    def resolve(self, ctx: CallContext, fh: bytes, *, modify: bool = False) -> Target:
        """The export, effective credentials and FileId a handle names (order: module rules)."""
        decoded = self._handles.get(fh)
        if decoded is None:
            decoded = decode_fhandle(fh)
            if len(self._handles) >= HANDLE_MEMO_ENTRIES:
                self._handles.clear()
            self._handles[fh] = decoded
        export_id, fsid, fid = decoded
        export = self.exports.by_id(export_id)
        if export is None or fsid != self.backend.fsid:
            raise Stale(f"handle of export {export_id} fsid {fsid}: not served here")
        self.exports.check_client(export, ctx.client)
        if modify and export.read_only:
            raise self.exports.read_only(export, ctx.client)
        return Target(export, self.exports.effective_cred(export, ctx.cred), fid)

    def resolve_pair(
        self, ctx: CallContext, fh1: bytes, fh2: bytes, *, modify: bool
    ) -> tuple[Target, Target]:
        """Two handles of one call (RENAME, LINK): across exports is XDEV (§3.3.14, §3.3.15)."""
        t1 = self.resolve(ctx, fh1, modify=modify)
        t2 = self.resolve(ctx, fh2, modify=modify)
        if t1.export.export_id != t2.export.export_id:
            raise XDev("the two handles are in different exports")
        return t1, t2

    def handle(self, export: Export, fid: FileId) -> bytes:
        return encode_fhandle(export.export_id, self.backend.fsid, fid)

    def export_root_nowait(self, export: Export) -> FileId | None:
        return self._roots.get(export.export_id)

    async def export_root(self, export: Export) -> FileId:
        root = self._roots.get(export.export_id)
        if root is None:
            root = await self.backend.export_root(export.path)
            self._roots[export.export_id] = root
        return root


def check_name(name: bytes) -> None:
    """filename3 limits (§2.5, §3.3.3): longer than NAME_MAX is NAMETOOLONG, not garbage."""
    if len(name) > NAME_MAX:
        raise NameTooLong(f"name of {len(name)} bytes")
    # A component can hold neither "/" nor NUL, nor be empty; refused as Linux nfsd does
    # (nfsd_check_filename) before the backend could take it for a path.
    if not name or b"/" in name or b"\0" in name:
        raise Access(f"invalid file name {name!r}")


def check_path(path: bytes) -> None:
    """nfspath3 limit for symlink targets (§3.3.10)."""
    if len(path) > PATH_MAX:
        raise NameTooLong(f"path of {len(path)} bytes")
