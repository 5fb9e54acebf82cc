"""One group's replicated state machine: committed Raft entries in, one LevelDB batch out.

Rules:
- An entry is `[VERSION, kind, payload]` in CBOR: a txn record (txn/records.py in txn/codec.py
  form), a NodeList (server/cluster/nodelist.py), a step of a ring change (ringstate.py), or
  a lease horizon (the wall-clock time until which a leader of this group may have leases
  out, group_leases.py: a new leader waits out a horizon still ahead, and only then).
  Everything a group stores changes through these entries, so all replicas hold the same state.
- A NodeList or ring-change entry is applied on its own: the entries before it are written
  first (their own LevelDB batch), because it scans the whole state and must see them.
- A batch of entries is applied in a worker thread through one txn.kv.Overlay over LevelDB (a
  KvView and KvBatch that reads its own writes), or on the event loop's thread when it is small
  and all txn records (`inline_ok`) and the loop has nothing else to run (group.py): then a
  worker-thread round trip costs more CPU than the apply itself. An inline apply never waits:
  a full cache disk (or big data effects) send it back to a worker thread (ApplyNeedsThread;
  nothing of the batch is written yet, so it starts over). Either way: the txn tables
  (TxnState), the file-system state (through the Application, server/cluster/fsops.py) and the
  applied index end up in one atomic LevelDB write. The data effects of the batch (chunk
  writes, trims, deletes) are made first: if a crash comes between them and the batch, the log
  replays the records and makes them again (they are idempotent), so a chunk is never behind
  the metadata that points at it.
- The batch is written without fsync: the entries are durable in the Raft log, and a restart
  applies again from the applied index on disk. Snapshots and log compaction sync first.
- Applying must not fail: a record that cannot apply after its check passed is a bug, and a
  disk error here would make this replica differ from the others. Either stops the node
  (GroupStateError): it restarts from the log, or is replaced, rather than serve wrong state.
  Except a full cache disk (ENOSPC on the data effects): the apply waits for space, evicting
  clean cached copies first (`make_room`), and gives up the wait when the node stops
  (`stopping`: the batch is unwritten, so a restart applies it again).
- Keys: `sm.` for this module, `txn/` for TxnState, `fs.` for the file system (server/fs/keys).
  Snapshots carry exactly these prefixes plus the chunk files; node-local keys (the Raft log
  under `raft/`, the inode allocator under `cl.alloc`) stay out.
"""

from __future__ import annotations

import errno
import logging
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import cbor2

from raft.types import Entry, EntryType
from server.cluster import ringstate
from server.cluster.nodelist import NodeList
from server.fs.keys import decode_u64
from storage.chunkio import ChunkIOError
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
KIND_RING = 2
KIND_LEASE = 3
_TXN_HEAD = cbor2.dumps([VERSION, KIND_TXN, b""])[:3]  # an array of 3, VERSION, KIND_TXN

APPLIED = b"sm.applied"
NODELIST = b"sm.nodelist"
LEASE_HORIZON = b"sm.lease_horizon"
STATE_PREFIXES = (b"sm.", b"txn/", b"fs.")
_U64 = struct.Struct(">Q")
NOSPACE_RETRY_S = 0.1  # a full cache disk: the first wait before applying again, doubling
NOSPACE_RETRY_MAX_S = 5.0
INLINE_APPLY_MAX_BYTES = 64 << 10  # entries (and data they write) this small may apply inline
INLINE_EFFECTS_MAX = 64  # and this many data effects at most (module rules)


class GroupStateError(Exception):
    """An entry that cannot be applied: the replica must stop (see the module rules)."""


class ApplyAbandoned(Exception):
    """The node stops while a batch waits for space: nothing of it was written."""


class ApplyNeedsThread(Exception):
    """An inline apply met a full cache disk, or data effects too big for the loop's thread:
    apply the batch again in a worker thread, where it may wait (nothing of it was written;
    the data effects are idempotent)."""


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


def encode_ring_entry(entry: dict[str, Any]) -> bytes:
    return cbor2.dumps([VERSION, KIND_RING, cbor2.dumps(entry)])


def encode_lease_entry(horizon_ns: int) -> bytes:
    return cbor2.dumps([VERSION, KIND_LEASE, _U64.pack(horizon_ns)])


