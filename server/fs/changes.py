"""The state machine's vocabulary (server/fs/state.py applies records with it): why a record
is refused (StateError and its reasons), the data effects a batch asks of the chunk files, the
View of the state before a batch, Changes (a batch's effects, read through by later records of
the same batch), and KvView, a View straight over LevelDB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from server.fs import keys
from server.fs.record_codec import decode, encode
from server.fs.records import CookieEntry, Dirent, Inode
from storage.kv import KvStore

# Cookies 1 and 2 are `.` and `..` (RFC 1813 §3.3.16: a cookie names a position); entries
# start after them.
FIRST_COOKIE = 3


# Why a record does not apply (StateError.reason; the cluster's txn abort reasons).
EEXIST = "EEXIST"  # LinkDirent over an existing name
ENOENT = "ENOENT"  # an inode or a name the record needs is gone
ENOTEMPTY = "ENOTEMPTY"  # ExpectInode(empty=True) of a directory with entries
STALE = "STALE"  # the state moved under the proposer in another way (re-read and rebuild)
UNMATERIALIZED = "UNMATERIALIZED"  # ExpectChunk: the chunk's bucket bytes are not local yet
KEYBUSY = "KEYBUSY"  # KeyClaim: another inode holds that bucket key


class StateError(Exception):
    """A record that does not apply to the current state; `reason` says why (above)."""

    def __init__(self, msg: str, reason: str = STALE) -> None:
        super().__init__(msg)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class WriteEffect:
    """Write `data` at file offset `offset` of ino's chunk files."""

    ino: int
    chunk_size: int
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class TrimEffect:
    """Drop the bytes at or past file offset `keep` of ino's chunk files held here."""

    ino: int
    chunk_size: int
    keep: int


@dataclass(frozen=True, slots=True)
class DeleteEffect:
    """Delete every chunk file of ino held here."""

    ino: int


@dataclass(frozen=True, slots=True)
class AdoptEffect:
    """Chunk `index` of ino held here is a clean copy of object version `etag` now (the
    node's chunk cache takes it: storage/chunkcache.py)."""

    ino: int
    index: int
    etag: bytes


Effect = WriteEffect | TrimEffect | DeleteEffect | AdoptEffect


class View(Protocol):
    """The state before this batch. Implementations may cache; they must not see `changes`."""

    def inode(self, ino: int) -> Inode | None: ...

    def dirent(self, dir_ino: int, name: bytes) -> Dirent | None: ...

    def meta_int(self, key: bytes) -> int: ...

    def inline(self, ino: int) -> bytes:
        """The stored bytes of an inline file (b"" if none)."""
        ...

    def entry_names(self, dir_ino: int, limit: int) -> list[bytes]:
        """Up to `limit` names of the directory (any order). Only the cluster's ExpectInode
        (empty=True) asks; LocalBackend never applies one, so its cache view may omit it."""
        ...

    # Optional (the cluster's views): `marked_chunks(ino)`, the indexes of ino's chunks that
    # are materialized here (keys.materialized_key); `raw(key)`, any stored value (write-back
    # tables). Views without them have none.


