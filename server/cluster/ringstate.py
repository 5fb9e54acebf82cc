"""A ring change as the state machine sees it: which keys a group holds, the freeze while they
move, and the entries that prepare, import, abort and install a new NodeList.

A ring change (join or leave of a group: ringchange.py drives it) is a two-phase change over
every group of the old and the new ring. In each group it is these log entries (`KIND_RING` in
statemachine.py), applied here in a worker thread:

- prepare(new NodeList, id): the group records the pending list and the change's id (every
  later entry of the change names it, so a step of an aborted attempt never touches another).
- stage(id, chunks): the pre-copy: bytes of materialized chunks another group will give this
  one, sent before anything is frozen, with their versions; an import later brings the chunks'
  marks (and the bytes of those written since). Unclaimed staged bytes go when the change ends.
- freeze(id): the group holds what it gives away: every inode with state that moves (its
  metadata, entries, inline bytes, materialized chunks, dirty mark) and every store whose key
  table moves. A transaction that would change frozen state, or create state that would
  move, aborts with MOVING (the gateway waits and retries); transactions on everything else
  go on. Only the last pass of the export runs frozen: most bytes moved in the pre-copy.
- import(id, items, chunks): keys and materialized chunk bytes another group gives this
  one. They stay invisible: no request reaches them before the new ring is installed here.
- exported(id): this group has sent everything it gives away; from now on its leader
  answers reads of frozen state with MOVING too, because the new owner may install the new
  ring (and take writes) at any moment.
- install: the NodeList entry itself (version above the current one). The group keeps only
  the keys it owns under the new ring: the rest are deleted with their chunk files.
- abort(id): the pending change is dropped; keys imported for it are deleted (the group
  keeps only what it owns under its current ring) and the freeze ends.

Rules:
- Ownership of a key is a pure function of the ring and the key (`owner`): an inode's record,
  inline bytes and dirty mark, a directory's entries and cookies go with the inode; a
  materialized chunk with its chunk; a store's key table with the store's root inode. `fs.m`
  (group-local counters), `sm.` and `txn/` stay in their group.
- Only materialized chunks (the replicated truth) move; clean cached copies stay behind and
  age out of the chunk cache; the new owner reads them from the bucket.
- Every entry here is idempotent and deterministic (a function of the entry and the state), so
  replicas agree and a replayed entry changes nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cbor2

from server.cluster.fsops import MISPLACED, MOVING, flat, owner_of
from server.cluster.nodelist import NodeList
from server.cluster.ring import Ring
from server.fs import keys, record_codec
from server.fs.records import (
    ChunkDelete,
    ChunkTrim,
    KeyClaim,
    KeyGone,
    KeyHold,
    KeyLive,
    KeyRelease,
    KeyUnclaim,
)
from storage.chunks import ChunkStore
from storage.kv import KvStore

PENDING = b"sm.ring.pending"  # the NodeList being moved to (its encoding)
PENDING_ID = b"sm.ring.id"  # the pending change's id (random, one per attempt)
EXPORTED = b"sm.ring.exported"  # b"": this group sent all it gives away
FROZEN = b"sm.ring.frozen"  # b"": the freeze is on (after the pre-copy)
STAGED = b"sm.ring.st/"  # + u64 ino + u64 index -> u64 version: pre-copied chunk bytes here
FROZEN_INO = b"sm.ring.fi/"  # + u64 ino: an inode with state leaving this group
FROZEN_STORE = b"sm.ring.fs/"  # + u32 store: a store whose key table leaves this group
ROOT_MARK = b"/"  # the etag of a store's root directory (server/cluster/bucket.py)

# The key spaces that belong to some inode (and move with it); fs.m stays.
MOVABLE = (keys.COOKIE, keys.DIRENT, keys.INODE, keys.MATERIALIZED, keys.BUCKET_KEY,
           keys.INLINE, keys.DIRTY)
_KEY_RECORDS = (KeyClaim, KeyGone, KeyHold, KeyLive, KeyRelease, KeyUnclaim)
_EVERY_CHUNK_GROUP = (ChunkTrim, ChunkDelete)  # sent to each group that may hold chunks
_U64 = struct.Struct(">Q")


def encode_prepare(nodelist: bytes, change_id: bytes) -> dict[str, Any]:
    return {"op": "prepare", "nodelist": nodelist, "id": change_id}


def encode_import(change_id: bytes, items: list[tuple[bytes, bytes]],
                  chunks: list[tuple[int, int, bytes]]) -> dict[str, Any]:
    return {"op": "import", "id": change_id, "items": [list(i) for i in items],
            "chunks": [list(c) for c in chunks]}


def encode_stage(change_id: bytes, chunks: list[tuple[int, int, int, bytes]]) -> dict[str, Any]:
    return {"op": "stage", "id": change_id, "chunks": [list(c) for c in chunks]}


def encode_freeze(change_id: bytes) -> dict[str, Any]:
    return {"op": "freeze", "id": change_id}


def encode_exported(change_id: bytes) -> dict[str, Any]:
    return {"op": "exported", "id": change_id}


def encode_abort(change_id: bytes) -> dict[str, Any]:
    return {"op": "abort", "id": change_id}


# -- ownership -------------------------------------------------------------------------------


def scan_all(kv: KvStore, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Every item under `prefix`, in pages (worker thread)."""
    start = prefix
    page = kv.config.max_scan_items
    while True:
        rows = kv.iterate_sync(prefix=prefix, start=start, limit=page)
        yield from rows
        if len(rows) < page:
            return
        start = rows[-1][0] + b"\0"