def decode_entry(data: bytes) -> tuple[int, bytes]:
    try:
        version, kind, payload = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError) as e:
        raise GroupStateError(f"entry is not CBOR [version, kind, payload]: {e}") from e
    if version != VERSION or kind not in (KIND_TXN, KIND_NODELIST, KIND_RING, KIND_LEASE) or (
            not isinstance(payload, bytes)):
        raise GroupStateError(f"entry of version {version!r} kind {kind!r}")
    return kind, payload


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
        *,
        group: int = 0,
        vnodes: int = 64,
    ) -> None:
        self.kv = kv
        self.group = group  # 0: a test's group that never changes rings
        self.vnodes = vnodes
        self.chunks = chunks
        self.app = app
        self.txn = txn
        self._perform_effects = perform_effects
        self.state_prefixes = state_prefixes  # what a snapshot carries
        self.nodelist_bytes: bytes | None = None  # the applied NodeList, cached
        self.lease_horizon_ns = 0  # the applied lease horizon (wall clock), cached
        self.freeze: ringstate.Freeze | None = None  # a pending ring change (ringstate.py)
        self.ring_events = 0  # counts applied ring entries (the runtime watches it)
        self.ring_steps = 0  # of which steps of a ring change (state may have come in)
        # A full cache disk: evict clean copies for this many bytes (the node's ChunkCache)
        self.make_room: Callable[[int], int] | None = None
        self.stopping = threading.Event()  # set when the node stops: a waiting apply gives up

    def load_sync(self) -> int:
        """At start: the applied index, the NodeList and a pending ring change on disk."""
        self.nodelist_bytes = self.kv.get_sync(NODELIST)
        self.lease_horizon_ns = decode_u64(self.kv.get_sync(LEASE_HORIZON))
        self._load_freeze()
        return decode_u64(self.kv.get_sync(APPLIED))

    def _load_freeze(self) -> None:
        self.freeze = ringstate.load_freeze(self.kv, self.vnodes)
        if not self.group:
            return  # a test's group outside any ring change
        ring = (NodeList.decode(self.nodelist_bytes).ring(self.vnodes)
                if self.nodelist_bytes is not None else None)
        self.app.guard = ringstate.Guard(ring, self.group, self.freeze)

    def inline_ok(self, entries: Sequence[Entry]) -> bool:
        """Whether `entries` may apply on the event loop's thread (module rules): only txn
        records (a peek at the entry's CBOR head: [VERSION, kind, ...]), few bytes in all."""
        size = 0
        for e in entries:
            if e.type is not EntryType.NORMAL or not e.data:
                continue
            if e.data[:3] != _TXN_HEAD:
                return False
            size += len(e.data)
            if size > INLINE_APPLY_MAX_BYTES:
                return False
        return True

    def apply_sync(self, entries: Sequence[Entry], *, inline: bool = False) -> list[Applied]:
        """Apply committed entries (worker thread; `inline`: on the loop's thread, never
        waiting): runs of txn records in one batch each, a NodeList or ring entry alone.
        Results of txn records, in order, for the leader's coordinator and participant."""
        results: list[Applied] = []
        run: list[tuple[int, bytes]] = []  # (index, txn payload)
        last = entries[-1].index
        for e in entries:
            if e.type is not EntryType.NORMAL or not e.data:
                continue  # configuration changes and a new leader's empty entry
            kind, payload = decode_entry(e.data)
            if kind == KIND_TXN:
                run.append((e.index, payload))
                continue
            assert not inline, "inline_ok lets no ring entry through"
            if run:
                results += self._apply_txns(run, e.index - 1)
                run = []
            if kind == KIND_LEASE:
                self._apply_lease(payload, e.index)
            else:
                self._apply_ring(kind, payload, e.index)
        if run or decode_u64(self.kv.get_sync(APPLIED)) < last:
            results += self._apply_txns(run, last, may_wait=not inline)
        return results

    def _apply_txns(self, run: list[tuple[int, bytes]], applied: int, *,
                    may_wait: bool = True) -> list[Applied]:
        view = Overlay(StateView(self.kv))  # reads see this batch's writes
        results: list[Applied] = []
        try:
            for _, payload in run:
                results.append(self.txn.apply(from_cbor(payload), view, view))
            view.put(APPLIED, _U64.pack(applied))
            effects = self.app.take_effects()
            if not may_wait and (len(effects) > INLINE_EFFECTS_MAX
                                 or _written_bytes(effects) > INLINE_APPLY_MAX_BYTES):
                # Small records, big file work (a MaterializeChunk pads its base to a whole
                # chunk): not on the loop's thread.
                raise ApplyNeedsThread(f"{len(effects)} data effects")
            if effects:
                self._effects_when_space(effects, may_wait)
            self.kv.write_sync(view.writes.items(), sync=False)
        except (GroupStateError, ApplyAbandoned, ApplyNeedsThread):
            raise
        except Exception as e:  # see the module rules: stop rather than diverge
            self.app.take_effects()
            first = run[0][0] if run else applied
            raise GroupStateError(
                f"applying entries {first}..{applied}: {type(e).__name__}: {e}") from e
        return results

    def _effects_when_space(self, effects: list[Any], may_wait: bool = True) -> None:
        """Make the batch's data effects, waiting while the cache disk is full.

        ENOSPC is not a divergence: the effects are idempotent and nothing of the batch is
        written yet, so they are made again once there is space. First the clean cached
        copies go (only this thread may evict now: it holds the apply lock). Then this
        replica's apply stalls (its peers go on; a stalled leader loses its lease and clients
        of a one-member group get JUKEBOX) until space comes back or the node stops
        (ApplyAbandoned). Stopping instead (GroupStateError) only restarted the node into
        the same full disk, again and again; a wait that could not be stopped kept the node
        alive after its drain (both found by the fault campaign, FINDINGS.md 3 and 7)."""
        delay_s, waited_s = NOSPACE_RETRY_S, 0.0
        while True:
            try:
                self._perform_effects(effects, self.chunks)
                break
            except (ChunkIOError, OSError) as e:
                if e.errno != errno.ENOSPC:
                    raise
                if not may_wait:
                    raise ApplyNeedsThread(str(e)) from e
                freed = self.make_room(_written_bytes(effects)) if self.make_room else 0
                if freed:
                    log.warning("group %d: the cache disk is full: evicted %d bytes of clean "
                                "copies", self.group, freed)
                    continue
                if waited_s == 0.0 or delay_s == NOSPACE_RETRY_MAX_S:
                    log.error("group %d: the cache disk is full (%s); applying waits for space "
                              "(%.0f s so far)", self.group, e, waited_s)
                if self.stopping.wait(delay_s):  # a worker thread (apply_sync), not trio's
                    raise ApplyAbandoned(f"group {self.group}: stopped while waiting for "
                                         "space on the cache disk") from None
                waited_s += delay_s
                delay_s = min(delay_s * 2, NOSPACE_RETRY_MAX_S)
        if waited_s:
            log.warning("group %d: the cache disk has space again after %.0f s", self.group,
                        waited_s)

    def _apply_lease(self, payload: bytes, index: int) -> None:
        """A lease horizon: only ever moves on."""
        if len(payload) != _U64.size:
            raise GroupStateError(f"entry {index}: a lease horizon of {len(payload)} bytes")
        horizon = max(self.lease_horizon_ns, decode_u64(payload))
        self.kv.write_sync([(LEASE_HORIZON, _U64.pack(horizon)), (APPLIED, _U64.pack(index))],
                           sync=False)
        self.lease_horizon_ns = horizon

    def _apply_ring(self, kind: int, payload: bytes, index: int) -> None:
        """A NodeList or ring-change entry, alone in its batch (ringstate.py)."""
        try:
            step = ringstate.RingApply(self.kv, self.chunks, self.group, self.vnodes)
            installed = None
            if kind == KIND_RING:
                step.apply(ringstate.decode_entry(payload))
                self.ring_steps += 1
            elif self._newer_nodelist(payload):
                step.writes[NODELIST] = payload
                if self.group:
                    step.install(payload)
                installed = payload
            step.writes[APPLIED] = _U64.pack(index)
            self.kv.write_sync(step.writes.items(), sync=False)
        except Exception as e:  # see the module rules: stop rather than diverge
            raise GroupStateError(
                f"applying ring entry {index}: {type(e).__name__}: {e}") from e
        if installed is not None:
            self.nodelist_bytes = installed
        self._load_freeze()
        self.ring_events += 1

    def _newer_nodelist(self, payload: bytes) -> bool:
        """A NodeList entry takes effect only if its version is newer (duplicates are normal:
        every new leader of a founding group proposes the first one)."""
        current = self.kv.get_sync(NODELIST)
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
        self.lease_horizon_ns = decode_u64(self.kv.get_sync(LEASE_HORIZON))
        self._load_freeze()
        self.ring_events += 1


def _nodelist_version(payload: bytes) -> int:
    return NodeList.decode(payload).version


def _written_bytes(effects: list[Any]) -> int:
    """The chunk bytes a batch's effects write (what a full disk must make room for)."""
    return sum(len(getattr(e, "data", b"")) for e in effects)
