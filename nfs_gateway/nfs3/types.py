"""NFS version 3 arguments and results as frozen dataclasses (RFC 1813 §3.3).

Rules:
- One class per distinct RFC structure; procedures whose arguments have the same shape share a
  class (GETATTR, READLINK, FSSTAT, FSINFO and PATHCONF all take one nfs_fh3).
- A result carries its nfsstat3 and the fields of both arms: the failure arm's wcc_data or
  post_op_attr fields are always there; the success arm's fields keep their defaults when the
  status is not OK. Encoders (codec_res.py) write only the arm the status selects.
- File handles are opaque bytes here; handlers decode them (fhandle.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from nfs_gateway.backend import (
    Attr,
    CreateMode,
    FileType,
    FsStat,
    SetAttrs,
    StableHow,
    Wcc,
)
from nfs_gateway.nfs3.const import Stat

NO_WCC = Wcc()
ZERO_VERF = bytes(8)

# --- arguments (§3.3.x, *3args) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FhArgs:
    """GETATTR3args, READLINK3args, FSSTAT3args, FSINFO3args, PATHCONF3args."""

    fh: bytes


@dataclass(frozen=True, slots=True)
class DirOpArgs:
    """diropargs3 (§2.6): LOOKUP3args, REMOVE3args, RMDIR3args; part of others."""

    dir: bytes
    name: bytes


@dataclass(frozen=True, slots=True)
class SetattrArgs:
    fh: bytes
    sattr: SetAttrs
    guard_ctime_ns: int | None  # sattrguard3: the ctime the client expects (§3.3.2)


@dataclass(frozen=True, slots=True)
class AccessArgs:
    fh: bytes
    access: int


@dataclass(frozen=True, slots=True)
class ReadArgs:
    fh: bytes
    offset: int
    count: int


@dataclass(frozen=True, slots=True)
class WriteArgs:
    fh: bytes
    offset: int
    count: int
    stable: StableHow
    data: bytes | memoryview  # a view into the record: not copied (§3.3.7)


@dataclass(frozen=True, slots=True)
class CreateArgs:
    """CREATE3args (§3.3.8). sattr is SetAttrs() and verf is set only for EXCLUSIVE."""

    where: DirOpArgs
    how: CreateMode
    sattr: SetAttrs = field(default_factory=SetAttrs)
    verf: bytes | None = None


@dataclass(frozen=True, slots=True)
class MkdirArgs:
    where: DirOpArgs
    sattr: SetAttrs


@dataclass(frozen=True, slots=True)
class SymlinkArgs:
    where: DirOpArgs
    sattr: SetAttrs
    target: bytes


@dataclass(frozen=True, slots=True)
class MknodArgs:
    """MKNOD3args (§3.3.11). For REG, DIR and LNK the union arm is void: defaults stay."""

    where: DirOpArgs
    ftype: FileType
    sattr: SetAttrs = field(default_factory=SetAttrs)
    rdev: tuple[int, int] = (0, 0)


@dataclass(frozen=True, slots=True)
class RenameArgs:
    source: DirOpArgs
    target: DirOpArgs


@dataclass(frozen=True, slots=True)
class LinkArgs:
    fh: bytes
    link: DirOpArgs


@dataclass(frozen=True, slots=True)
class ReaddirArgs:
    dir: bytes
    cookie: int
    cookieverf: bytes
    count: int


@dataclass(frozen=True, slots=True)
class ReaddirplusArgs:
    dir: bytes
    cookie: int
    cookieverf: bytes
    dircount: int
    maxcount: int


@dataclass(frozen=True, slots=True)
class CommitArgs:
    fh: bytes
    offset: int
    count: int


# --- results (*3res) ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GetattrRes:
    status: Stat
    attr: Attr | None = None  # resok only


@dataclass(frozen=True, slots=True)
class WccRes:
    """SETATTR3res, REMOVE3res, RMDIR3res: wcc_data in both arms."""

    status: Stat
    wcc: Wcc = NO_WCC


@dataclass(frozen=True, slots=True)
class LookupRes:
    status: Stat
    dir_attr: Attr | None = None  # both arms
    fh: bytes = b""
    obj_attr: Attr | None = None


@dataclass(frozen=True, slots=True)
class AccessRes:
    status: Stat
    obj_attr: Attr | None = None  # both arms
    access: int = 0


@dataclass(frozen=True, slots=True)
class ReadlinkRes:
    status: Stat
    attr: Attr | None = None  # both arms
    target: bytes = b""


@dataclass(frozen=True, slots=True)
class ReadRes:
    status: Stat
    attr: Attr | None = None  # both arms
    count: int = 0
    eof: bool = False
    data: bytes | memoryview = b""


@dataclass(frozen=True, slots=True)
class WriteRes:
    status: Stat
    wcc: Wcc = NO_WCC  # both arms
    count: int = 0
    committed: StableHow = StableHow.UNSTABLE
    verf: bytes = ZERO_VERF


@dataclass(frozen=True, slots=True)
class CreateRes:
    """CREATE3res, MKDIR3res, SYMLINK3res, MKNOD3res (§3.3.8-§3.3.11)."""

    status: Stat
    dir_wcc: Wcc = NO_WCC  # both arms
    fh: bytes | None = None  # post_op_fh3
    obj_attr: Attr | None = None


@dataclass(frozen=True, slots=True)
class RenameRes:
    status: Stat
    from_wcc: Wcc = NO_WCC  # both arms
    to_wcc: Wcc = NO_WCC


@dataclass(frozen=True, slots=True)
class LinkRes:
    status: Stat
    attr: Attr | None = None  # both arms
    dir_wcc: Wcc = NO_WCC


@dataclass(frozen=True, slots=True)
class Entry3:
    fileid: int
    name: bytes
    cookie: int


@dataclass(frozen=True, slots=True)
class EntryPlus3:
    fileid: int
    name: bytes
    cookie: int
    attr: Attr | None = None
    fh: bytes | None = None


@dataclass(frozen=True, slots=True)
class ReaddirRes:
    status: Stat
    dir_attr: Attr | None = None  # both arms
    cookieverf: bytes = ZERO_VERF
    entries: Sequence[Entry3] = ()
    eof: bool = False


@dataclass(frozen=True, slots=True)
class ReaddirplusRes:
    status: Stat
    dir_attr: Attr | None = None  # both arms
    cookieverf: bytes = ZERO_VERF
    entries: Sequence[EntryPlus3] = ()
    eof: bool = False


@dataclass(frozen=True, slots=True)
class FsstatRes:
    status: Stat
    attr: Attr | None = None  # both arms
    stat: FsStat | None = None  # resok only


@dataclass(frozen=True, slots=True)
class FsInfo:
    """FSINFO3resok minus its attributes (§3.3.19)."""

    rtmax: int
    rtpref: int
    rtmult: int
    wtmax: int
    wtpref: int
    wtmult: int
    dtpref: int
    maxfilesize: int
    time_delta_ns: int
    properties: int


@dataclass(frozen=True, slots=True)
class FsinfoRes:
    status: Stat
    attr: Attr | None = None  # both arms
    info: FsInfo | None = None  # resok only


@dataclass(frozen=True, slots=True)
class PathConf:
    """PATHCONF3resok minus its attributes (§3.3.20)."""

    linkmax: int
    name_max: int
    no_trunc: bool
    chown_restricted: bool
    case_insensitive: bool
    case_preserving: bool


@dataclass(frozen=True, slots=True)
class PathconfRes:
    status: Stat
    attr: Attr | None = None  # both arms
    conf: PathConf | None = None  # resok only


@dataclass(frozen=True, slots=True)
class CommitRes:
    status: Stat
    wcc: Wcc = NO_WCC  # both arms
    verf: bytes = ZERO_VERF