def store_roots(kv: KvStore) -> dict[int, int]:
    """Store id -> the inode of its root directory, for the roots held in this group."""
    out: dict[int, int] = {}
    for k, v in scan_all(kv, keys.INODE):
        inode = record_codec.decode(v)
        if inode.store and inode.okey == b"" and inode.etag == ROOT_MARK:
            out[inode.store] = keys.parse_inode_key(k)
    return out


def owner(key: bytes, ring: Ring, roots: dict[int, int]) -> tuple[int, int] | None:
    """(the group that holds `key` under `ring`, the inode it belongs to), or None for a key
    that stays in its group (or a key table row of a store whose root is not here)."""
    space = key[:4]
    if space in (keys.INODE, keys.INLINE, keys.DIRTY):
        ino = _U64.unpack_from(key, 4)[0]
        return ring.group_of_inode(ino), ino
    if space in (keys.DIRENT, keys.COOKIE):
        ino = _U64.unpack_from(key, 4)[0]
        return ring.group_of_inode(ino), ino
    if space == keys.MATERIALIZED:
        ino, index = keys.parse_materialized_key(key)
        return ring.group_of_chunk(ino, index), ino
    if space == keys.BUCKET_KEY:
        store, _ = keys.parse_bucket_key(key)
        root = roots.get(store)
        return None if root is None else (ring.group_of_inode(root), root)
    return None


def leaving(kv: KvStore, ring: Ring | None, group: int,
            roots: dict[int, int]) -> Iterator[tuple[int, bytes, bytes]]:
    """(new owner, key, value) of every key this group holds but does not own under `ring`
    (a group outside `ring` owns none; None: a group outside every ring, owner reported 0)."""
    for space in MOVABLE:
        for k, v in scan_all(kv, space):
            if ring is None:
                yield 0, k, v
                continue
            where = owner(k, ring, roots)
            if where is not None and where[0] != group:
                yield where[0], k, v


# -- the freeze ------------------------------------------------------------------------------


def place(ring: Ring, ino: int, index: int | None) -> int:
    """The group `ring` places an inode (index None) or one of its chunks in."""
    return ring.group_of_inode(ino) if index is None else ring.group_of_chunk(ino, index)


@dataclass(frozen=True)
class Freeze:
    """What a group with a pending ring change must not change (module rules)."""

    nodelist: NodeList  # the pending one
    change_id: bytes  # which attempt at it (an aborted one may be tried again)
    old: Ring | None  # None: this group is in no ring yet (it is joining)
    new: Ring
    inos: frozenset[int]
    stores: frozenset[int]
    exported: bool
    frozen: bool = True  # False during the pre-copy: nothing is held yet

    def blocks(self, recs: Any) -> bool:
        """Whether any of these fs records changes frozen state or creates state that moves."""
        if not self.frozen:
            return False
        for r in flat(recs):
            if isinstance(r, _KEY_RECORDS):
                if r.store in self.stores:
                    return True
                continue
            ino, index = owner_of(r), getattr(r, "index", None)
            if ino in self.inos or self._moves(ino, index):
                return True
        return False

    def _moves(self, ino: int, index: int | None) -> bool:
        """Whether the new ring places this inode (or chunk) elsewhere than the old one."""
        return self.old is not None and place(self.old, ino, index) != place(
            self.new, ino, index)

    def hides(self, ino: int, index: int | None = None) -> bool:
        """Whether a read of this inode (or one chunk of it) must wait for the new ring."""
        return self.exported and (ino in self.inos or self._moves(ino, index))


