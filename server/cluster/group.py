"""GroupRuntime: this node's member of its Raft group, serving the group's requests.

Rules:
- One RaftDriver over the node's LevelDB (the log under `raft/`), applying committed entries
  through the GroupStateMachine (statemachine.py) in a worker thread.
- The leader serves: reads (protocol.py read requests) after a ReadIndex barrier, answered by
  queries.answer over the applied state (group_reads.py); RunTxn and the txn messages of other
  groups through the txn cores (group_txn.py, which also holds the rules of their leadership).
  A member that is not the leader answers NOT_LEADER with the leader it knows.
- Log compaction: past `compact_after_entries` applied entries, the applied state is made
  durable (chunk files and LevelDB synced), a snapshot point is recorded and the log below it
  (minus a margin for slow followers) is deleted. A follower too far behind gets the state as
  a snapshot (statemachine.snapshot_sync), in pieces.
"""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from raft.config import Config as RaftConfig
from raft.driver import DriverConfig, RaftDriver, SnapshotPieces
from raft.node import RawNode, bootstrap_log
from raft.ready import Role, Snapshot, SnapshotRequest
from raft.types import Entry, SnapshotMeta
from server.cluster import bucket_upload
from server.cluster import protocol as p
from server.cluster.group_leases import GroupLeases
from server.cluster.group_reads import INLINE_READS, GroupReads
from server.cluster.group_txn import GroupTxn, register_txn_messages
from server.cluster.nodelist import NodeList
from server.cluster.state_scan import StateScans
from server.cluster.statemachine import ApplyAbandoned, ApplyNeedsThread, GroupStateMachine
from server.fs import keys as fs_keys
from server.rpc.frames import RemoteError
from server.rpc.plane import RpcPlane
from server.rpc.raft_wire import PlaneTransport, route_raft_messages
from storage.kv import KvStore, loop_is_idle
from storage.raftlog import RaftLogStorage
from txn import coordinator as co
from txn import participant as pa
from txn.ids import TxnId
from txn.messages import TxnMessage
from txn.records import Outcome

if TYPE_CHECKING:
    from server.cluster.bucket_reads import BucketReads

log = logging.getLogger("objcache.group")

LEAD_ALONE_TRIES = 50  # at a fifth of a tick each: the first second after start


@dataclass(frozen=True, slots=True)
class GroupConfig:
    tick_interval_s: float = 0.05  # Raft ticks (10-tick election timeout: 0.5-1 s)
    txn_tick_interval_s: float = 0.05  # txn core ticks (retries, timeouts)
    txn_reply_timeout_s: float = 5.0  # RunTxn answers decided=False after this
    compact_after_entries: int = 20_000
    compact_keep_entries: int = 2_000
    compact_check_interval_s: float = 1.0
    snapshot_max_bytes: int = 1 << 30
    lease_s: float = 1.0  # leases on this group's inodes for other nodes' gateways (0: none)


