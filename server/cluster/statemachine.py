"""One group's replicated state machine: committed Raft entries in, one LevelDB batch out.

Rules:
- An entry is `[VERSION, kind, payload]` in CBOR: a txn record (txn/records.py in txn/codec.py
  form), or a NodeList (server/cluster/nodelist.py). Everything a group stores changes through
  these entries, so all replicas hold the same state.
- A batch of entries is applied in a worker thread through one txn.kv.Overlay over LevelDB (a
  KvView and KvBatch that reads its own writes): the txn tables (TxnState), the file-system
  state (through the Application, server/cluster/fsops.py) and the applied index end up in one
  atomic LevelDB write. The data effects of the batch (chunk writes, trims, deletes) are made
  first: if a crash comes between them and the batch, the log replays the records and makes
  them again (they are idempotent), so a chunk is never behind the metadata that points at it.
- The batch is written without fsync: the entries are durable in the Raft log, and a restart
  applies again from the applied index on disk. Snapshots and log compaction sync first.
- Applying must not fail: a record that cannot apply after its check passed is a bug, and a
  disk error here would make this replica differ from the others. Either stops the node
  (GroupStateError): it restarts from the log, or is replaced, rather than serve wrong state.
- Keys: `sm.` for this module, `txn/` for TxnState, `fs.` for the file system (server/fs/keys).
  Snapshots carry exactly these prefixes plus the chunk files; node-local keys (the Raft log
  under `raft/`, the inode allocator under `cl.alloc`) stay out.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import cbor2

from raft.types import Entry, EntryType
from server.cluster.nodelist import NodeList
from storage.chunks import ChunkStore
from storage.kv import KvStore
from txn.codec import from_cbor, to_cbor
from txn.kv import Overlay
from txn.records import TxnRecord
from txn.state import Applied, TxnState

log = logging.getLogger("objcache.group")

VERSION = 1
KIND_TXN = 0
KIND_NODELIST = 1

APPLIED = b"sm.applied"
NODELIST = b"sm.nodelist"
STATE_PREFIXES = (b"sm.", b"txn/", b"fs.")
_U64 = struct.Struct(">Q")


class GroupStateError(Exception):
    """An entry that cannot be applied: the replica must stop (see the module rules)."""


class EffectsApplication(Protocol):
    """txn.state.Application plus the data effects its applies produced (fsops.py)."""

    def locks_of(self, ops: bytes) -> tuple[int, ...]: ...

    def check(self, ops: bytes, view: Any) -> str | None: ...

    def apply(self, ops: bytes, view: Any, batch: Any) -> None: ...

    def take_effects(self) -> list[Any]: ...


def encode_txn_entry(record: TxnRecord) -> bytes:
    return cbor2.dumps([VERSION, KIND_TXN, to_cbor(record)])


def encode_nodelist_entry(nodelist_bytes: bytes) -> bytes:
    return cbor2.dumps([VERSION, KIND_NODELIST, nodelist_bytes])


def decode_entry(data: bytes) -> tuple[int, bytes]:
    try:
        version, kind, payload = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError) as e:
        raise GroupStateError(f"entry is not CBOR [version, kind, payload]: {e}") from e
    if version != VERSION or kind not in (KIND_TXN, KIND_NODELIST) or not isinstance(
            payload, bytes):
        raise GroupStateError(f"entry of version {version!r} kind {kind!r}")
    return kind, payload


def u64(raw: bytes | None) -> int:
    return 0 if raw is None else _U64.unpack(raw)[0]


class StateView:
    """A read-only txn KvView of the applied state (queries, recovery scans; worker thread)."""

    def __init__(self, kv: KvStore) -> None:
        self.kv = kv

    def get(self, key: bytes) -> bytes | None:
        return self.kv.get_sync(key)

    def scan(self, prefix: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        return self.kv.iterate_sync(prefix=prefix, limit=limit)


class GroupStateMachine:
    def __init__(
        self,
        kv: KvStore,
        chunks: ChunkStore,
        app: EffectsApplication,
        txn: TxnState,
        perform_effects: Callable[[list[Any], ChunkStore], None],
        state_prefixes: tuple[bytes, ...] = STATE_PREFIXES,
    ) -> None:
        self.kv = kv
        self.chunks = chunks
        self.app = app
        self.txn = txn
        self._perform_effects = perform_effects
        self.state_prefixes = state_prefixes  # what a snapshot carries
        self.nodelist_bytes: bytes | None = None  # the applied NodeList, cached

    def load_sync(self) -> int:
        """At start: the applied index and the NodeList on disk."""
        self.nodelist_bytes = self.kv.get_sync(NODELIST)
        return u64(self.kv.get_sync(APPLIED))

    def apply_sync(self, entries: Sequence[Entry]) -> list[Applied]:
        """Apply committed entries in one batch (worker thread). Results of txn records, in
        order, for the leader's coordinator and participant."""
        view = Overlay(StateView(self.kv))  # reads see this batch's writes
        results: list[Applied] = []
        nodelist = None
        try:
            for e in entries:
                if e.type is not EntryType.NORMAL or not e.data:
                    continue  # configuration changes and a new leader's empty entry
                kind, payload = decode_entry(e.data)
                if kind == KIND_TXN:
                    results.append(self.txn.apply(from_cbor(payload), view, view))
                elif self._newer_nodelist(payload, view):
                    view.put(NODELIST, payload)
                    nodelist = payload
            view.put(APPLIED, _U64.pack(entries[-1].index))
            effects = self.app.take_effects()
            if effects:
                self._perform_effects(effects, self.chunks)
            self.kv.write_sync(view.writes.items(), sync=False)
        except GroupStateError:
            raise
        except Exception as e:  # see the module rules: stop rather than diverge
            self.app.take_effects()
            raise GroupStateError(
                f"applying entries {entries[0].index}..{entries[-1].index}: "
                f"{type(e).__name__}: {e}") from e
        if nodelist is not None:
            self.nodelist_bytes = nodelist
        return results

    def _newer_nodelist(self, payload: bytes, view: Overlay) -> bool:
        """A NodeList entry takes effect only if its version is newer (duplicates are normal:
        every new leader of a founding group proposes the first one)."""
        current = view.get(NODELIST)
        return current is None or _nodelist_version(payload) > _nodelist_version(current)

    # -- snapshots --------------------------------------------------------------------------

    def snapshot_sync(self, max_bytes: int) -> bytes:
        """The whole state: every state key and every chunk file (worker thread). The caller
        has made the applied state durable first. Raises GroupStateError past max_bytes
        (streaming chunk files is the bucket issue's job; a group that big must not compact)."""
        items: list[list[bytes]] = []
        size = 0
        for prefix in self.state_prefixes:
            for k, v in self.kv.iterate_sync(prefix=prefix, limit=self.kv.config.max_scan_items):
                items.append([k, v])
                size += len(k) + len(v)
        chunks: list[list[Any]] = []
        for ino in self.chunks.stored_inodes_sync():
            for index, data in self.chunks.chunk_files_sync(ino):
                chunks.append([ino, index, data])
                size += len(data)
                if size > max_bytes:
                    raise GroupStateError(f"snapshot over {max_bytes} bytes")
        return cbor2.dumps([VERSION, items, chunks])

    def install_sync(self, data: bytes, index: int) -> None:
        """Replace the state with a leader's snapshot (worker thread)."""
        version, items, chunks = cbor2.loads(data)
        if version != VERSION:
            raise GroupStateError(f"snapshot version {version}")
        batch: list[tuple[bytes, bytes | None]] = []
        for prefix in self.state_prefixes:
            old = self.kv.iterate_sync(prefix=prefix, limit=self.kv.config.max_scan_items)
            batch += [(k, None) for k, _ in old]
        for ino in self.chunks.stored_inodes_sync():
            self.chunks.delete_sync(ino)
        for ino, idx, blob in chunks:
            self.chunks.put_chunk_file_sync(ino, idx, blob)
        batch += [(k, v) for k, v in items]
        batch.append((APPLIED, _U64.pack(index)))
        self.kv.write_sync(batch, sync=True)
        self.nodelist_bytes = self.kv.get_sync(NODELIST)


def _nodelist_version(payload: bytes) -> int:
    return NodeList.decode(payload).version

