"""The txn Application over the file-system state machine (txn/state.py, server/fs/state.py).

Rules:
- A group's ops are `record_codec.encode(Multi(records))` (encode_ops / decode_ops): the records of
  one transaction that live in this group, applied atomically and in order.
- `locks_of(ops)`: the owning inode id of every record, sorted and unique. Every record reads
  and writes only state owned by its inode (an inode's attributes, a directory's entries, a
  chunk of a file in this group), so the locks cover everything `check` reads (txn rule).
- `check(ops, view)` is a dry run of server/fs/state.apply into a throwaway Changes: None, or
  the StateError's reason (EEXIST, ENOENT, ENOTEMPTY, STALE), which becomes the abort reason
  the gateway sees in TxnReply.reason. Undecodable ops are a gateway bug: INVALID.
- `apply(ops, view, batch)` is the real apply: the Changes' LevelDB puts and deletes go into the
  txn batch, and its data effects (chunk writes, trims, deletes) are appended, in order, to a
  list the runtime drains with `take_effects()` after the batch of entries is applied and
  performs with `perform_effects_sync` BEFORE writing the LevelDB batch (statemachine.py). The
  effects are idempotent (writing the same bytes, trimming, deleting again), so a crash between
  the two replays the records and performs them again.
- Pure: no clock, no I/O (perform_effects_sync is the I/O, called by the runtime).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable

from nfs_gateway.backend import FileType
from server.fs import keys, record_codec
from server.fs import state as fs_state
from server.fs.changes import (
    EEXIST,
    ENOENT,
    ENOTEMPTY,
    STALE,
    UNMATERIALIZED,
    AdoptEffect,
    Changes,
    DeleteEffect,
    Effect,
    StateError,
    TrimEffect,
    WriteEffect,
)
from server.fs.config import FsConfig
from server.fs.keys import decode_u64
from server.fs.record_codec import RecordError
from server.fs.records import (
    AdjustLinks,
    ChunkDelete,
    ChunkTrim,
    ChunkWrite,
    CreateInode,
    Dirent,
    ExpectChunk,
    ExpectInode,
    Inode,
    KeyClaim,
    KeyGone,
    KeyHold,
    KeyLive,
    KeyRelease,
    KeyUnclaim,
    LinkDirent,
    MaterializeChunk,
    Multi,
    SetAttr,
    SetClean,
    SetListed,
    SetName,
    SetOrigin,
    SetParent,
    UnInline,
    UnlinkDirent,
    Unpin,
    WriteInline,
    WriteMeta,
)
from storage.chunks import ChunkStore
from txn.kv import KvBatch, KvView

__all__ = ["EEXIST", "ENOENT", "ENOTEMPTY", "INVALID", "MISPLACED", "MOVING", "STALE",
           "UNMATERIALIZED",
           "FsApplication", "decode_ops", "encode_ops", "flat", "owner_of", "perform_effects_sync",
           "root_ops"]

INVALID = "INVALID"  # ops that do not decode: a gateway bug
MOVING = "MOVING"  # the state is moving to another group (a ring change): wait and retry
MISPLACED = "MISPLACED"  # the group's ring does not place this state here: plan again
ROOT_INO = 1
_DECODED_CACHE = 64  # locks_of, check and apply of one ops decode it once
_DECODED_MAX_BYTES = 16 << 10  # larger ops are not kept
_MAX_CHUNKS = 65_536  # materialized chunks of one file unmarked at once (1 TiB of 16 MiB chunks)

# The inode that owns each record's state (its lock).
_OWNER = {
    CreateInode: lambda r: r.ino,
    LinkDirent: lambda r: r.dir_ino,
    UnlinkDirent: lambda r: r.dir_ino,
    AdjustLinks: lambda r: r.ino,
    SetParent: lambda r: r.ino,
    SetAttr: lambda r: r.ino,
    WriteMeta: lambda r: r.ino,
    WriteInline: lambda r: r.ino,
    UnInline: lambda r: r.ino,
    ChunkWrite: lambda r: r.ino,
    ChunkTrim: lambda r: r.ino,
    ChunkDelete: lambda r: r.ino,
    ExpectInode: lambda r: r.ino,
    SetOrigin: lambda r: r.ino,
    SetListed: lambda r: r.ino,
    MaterializeChunk: lambda r: r.ino,
    ExpectChunk: lambda r: r.ino,
    SetName: lambda r: r.ino,
    SetClean: lambda r: r.ino,
    Unpin: lambda r: r.ino,
    KeyHold: lambda r: key_lock(r.store, r.key),
    KeyClaim: lambda r: key_lock(r.store, r.key),
    KeyLive: lambda r: key_lock(r.store, r.key),
    KeyRelease: lambda r: key_lock(r.store, r.key),
    KeyGone: lambda r: key_lock(r.store, r.key),
    KeyUnclaim: lambda r: key_lock(r.store, r.key),
}


def key_lock(store: int, key: bytes) -> int:
    """The txn lock of a bucket key (write-back's key table): above every inode id, which
    are below 2**63 (inoalloc.py), so it never collides with an inode's lock."""
    digest = hashlib.blake2b(store.to_bytes(4, "big") + key, digest_size=8).digest()
    return (1 << 63) | (int.from_bytes(digest, "big") >> 1)


def owner_of(record: object) -> int:
    """The inode whose state `record` reads and writes (its lock)."""
    return _OWNER[type(record)](record)


def encode_ops(recs: Iterable[object]) -> bytes:
    """The ops of one group: its records, applied atomically in order."""
    return record_codec.encode(Multi(tuple(recs)))


def decode_ops(ops: bytes) -> tuple[object, ...]:
    m = record_codec.decode(ops)
    if not isinstance(m, Multi):
        raise record_codec.CorruptRecord(f"ops are a {type(m).__name__}, not a Multi")
    return m.records


def root_ops(gen: int, time_ns: int, mode: int, uid: int, gid: int) -> bytes:
    """The ops creating the root directory: inode 1, its own parent (the runtime proposes them
    as a TxnLocal in inode 1's group when the state has no root)."""
    return encode_ops([CreateInode(ino=ROOT_INO, gen=gen, ftype=FileType.DIR, mode=mode, uid=uid,
                                   gid=gid, nlink=2, time_ns=time_ns, parent=ROOT_INO)])


class KvFsView:
    """server/fs/state.View over a txn KvView (get/scan): the applied state, plus the writes of
    earlier records of the same batch when the runtime's view reads its own writes."""

    __slots__ = ("kv",)

    def __init__(self, kv: KvView) -> None:
        self.kv = kv

    def inode(self, ino: int) -> Inode | None:
        raw = self.kv.get(keys.inode_key(ino))
        return None if raw is None else record_codec.decode_value(raw)

    def dirent(self, dir_ino: int, name: bytes) -> Dirent | None:
        raw = self.kv.get(keys.dirent_key(dir_ino, name))
        return None if raw is None else record_codec.decode_value(raw)

    def meta_int(self, key: bytes) -> int:
        return decode_u64(self.kv.get(key))

    def inline(self, ino: int) -> bytes:
        return self.kv.get(keys.inline_key(ino)) or b""

    def entry_names(self, dir_ino: int, limit: int) -> list[bytes]:
        rows = self.kv.scan(keys.dirent_prefix(dir_ino), limit)
        return [keys.parse_dirent_key(k)[1] for k, _ in rows]

    def raw(self, key: bytes) -> bytes | None:
        return self.kv.get(key)

    def marked_chunks(self, ino: int) -> list[int]:
        rows = self.kv.scan(keys.materialized_prefix(ino), _MAX_CHUNKS)
        return [keys.parse_materialized_key(k)[1] for k, v in rows if decode_u64(v)]


class FsApplication:
    """txn.state.Application for the file system, plus the data effects of its applies.

    The runtime builds one per group: `TxnState(app)` for the txn tables, and after each
    applied batch `perform_effects_sync(app.take_effects(), chunks)` before its LevelDB write.
    """

    def __init__(self, config: FsConfig | None = None) -> None:
        self.config = config or FsConfig()
        self._effects: list[Effect] = []
        self._decoded: OrderedDict[bytes, tuple[object, ...]] = OrderedDict()
        # Set by the state machine from its NodeList and a pending ring change
        # (ringstate.Guard): a reason (MOVING, MISPLACED) aborts the records. Derived from
        # the replicated state, so every replica decides alike.
        self.guard: Callable[[tuple[object, ...]], str | None] | None = None
        # The last check's result, for an apply of the same ops object on the same view object
        # right after it (TxnState's check-then-apply of a local txn or a decision): applying
        # is the check's dry run again, a tenth of a bucket listing's CPU. Both objects are
        # held, so their ids cannot be reused; any other check or apply replaces or drops it.
        self._checked: tuple[bytes, KvView, Changes] | None = None

    def _records(self, ops: bytes) -> tuple[object, ...]:
        hit = self._decoded.get(ops)
        if hit is not None:
            return hit
        recs = decode_ops(ops)
        if len(ops) > _DECODED_MAX_BYTES:
            return recs  # a WRITE's bytes: decoding again is a copy, keeping it costs memory
        self._decoded[ops] = recs
        if len(self._decoded) > _DECODED_CACHE:
            self._decoded.popitem(last=False)
        return recs

    def locks_of(self, ops: bytes) -> tuple[int, ...]:
        try:
            recs = self._records(ops)
        except RecordError:
            return ()  # check() refuses them
        return tuple(sorted({owner_of(r) for r in flat(recs)}))

    def check(self, ops: bytes, view: KvView) -> str | None:
        self._checked = None
        try:
            recs = self._records(ops)
            if self.guard is not None:
                refused = self.guard(recs)
                if refused is not None:
                    return refused
            changes = Changes()
            fs_state.apply(Multi(recs), KvFsView(view), changes, 0)
        except RecordError:
            return INVALID
        except StateError as e:
            return e.reason
        self._checked = (ops, view, changes)
        return None

    def apply(self, ops: bytes, view: KvView, batch: KvBatch) -> None:
        checked, self._checked = self._checked, None
        if checked is not None and checked[0] is ops and checked[1] is view:
            changes = checked[2]
        else:
            changes = Changes()
            fs_state.apply(Multi(self._records(ops)), KvFsView(view), changes, 0)
        for key, value in changes.ops.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        self._effects.extend(changes.effects)

    def take_effects(self) -> list[Effect]:
        """The data effects applied since the last call, in order (the runtime drains them
        once per applied batch, and also after a failed batch, to drop them)."""
        out, self._effects = self._effects, []
        return out


def flat(recs: Iterable[object]) -> Iterable[object]:
    """The records, Multi ones opened up (in order)."""
    for r in recs:
        if isinstance(r, Multi):
            yield from flat(r.records)
        else:
            yield r


def perform_effects_sync(effects: list[Effect], chunks: ChunkStore) -> None:
    """Make the data effects on this node's chunk files, in order, and durable (worker
    thread). Idempotent: a crash before the batch that produced them is written replays them.

    Durable before returning, because the caller then writes the batch that advances the
    applied index: after a power loss that index must not be ahead of the chunk bytes, since
    a replay answers records it finds decided from the txn tables without applying them again.
    One fsync per touched inode per applied batch (deleted chunk files are only garbage if
    their unlink is lost)."""
    touched: set[int] = set()
    for e in effects:
        if isinstance(e, WriteEffect):
            chunks.pwrite_sync(e.ino, e.chunk_size, e.offset, memoryview(e.data))
            touched.add(e.ino)
        elif isinstance(e, TrimEffect):
            chunks.truncate_sync(e.ino, e.chunk_size, e.keep)
            touched.add(e.ino)
        elif isinstance(e, AdoptEffect):
            if chunks.adopted_hook is not None:
                chunks.adopted_hook(e.ino, e.index, e.etag)
        else:
            assert isinstance(e, DeleteEffect), e
            chunks.delete_sync(e.ino)
            touched.discard(e.ino)
    for ino in sorted(touched):
        chunks.fsync_sync(ino)