class GroupRuntime(GroupReads, GroupTxn, GroupLeases):
    def __init__(
        self,
        *,
        node_id: int,
        group: int,
        kv: KvStore,
        storage: RaftLogStorage,
        sm: GroupStateMachine,
        plane: RpcPlane,
        answer: Callable[..., Any],
        root_ops: Callable[[], bytes] | None,
        nodelist_bytes: bytes | None,
        post: Callable[[int, TxnMessage], None],
        config: GroupConfig,
        applied: int,
        vnodes: int = 64,
    ) -> None:
        self.node_id = node_id
        self.vnodes = vnodes
        self.group = group
        self.kv = kv
        self.storage = storage
        self.sm = sm
        self.plane = plane
        self.config = config
        self._answer = answer  # queries.answer(request, view, chunks, group)
        self._root_ops = root_ops  # set on the group that owns inode 1
        self._initial_nodelist = nodelist_bytes
        self._post = post  # send a txn message to another group's leader (router.post)
        seed = secrets.randbits(64)
        log.info("node %d (group %d): applied %d, election seed %d", node_id, group, applied,
                 seed)
        node = RawNode(RaftConfig(id=node_id, applied=applied), storage, random.Random(seed))
        self.driver = RaftDriver(
            node, storage, PlaneTransport(plane), self._apply,
            config=DriverConfig(tick_interval_s=config.tick_interval_s),
            install_snapshot=self._install, snapshot_source=self._snapshot_source)
        route_raft_messages(plane, self.driver.step)
        self.coordinator = co.Coordinator(group)
        self.participant = pa.Participant(group, sm.app)
        self._apply_lock = trio.Lock()
        self._ready_term = 0  # the term whose leadership the cores know of (0: not ready)
        self._ready_event = trio.Event()
        self._becoming = False
        self._txn_waiters: dict[TxnId, list[tuple[trio.Event, list[Outcome | None]]]] = {}
        self._snapshot = SnapshotPieces(self._snapshot_bytes)  # the one being sent
        self._scans = StateScans(kv)  # ScanState pages
        self._nursery: trio.Nursery | None = None
        self._init_leases()
        self._version_of: tuple[bytes | None, int] = (None, 0)
        self.bucket: BucketReads | None = None  # set by the node when it has object stores
        # Asked with the bytes a new transaction carries; raises RemoteError to refuse it
        # (the node's cache is full of bytes only write-back can free: bucket_reads.py).
        self.admit: Callable[[int], None] | None = None
        self.ring_event = trio.Event()  # set (and replaced) when the applied ring state changes
        self._register(plane)

    # -- construction -----------------------------------------------------------------------

    @classmethod
    async def open(cls, *, node_id: int, group: int, members: list[int], kv: KvStore,
                   sm: GroupStateMachine, **kwargs: Any) -> GroupRuntime:
        """Open the log on the node's LevelDB; founding members bootstrap it at first start
        (`members` empty: a replica joining a running group starts with an empty log and
        learns everything from the group's leader)."""
        storage = await RaftLogStorage.open_on_store(kv)
        # A one-member group: its save is the whole commit (a hint only; see RaftLogStorage).
        storage.lone_voter = len(members) == 1
        hard_state, _ = storage.initial_state()
        if members and storage.last_index() == 0 and hard_state.term == 0:
            await storage.save(*bootstrap_log(sorted(members)))
            hard_state, _ = storage.initial_state()
        stored = await trio.to_thread.run_sync(sm.load_sync)
        # The state may be ahead of the log's commit index only after a crash between
        # installing a snapshot and saving it; replaying from the commit index is harmless.
        applied = min(stored, hard_state.commit)
        return cls(node_id=node_id, group=group, kv=kv, storage=storage, sm=sm,
                   applied=applied, **kwargs)

    def _register(self, plane: RpcPlane) -> None:
        for cls in (p.GetInodes, p.Lookup, p.ReadDir, p.ReadHead, p.ReadChunk,
                    p.FsStatRequest, p.RunTxn, p.DropCached, p.ScanFlush, p.PutObject,
                    p.PutObjects, p.PutPart, p.KeysUnder, p.MaxInode):
            plane.register(cls, self.on_request)
        for cls in (p.ScanState, p.GetNodeList):  # read-only: fsck and status from admins
            plane.register(cls, self.on_request, admin=True)
        register_txn_messages()
        plane.register(p.TxnEnvelope, self._on_txn_envelope)

    # -- service ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.driver.run)
                nursery.start_soon(self._lead_alone)
                nursery.start_soon(self._txn_ticker)
                nursery.start_soon(self._compactor)
                nursery.start_soon(self._abandon_waits_when_stopping)
                task_status.started()
        finally:
            self._scans.close()  # the snapshots of fsck's and drain's scans

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._nursery is not None, "not running"
        self._nursery.start_soon(fn, *args)

    async def _abandon_waits_when_stopping(self) -> None:
        """When this group stops, an apply waiting in its worker thread for space on a full
        cache disk gives up (trio cannot cancel a thread; the state machine watches this)."""
        try:
            await trio.sleep_forever()
        finally:
            self.sm.stopping.set()

    async def _lead_alone(self) -> None:
        """The only voter of its group campaigns at once instead of after an election
        timeout: a one-member group (and a node joining as one) serves half a second
        sooner. A no-op while its configuration is still being applied; retried briefly."""
        for _ in range(LEAD_ALONE_TRIES):
            raft = self.driver.node.raft
            if raft.conf.voters == {self.node_id} and not self.is_leader():
                self.driver.campaign()
            elif raft.conf.voters and raft.conf.voters != {self.node_id}:
                return
            await trio.sleep(self.config.tick_interval_s / 5)

    @property
    def apply_lock(self) -> trio.Lock:
        """Held while a batch is applied (and by whoever must not interleave with one)."""
        return self._apply_lock

    def is_leader(self) -> bool:
        return self.driver.node.raft.role is Role.LEADER

    def leader_id(self) -> int:
        return self.driver.node.raft.lead

    def nodelist_bytes(self) -> bytes | None:
        return self.sm.nodelist_bytes

    async def wait_serving(self) -> None:
        """Until this group has a leader whose cores are ready (anywhere, not only here)."""
        while True:
            lead = self.leader_id()
            ready = lead and (lead != self.node_id or self._ready_term)
            if ready and self.sm.nodelist_bytes is not None:
                return
            await trio.sleep(self.config.tick_interval_s)

    # -- requests ---------------------------------------------------------------------------

    async def handle(self, request: p.GroupRequest) -> Any:
        """Answer a gateway request (in process, or from on_request). RemoteError on refusal."""
        if isinstance(request, p.GetNodeList):
            if self.sm.nodelist_bytes is None:
                raise RemoteError(p.UNAVAILABLE, "the group has no node list yet")
            return p.NodeListReply(self.sm.nodelist_bytes)
        self._check_version(request.ring_version)
        await self._require_ready()
        if self.sm.freeze is not None and self.hidden(request):
            raise RemoteError(p.MOVING, "the state is moving to its new group")
        if isinstance(request, p.RunTxn):
            return await self._run_txn(request)
        if isinstance(request, p.DropCached):
            freed = await self.bucket.drop(request.ino) if self.bucket is not None else 0
            return p.DroppedReply(freed)
        if isinstance(request, p.PutObject):
            return await bucket_upload.put_object(self, request)
        if isinstance(request, p.PutObjects):
            return await bucket_upload.put_objects(self, request)
        if isinstance(request, p.PutPart):
            return await bucket_upload.put_part(self, request)
        await self.read_barrier()
        if isinstance(request, p.ScanState):
            return await self._scans.page(request)
        if isinstance(request, p.ScanFlush):
            return await trio.to_thread.run_sync(self._scan_flush, request)
        if isinstance(request, p.KeysUnder):
            return await trio.to_thread.run_sync(self._keys_under, request)
        if isinstance(request, p.MaxInode):
            return await trio.to_thread.run_sync(self._max_inode, request)
        if self.bucket is not None and isinstance(request, p.ReadHead | p.ReadChunk):
            return await self._answer_backed(request)
        if isinstance(request, INLINE_READS):
            # A handful of LevelDB point reads, nearly always from its block cache (a few µs
            # each): a worker-thread round trip would cost 20 times more than the reads.
            return self.answer_sync(request)
        return await trio.to_thread.run_sync(self.answer_sync, request)

    def _serving(self) -> bool:
        """This node leads, and its cores know of the leadership of the current term."""
        return bool(self._ready_term) and self._ready_term == self.driver.node.raft.term and (
            self.is_leader())

    def _sole_voter(self) -> bool:
        """A one-voter group's leader is the only one there can be, and every write it
        acknowledged is applied (propose returns after apply): its reads need no barrier."""
        return self.driver.node.raft.conf.voters == {self.node_id}

    async def on_request(self, peer: int, request: p.GroupRequest, *,
                         slice_ok: bool = False) -> Any:
        """A request from node `peer`'s gateway (over the plane, or with `slice_ok` over the
        bulk channel, which may send a READ's bytes from the chunk file: read_now)."""
        reply = self.read_now(request, slice_ok=slice_ok)  # a READ's bytes from the page cache
        if reply is not None:
            if type(request) is p.ReadHead:  # read and granted in one step (group_leases.py)
                return self._lease_reply(peer, request, reply)
            return reply
        reply = await self.handle(request)
        if isinstance(request, p.GetInodes | p.Lookup):
            return self._lease_reply(peer, request, reply)  # group_leases.py
        return reply

    def _check_version(self, version: int) -> None:
        current = self.ring_version()
        if current == 0:
            raise RemoteError(p.UNAVAILABLE, "the group has no node list yet")
        if version != current:
            raise RemoteError(p.STALE_RING, str(current))

    def ring_version(self) -> int:
        raw = self.sm.nodelist_bytes
        if raw is None:
            return 0
        if self._version_of[0] is not raw:  # decode once per applied NodeList
            self._version_of = (raw, NodeList.decode(raw).version)
        return self._version_of[1]

    async def _require_ready(self) -> None:
        """Leader with ready cores; waits briefly while this node is becoming leader."""
        if self._serving():
            return  # the common case, without a cancel scope
        with trio.move_on_after(self.config.txn_reply_timeout_s):
            while True:
                if not self.is_leader():
                    raise RemoteError(p.NOT_LEADER, str(self.leader_id()))
                if self._ready_term == self.driver.node.raft.term:
                    return
                await self._ready_event.wait()
        raise RemoteError(p.UNAVAILABLE, "leader not ready")

    # -- applying ---------------------------------------------------------------------------

    async def _apply(self, entries: list[Entry] | tuple[Entry, ...]) -> None:
        async with self._apply_lock:
            ring_events, ring_steps = self.sm.ring_events, self.sm.ring_steps
            try:
                results = await self._apply_batch(entries)
            except ApplyAbandoned:
                await trio.lowlevel.checkpoint()  # the group is being cancelled: stop here
                raise
            if self._ready_term:
                for r in results:
                    self._feed(r)
        if self.sm.ring_steps != ring_steps:
            self._leases_after_ring_change()  # state may have come from another group
        if self.sm.ring_events != ring_events:
            self._ring_changed()

    async def _apply_batch(self, entries: list[Entry] | tuple[Entry, ...]) -> list[Any]:
        """A small batch of txn records inline, anything else (or a full disk) in a worker
        thread (statemachine.py rules)."""
        # Only when no other task waits to run: under load the worker thread runs the apply on
        # the other core while this thread serves requests (always inline made one busy group
        # 13 % slower; inline when idle made it 8 % faster, and three groups 7 %).
        if self.sm.inline_ok(entries) and loop_is_idle():
            try:
                return self.sm.apply_sync(entries, inline=True)
            except ApplyNeedsThread as e:
                log.info("group %d: applying entries %d..%d in a worker thread: %s",
                         self.group, entries[0].index, entries[-1].index, e)
        return await trio.to_thread.run_sync(self.sm.apply_sync, entries)

    def _ring_changed(self) -> None:
        """A NodeList or ring-change entry was applied (or a snapshot installed)."""
        event, self.ring_event = self.ring_event, trio.Event()
        event.set()
        if self.bucket is not None:  # imported or purged chunk files: recount pinned bytes
            self._spawn(trio.to_thread.run_sync, self.bucket.cache.refresh_pinned_sync)

    async def _install(self, snapshot: Snapshot) -> None:
        async with self._apply_lock:
            await trio.to_thread.run_sync(
                self.sm.install_sync, snapshot.data, snapshot.meta.index)
        self._ring_changed()
        log.info("group %d: installed a snapshot at index %d", self.group, snapshot.meta.index)

    async def _snapshot_source(self, request: SnapshotRequest
                               ) -> tuple[SnapshotMeta, bytes, bool] | None:
        return await self._snapshot.piece(self.driver.node, request)

    async def _snapshot_bytes(self) -> bytes:
        async with self._apply_lock:
            return await trio.to_thread.run_sync(
                self.sm.snapshot_sync, self.config.snapshot_max_bytes)

    # -- compaction -------------------------------------------------------------------------

    async def _compactor(self) -> None:
        cfg = self.config
        while True:
            await trio.sleep(cfg.compact_check_interval_s)
            meta = self.driver.node.snapshot_meta()
            if meta.index - self.storage.first_index() + 1 < cfg.compact_after_entries:
                continue
            async with self._apply_lock:
                # The applied state must outlive the log entries that could rebuild it.
                await trio.to_thread.run_sync(self.sm.chunks.sync_all_sync)
                await self.kv.write([(fs_keys.SYNC_MARK, b"compact")], sync=True)
            await self.storage.create_snapshot(meta.index, meta.conf)
            await self.storage.compact(max(meta.index - cfg.compact_keep_entries, 1))
            log.info("group %d: compacted the log to %d (snapshot at %d)", self.group,
                     self.storage.first_index(), meta.index)
