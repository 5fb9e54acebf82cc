"""Metadata records and on-disk values (their codec: record_codec.py).

Rules:
- Every metadata change is a frozen dataclass record. A record is deterministic: it carries every
  value its effect needs (inode ids, generations, timestamps chosen by the proposer), so applying
  it on any replica, at any time, gives the same state. These are what Raft log entries carry.
- Each record touches state owned by one inode (its attributes, or a directory's entries), so a
  later cross-group transaction can split a `Multi` among the groups that own the inodes.
- Stored values (Inode, Dirent, CookieEntry) use the same codec.
- Evolution: a type may gain fields only at its end and only with defaults; an older encoding
  (fewer fields) decodes with those defaults. Anything else needs a new tag or VERSION
  (record_codec.py).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

from nfs_gateway.backend import FileType

# ---------------------------------------------------------------------------------------------
# Stored values


@dataclass(frozen=True, slots=True)
class Inode:
    ino: int
    gen: int
    ftype: FileType
    mode: int  # permission bits 07777
    uid: int
    gid: int
    size: int
    nlink: int
    rdev: tuple[int, int]
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    target: bytes = b""  # symlink target
    parent: int = 0  # directories: the inode of `..`
    verf: bytes = b""  # EXCLUSIVE create verifier (RFC 1813 §3.3.8)
    next_cookie: int = 0  # directories: cookie for the next entry
    chunk_size: int = 0  # regular files: fixed for the life of the file
    inline: bool = False  # small files: the bytes live in LevelDB (keys.inline_key), not chunks
    # The bucket behind the file (server/cluster/bucket.py). `store` names the export whose
    # object store holds it (0: none). Files: `okey` is the object's key and `etag` the version
    # read; the first `obase` bytes of the file are still those of that object (a truncate
    # lowers it). Directories: `okey` is the key prefix ("" or ending in "/"), `listed_ns`
    # when the directory's listing was last loaded (0: never).
    store: int = 0
    okey: bytes = b""
    etag: bytes = b""
    obase: int = 0
    listed_ns: int = 0
    # Write-back (server/cluster/flush.py). `pname` is the name under `parent` the inode's key
    # derives from (files too; `parent` of a file is the directory of that name). `dver`
    # counts the changes the bucket must see (content, attributes, name); the bucket holds
    # version `cver`; `cdirty`: the content changed since (else a copy of `okey` will do).
    pname: bytes = b""
    dver: int = 0
    cver: int = 0
    cdirty: bool = False


_INODE_FIELDS = tuple(Inode.__dataclass_fields__)
_inode_values = operator.attrgetter(*_INODE_FIELDS)
_new = object.__new__
_set = object.__setattr__


def replace_inode(inode: Inode, **changes: Any) -> Inode:
    """dataclasses.replace(inode, **changes) at half its cost: it runs several times in every
    namespace call. The same result, since Inode has no __post_init__ and no field that
    `replace` would leave out; an unknown name fails on the slots (AttributeError)."""
    new = _new(Inode)
    for name, value in zip(_INODE_FIELDS, _inode_values(inode), strict=True):
        _set(new, name, value)
    for name, value in changes.items():
        _set(new, name, value)
    return new


@dataclass(frozen=True, slots=True)
class Dirent:
    ino: int
    cookie: int
    ftype: FileType


@dataclass(frozen=True, slots=True)
class CookieEntry:
    name: bytes
    ino: int
    ftype: FileType


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True, slots=True)
class CreateInode:
    ino: int
    gen: int
    ftype: FileType
    mode: int
    uid: int
    gid: int
    nlink: int
    time_ns: int
    rdev: tuple[int, int] = (0, 0)
    target: bytes = b""
    parent: int = 0
    verf: bytes = b""
    chunk_size: int = 0
    size: int = 0
    pname: bytes = b""  # the name it is created under (write-back derives its key from it)
    store: int = 0  # created in a directory bound to this store: dirty from the start


@dataclass(frozen=True, slots=True)
class LinkDirent:
    """Add `name` -> ino to directory dir_ino (takes the directory's next cookie)."""

    dir_ino: int
    name: bytes
    ino: int
    ftype: FileType
    time_ns: int


@dataclass(frozen=True, slots=True)
class UnlinkDirent:
    dir_ino: int
    name: bytes
    time_ns: int
    expect_ino: int = 0  # if set: the name must still point at this inode (else STALE)


@dataclass(frozen=True, slots=True)
class AdjustLinks:
    """nlink += delta; an inode whose nlink reaches 0 is deleted with its data."""

    ino: int
    delta: int
    time_ns: int


@dataclass(frozen=True, slots=True)
class SetParent:
    """A directory moved to another parent (its `..`)."""

    ino: int
    parent: int
    time_ns: int


@dataclass(frozen=True, slots=True)
class SetAttr:
    """SETATTR's effect, already checked. None leaves a field alone; ctime is always set."""

    ino: int
    ctime_ns: int
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None


@dataclass(frozen=True, slots=True)
class WriteMeta:
    """The metadata half of WRITEs: size = max(size, end), mtime = ctime = time."""

    ino: int
    end: int
    time_ns: int
    clear_suid: bool = False


@dataclass(frozen=True, slots=True)
class WriteInline:
    """A WRITE to a small file whose bytes live in LevelDB: the data travels in the record.
    Applies to an inline file, or to an empty one (which becomes inline)."""

    ino: int
    offset: int
    data: bytes
    time_ns: int
    clear_suid: bool = False


@dataclass(frozen=True, slots=True)
class UnInline:
    """The file outgrew inline storage; its bytes were copied to chunk 0 (durably) first.
    With `to_chunk` (the cluster) the apply itself moves them: a chunk-0 write effect."""

    ino: int
    to_chunk: bool = False


@dataclass(frozen=True, slots=True)
class ChunkWrite:
    """Bytes of chunk `index` of `ino` at [offset, offset+len(data)) inside the chunk, in the
    group that holds that chunk (the inode's group for chunk 0). The bytes travel in the record,
    so the Raft log keeps them durable; the chunk file write is a data effect of the apply."""

    ino: int
    index: int
    offset: int
    data: bytes
    chunk_size: int


@dataclass(frozen=True, slots=True)
class ChunkTrim:
    """Truncate: drop the bytes at or past file offset `keep` from the chunks of `ino` that
    this group holds (a data effect; the size itself changes by SetAttr in the inode's group)."""

    ino: int
    chunk_size: int
    keep: int


@dataclass(frozen=True, slots=True)
class ChunkDelete:
    """The last link went: delete the chunks of `ino` this group holds (a data effect)."""

    ino: int


@dataclass(frozen=True, slots=True)
class ExpectInode:
    """Check only: the inode is still what the proposer read, else the batch is refused
    (reasons in server/fs/state.py). -1 / 0 / False: that field is not checked. `empty`: a
    directory with no entries (ENOTEMPTY); `parent`: a directory's `..` (rename's ancestor
    walk: a racing rename that moves an ancestor makes this fail); `okey` when `has_okey`:
    the key of the inode's object that a KeyHold or KeyRelease of the same plan names (a
    write-back that marked the inode clean at another key meanwhile makes this fail);
    `etag` (b"": unchecked, unless `has_etag`) and `obase`: the object version and its length
    in the file that a WRITE was planned at (a write-back that marked the file clean since
    makes this fail: bases read before may miss bytes the object has now, and a chunk planned
    as the file's own may be only a clean, evictable copy of the object now)."""

    ino: int
    gen: int = 0
    nlink: int = -1
    parent: int = -1
    size: int = -1
    empty: bool = False
    okey: bytes = b""
    has_okey: bool = False
    etag: bytes = b""
    obase: int = -1
    has_etag: bool = False


@dataclass(frozen=True, slots=True)
class SetOrigin:
    """Bind the inode to the bucket (server/cluster/bucket.py): where its bytes or entries are,
    and which version. Files: size and mtime become the object's, `obase` its size."""

    ino: int
    store: int
    okey: bytes
    etag: bytes = b""
    size: int = -1  # files: the object's size (-1: directories, left alone)
    mtime_ns: int = 0  # files: the object's LastModified (0: left alone)


@dataclass(frozen=True, slots=True)
class SetListed:
    """The directory's listing was loaded from the bucket at `listed_ns` (the loader's clock)."""

    ino: int
    listed_ns: int


@dataclass(frozen=True, slots=True)
class MaterializeChunk:
    """The bucket bytes of chunk `index` become part of the replicated state before a change
    to that chunk: the whole chunk travels in the record. A chunk already materialized is left
    alone (a racing writer's bytes are never overwritten by a stale base)."""

    ino: int
    index: int
    chunk_size: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ExpectChunk:
    """Check only: chunk `index` of `ino` is materialized here (else UNMATERIALIZED: the
    proposer fetches the bucket bytes and sends MaterializeChunk first)."""

    ino: int
    index: int


@dataclass(frozen=True, slots=True)
class SetName:
    """The inode's primary name is now `pname` in directory `parent` (RENAME; pname b"":
    the name it had is gone but other links remain). A directory's `..` moves with it."""

    ino: int
    parent: int
    pname: bytes
    time_ns: int


@dataclass(frozen=True, slots=True)
class Unpin:
    """Chunk `index` of `ino` here is exactly object version `etag` (write-back uploaded it at
    chunk version `version`, keys.materialized_key): unless it changed since, it becomes a
    clean cached copy that eviction may drop."""

    ino: int
    index: int
    version: int
    etag: bytes


@dataclass(frozen=True, slots=True)
class SetClean:
    """The bucket holds version `dver` of the inode at `okey` (write-back confirmed it, ETag
    `etag`); refused (STALE) if the inode changed since. Files: `size` bytes of object."""

    ino: int
    dver: int
    okey: bytes
    etag: bytes
    size: int = 0


@dataclass(frozen=True, slots=True)
class KeyClaim:
    """Write-back is about to write `key` (of `store`) for inode `ino` (flush.py key table),
    at the inode's version `dver` (-1: unchecked): refused when the inode, held in the same
    group, is at another version already (a round that read it before a change).

    `round` (non-zero) holds the key for that write-back round until `until_ns` (the
    proposer's wall clock; `now_ns` is its clock when it proposed): any other claim is
    refused until the holder lets go (KeyLive, KeyUnclaim) or its lease ran out. A claim by
    the round that holds the key only extends the lease (`ino` 0: only that). One writer per
    key, per round: two rounds of one inode on two nodes (a leader change) otherwise both
    wrote the bucket, and the older one's PUT could land last (FINDINGS.md 11)."""

    store: int
    key: bytes
    ino: int
    dver: int = -1
    round: int = 0
    until_ns: int = 0
    now_ns: int = 0


@dataclass(frozen=True, slots=True)
class KeyHold:
    """A RENAME or a link's removal moves inode `ino` away from `key`, where the bucket has
    its version: nobody else may write there until write-back released it (a directory's
    prefix holds every key under it)."""

    store: int
    key: bytes
    ino: int


@dataclass(frozen=True, slots=True)
class KeyLive:
    """`key` now holds inode `ino`'s confirmed version, written by `round` (non-zero:
    refused unless that round still holds the key; the hold ends)."""

    store: int
    key: bytes
    ino: int
    round: int = 0


@dataclass(frozen=True, slots=True)
class KeyUnclaim:
    """Write-back round `round` is done with `key` without marking it live (its file changed,
    the store failed): the hold ends, if it is still that round's."""

    store: int
    key: bytes
    round: int


@dataclass(frozen=True, slots=True)
class KeyRelease:
    """Inode `ino` no longer needs `key`: with `delete` the object is to be deleted (the
    flusher does it, then KeyGone); else the entry just goes."""

    store: int
    key: bytes
    ino: int
    delete: bool = True


@dataclass(frozen=True, slots=True)
class KeyGone:
    """The object at `key` was deleted for `ino`: drop the entry if it is still that."""

    store: int
    key: bytes
    ino: int


@dataclass(frozen=True, slots=True)
class Multi:
    """Records applied atomically, in order (a local transaction)."""

    records: tuple[Any, ...]


Record = (
    CreateInode
    | LinkDirent
    | UnlinkDirent
    | AdjustLinks
    | SetParent
    | SetAttr
    | WriteMeta
    | WriteInline
    | UnInline
    | ChunkWrite
    | ChunkTrim
    | ChunkDelete
    | ExpectInode
    | SetOrigin
    | SetListed
    | MaterializeChunk
    | ExpectChunk
    | SetName
    | SetClean
    | Unpin
    | KeyHold
    | KeyClaim
    | KeyLive
    | KeyRelease
    | KeyGone
    | KeyUnclaim
    | Multi
)