class Guard:
    """The apply-time check of a group's placement (FsApplication.guard): records that would
    change state frozen by a pending change answer MOVING; records for state the group's
    current ring does not place in it answer MISPLACED (a transaction planned under an older
    ring whose entry landed after the new ring's: the gateway plans it again). Both are
    functions of the replicated state, so every replica decides alike."""

    def __init__(self, ring: Ring | None, group: int, freeze: Freeze | None) -> None:
        self.ring, self.group, self.freeze = ring, group, freeze

    def __call__(self, recs: Any) -> str | None:
        if self.freeze is not None and self.freeze.blocks(recs):
            return MOVING
        if self.ring is not None and self._misplaced(recs):
            return MISPLACED
        return None

    def _misplaced(self, recs: Any) -> bool:
        assert self.ring is not None
        return any(place(self.ring, owner_of(r), getattr(r, "index", None)) != self.group
                   for r in flat(recs)
                   # the key table is placed by its store's root; trims go everywhere
                   if not isinstance(r, _KEY_RECORDS + _EVERY_CHUNK_GROUP))


def load_freeze(kv: KvStore, vnodes: int) -> Freeze | None:
    """The freeze the state records (worker thread), or None when no change is pending."""
    pending = kv.get_sync(PENDING)
    if pending is None:
        return None
    current = kv.get_sync(b"sm.nodelist")
    old = NodeList.decode(current).ring(vnodes) if current is not None else None
    new = NodeList.decode(pending)
    inos = frozenset(_U64.unpack_from(k, len(FROZEN_INO))[0]
                     for k, _ in scan_all(kv, FROZEN_INO))
    stores = frozenset(struct.unpack_from(">I", k, len(FROZEN_STORE))[0]
                       for k, _ in scan_all(kv, FROZEN_STORE))
    exported = kv.get_sync(EXPORTED) is not None
    return Freeze(new, kv.get_sync(PENDING_ID) or b"", old, new.ring(vnodes), inos, stores,
                  exported, kv.get_sync(FROZEN) is not None)


# -- applying the entries (worker thread; `writes` is the batch, applied state in `kv`) ------