class Changes:
    """The effects of one batch of records."""

    def __init__(self) -> None:
        self.ops: dict[bytes, bytes | None] = {}
        self.inodes: dict[int, Inode | None] = {}
        self.dirents: dict[tuple[int, bytes], Dirent | None] = {}
        self.inlines: dict[int, bytes | None] = {}
        self.meta: dict[bytes, int] = {}
        self.delete_data: dict[int, int] = {}  # inodes gone (-> last size): remove chunks
        self.trim_data: dict[int, tuple[int, int]] = {}  # ino -> (chunk_size, keep bytes)
        self.effects: list[Effect] = []  # every data effect, in order (module rules)

    def batch(self) -> list[tuple[bytes, bytes | None]]:
        return list(self.ops.items())

    def __bool__(self) -> bool:
        return bool(self.ops)

    # Reads through the batch.
    def inode(self, view: View, ino: int) -> Inode | None:
        if ino in self.inodes:
            return self.inodes[ino]
        return view.inode(ino)

    def dirent(self, view: View, dir_ino: int, name: bytes) -> Dirent | None:
        if (dir_ino, name) in self.dirents:
            return self.dirents[(dir_ino, name)]
        return view.dirent(dir_ino, name)

    def meta_int(self, view: View, key: bytes) -> int:
        if key in self.meta:
            return self.meta[key]
        return view.meta_int(key)

    def inline(self, view: View, ino: int) -> bytes:
        if ino in self.inlines:
            return self.inlines[ino] or b""
        return view.inline(ino)

    def has_entries(self, view: View, dir_ino: int) -> bool:
        gone = set()
        for (d, name), ent in self.dirents.items():
            if d == dir_ino:
                if ent is not None:
                    return True
                gone.add(name)
        return any(n not in gone for n in view.entry_names(dir_ino, len(gone) + 1))

    def raw(self, view: View, key: bytes) -> bytes | None:
        if key in self.ops:
            return self.ops[key]
        get = getattr(view, "raw", None)
        return None if get is None else get(key)

    # Writes.
    def put_inode(self, inode: Inode) -> None:
        self.inodes[inode.ino] = inode
        self.ops[keys.inode_key(inode.ino)] = encode(inode)
        if inode.store:  # the write-back index: inodes the bucket lacks (flush.py)
            self.ops[keys.dirty_key(inode.ino)] = b"" if inode.dver != inode.cver else None

    def delete_inode(self, ino: int) -> None:
        self.inodes[ino] = None
        self.ops[keys.inode_key(ino)] = None
        self.ops[keys.dirty_key(ino)] = None

    def put_raw(self, key: bytes, value: bytes | None) -> None:
        self.ops[key] = value

    def put_dirent(self, dir_ino: int, name: bytes, d: Dirent) -> None:
        self.dirents[(dir_ino, name)] = d
        self.ops[keys.dirent_key(dir_ino, name)] = encode(d)
        self.ops[keys.cookie_key(dir_ino, d.cookie)] = encode(CookieEntry(name, d.ino, d.ftype))

    def delete_dirent(self, dir_ino: int, name: bytes, old: Dirent) -> None:
        self.dirents[(dir_ino, name)] = None
        self.ops[keys.dirent_key(dir_ino, name)] = None
        self.ops[keys.cookie_key(dir_ino, old.cookie)] = None

    def put_inline(self, ino: int, data: bytes) -> None:
        self.inlines[ino] = data
        self.ops[keys.inline_key(ino)] = data

    def delete_inline(self, ino: int) -> None:
        self.inlines[ino] = None
        self.ops[keys.inline_key(ino)] = None

    def put_meta(self, key: bytes, value: int) -> None:
        self.meta[key] = value
        self.ops[key] = keys.u64(value)

    def delete_meta(self, key: bytes) -> None:
        self.meta[key] = 0
        self.ops[key] = None

    def trim(self, ino: int, chunk_size: int, keep: int) -> None:
        prev = self.trim_data.get(ino)
        self.trim_data[ino] = (chunk_size, keep if prev is None else min(prev[1], keep))
        self.effects.append(TrimEffect(ino, chunk_size, keep))


# Reading the state from LevelDB (worker threads only: these block).

class KvView:
    """A View straight over LevelDB, for the apply loop and bulk loaders in worker threads."""

    def __init__(self, kv: KvStore) -> None:
        self.kv = kv

    def inode(self, ino: int) -> Inode | None:
        raw = self.kv.get_sync(keys.inode_key(ino))
        return None if raw is None else decode(raw)

    def dirent(self, dir_ino: int, name: bytes) -> Dirent | None:
        raw = self.kv.get_sync(keys.dirent_key(dir_ino, name))
        return None if raw is None else decode(raw)

    def meta_int(self, key: bytes) -> int:
        return keys.decode_u64(self.kv.get_sync(key))

    def inline(self, ino: int) -> bytes:
        return self.kv.get_sync(keys.inline_key(ino)) or b""

    def entry_names(self, dir_ino: int, limit: int) -> list[bytes]:
        rows = self.kv.iterate_sync(prefix=keys.dirent_prefix(dir_ino), limit=limit)
        return [keys.parse_dirent_key(k)[1] for k, _ in rows]