class RingApply:
    """Applies one ring entry to `kv` (already holding every earlier entry) into `writes`;
    chunk file changes are made at once and durably (the caller writes `writes` after)."""

    def __init__(self, kv: KvStore, chunks: ChunkStore, group: int, vnodes: int) -> None:
        self.kv, self.chunks, self.group, self.vnodes = kv, chunks, group, vnodes
        self.writes: dict[bytes, bytes | None] = {}

    def current(self) -> NodeList | None:
        raw = self.kv.get_sync(b"sm.nodelist")
        return NodeList.decode(raw) if raw is not None else None

    def pending(self) -> NodeList | None:
        raw = self.kv.get_sync(PENDING)
        return NodeList.decode(raw) if raw is not None else None

    def apply(self, entry: dict[str, Any]) -> None:
        op = entry.get("op")
        pending = self.pending()
        if op == "prepare":
            self._prepare(entry["nodelist"], entry["id"], pending)
        elif pending is None or entry.get("id") != self.kv.get_sync(PENDING_ID):
            return  # for a change that is over (or never reached this group): nothing to do
        elif op == "import":
            self._import(entry["items"], entry["chunks"])
        elif op == "stage":
            self._stage(entry["chunks"])
        elif op == "freeze":
            self._freeze(pending)
        elif op == "exported":
            self.writes[EXPORTED] = b""
        elif op == "abort":
            self._end()
            current = self.current()
            self._keep_owned(current.ring(self.vnodes) if current is not None else None)

    def install(self, nodelist: bytes) -> None:
        """A newer NodeList is installed (the caller writes it): keep only what it places
        here, and end the pending change it completes."""
        self._end()
        self._keep_owned(NodeList.decode(nodelist).ring(self.vnodes))

    def _prepare(self, nodelist: bytes, change_id: bytes, pending: NodeList | None) -> None:
        new = NodeList.decode(nodelist)
        current = self.current()
        if pending is not None or (current is not None and new.version <= current.version):
            return  # a duplicate, or one change at a time (the driver aborts the other first)
        self.writes[PENDING] = nodelist
        self.writes[PENDING_ID] = change_id

    def _freeze(self, pending: NodeList) -> None:
        """Hold what this group gives away (after the pre-copy moved most chunk bytes)."""
        if self.kv.get_sync(FROZEN) is not None:
            return
        self.writes[FROZEN] = b""
        ring = pending.ring(self.vnodes)
        roots = store_roots(self.kv)
        for _, k, _ in leaving(self.kv, ring, self.group, roots):
            if k[:4] == keys.BUCKET_KEY:
                store, _ = keys.parse_bucket_key(k)
                self.writes[FROZEN_STORE + struct.pack(">I", store)] = b""
            else:  # every other movable key starts with its inode
                self.writes[FROZEN_INO + k[4:12]] = b""

    def _stage(self, chunks: list[list[Any]]) -> None:
        """Pre-copied chunk bytes: in place, but no state refers to them before an import
        brings their marks (the version says which bytes they are)."""
        for ino, index, _, _ in chunks:
            if self.chunks.changed_hook is not None:
                self.chunks.changed_hook(ino, index, index)  # not a clean cached copy
        self.chunks.put_chunk_files_sync([(ino, index, data) for ino, index, _, data in chunks])
        for ino, index, version, _ in chunks:
            self.writes[STAGED + _U64.pack(ino) + _U64.pack(index)] = _U64.pack(version)

    def _import(self, items: list[list[bytes]], chunks: list[list[Any]]) -> None:
        added = 0
        for k, v in items:
            if k[:4] not in MOVABLE:
                raise ValueError(f"import of a key outside the movable spaces: {k[:4]!r}")
            if k[:4] == keys.INODE and self.kv.get_sync(k) is None and k not in self.writes:
                added += 1
            if k[:4] == keys.MATERIALIZED and v:
                self._see_chunk_version(keys.decode_u64(v))
            self.writes[k] = v
        for ino, index, _ in chunks:
            if self.chunks.changed_hook is not None:
                self.chunks.changed_hook(ino, index, index)  # not a clean cached copy
        self.chunks.put_chunk_files_sync([(ino, index, data) for ino, index, data in chunks])
        if added:
            self._count(added)

    def _see_chunk_version(self, version: int) -> None:
        """An imported chunk keeps its version: this group's next ones are above it, so an
        Unpin sent for it before the move never matches bytes written here later."""
        if version > self._meta(keys.CHUNK_VERSION):
            self.writes[keys.CHUNK_VERSION] = keys.u64(version)

    def _end(self) -> None:
        for prefix in (FROZEN_INO, FROZEN_STORE):
            for k, _ in scan_all(self.kv, prefix):
                self.writes[k] = None
        for k, _ in scan_all(self.kv, STAGED):  # pre-copied bytes no import claimed go
            self.writes[k] = None
            ino, index = struct.unpack_from(">QQ", k, len(STAGED))
            if self.kv.get_sync(keys.materialized_key(ino, index)) is None:
                if self.chunks.changed_hook is not None:
                    self.chunks.changed_hook(ino, index, index)
                self.chunks.delete_chunk_sync(ino, index)
        self.writes[FROZEN] = None
        self.writes[PENDING] = None
        self.writes[PENDING_ID] = None
        self.writes[EXPORTED] = None

    def _keep_owned(self, ring: Ring | None) -> None:
        if ring is not None and self.group not in ring.groups:
            ring = None  # a group that left owns nothing
        roots = store_roots(self.kv)
        removed = 0
        for _, k, _ in list(leaving(self.kv, ring, self.group, roots)):
            self.writes[k] = None
            if k[:4] == keys.INODE:
                removed += 1
            elif k[:4] == keys.MATERIALIZED:
                ino, index = keys.parse_materialized_key(k)
                if self.chunks.changed_hook is not None:
                    self.chunks.changed_hook(ino, index, index)
                self.chunks.delete_chunk_sync(ino, index)
        if removed:
            self._count(-removed)

    def _count(self, delta: int) -> None:
        self.writes[keys.INODE_COUNT] = keys.u64(max(0, self._meta(keys.INODE_COUNT) + delta))

    def _meta(self, key: bytes) -> int:
        """A counter of the group's state as this entry leaves it so far."""
        return keys.decode_u64(self.writes.get(key) or self.kv.get_sync(key))


def decode_entry(payload: bytes) -> dict[str, Any]:
    entry = cbor2.loads(payload)
    if not isinstance(entry, dict) or "op" not in entry:
        raise ValueError("a ring entry is a map with an op")
    return entry
