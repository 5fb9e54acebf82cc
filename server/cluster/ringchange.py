"""Ring changes: a group joins or leaves the cluster, and the state it should own moves.

One change is a two-phase commit over every group of the old and the new ring, coordinated by
the leader of the lowest group in both (`coordinator_of`). Each step is a log entry in each
group (ringstate.py says what applying it does):

1. prepare: the coordinator's group first, then every other group, records the pending
   NodeList and freezes the state it will give away (transactions on it abort with MOVING and
   the gateways wait; everything else goes on).
2. export: each group's leader waits until no prepared transaction holds a frozen inode, then
   sends every key and materialized chunk it gives away to its new owner (import entries
   there), and logs `exported` (from then on its reads of that state wait too).
3. commit: the coordinator's group installs the new NodeList: this is the commit point. Then
   every other group installs it; each keeps only what the new ring places in it.
On any failure before 3 the coordinator aborts: its group first, then the others; each drops
what it imported and ends the freeze.

Rules:
- Presumed abort: a group whose change is pending asks the coordinator's group (`RingQuery`)
  while no coordinator drives it: a coordinator group at the new version means commit, one
  without the change pending means abort. A coordinator group whose leader does not drive
  its pending change (it restarted, or leadership moved) aborts it.
- One change at a time: a prepare meets a pending change and is refused (RING_BUSY).
- Every handler runs at its group's leader; others answer NOT_LEADER with a hint.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from raft.conf_change import ConfChange, ConfChangeType
from raft.errors import ConfChangeRejected
from server import failpoints, metrics
from server.cluster import protocol as p
from server.cluster import ringstate
from server.cluster.group import GroupRuntime
from server.cluster.membership import peer_url
from server.cluster.nodelist import NodeInfo, NodeList
from server.cluster.router import next_member
from server.cluster.statemachine import StateView, encode_nodelist_entry, encode_ring_entry
from server.fs import keys
from server.rpc.codec import message
from server.rpc.connection import NO_HANDLER
from server.rpc.frames import ConnectionLost, PeerUnavailable, RemoteError, RpcTimeout
from server.rpc.plane import RpcPlane

log = logging.getLogger("objcache.ringchange")

RING_BUSY = "ring-busy"  # another ring change is pending
BAD_CHANGE = "bad-change"  # the asked change is not possible (message says why)
BATCH_BYTES = 4 << 20  # one import entry (chunk bytes and keys); a chunk may exceed it alone
SEND_PARALLEL = 3  # import entries in flight to one group
STEP_TIMEOUT_S = 60.0  # one step at one group, retries included
QUIET_TIMEOUT_S = 30.0  # waiting for prepared transactions on frozen inodes to finish
CATCH_UP_TIMEOUT_S = 300.0  # a new replica receiving the group's log or snapshot
LEAVER_COMMIT_TIMEOUT_S = 10.0  # telling a group that leaves the outcome (it may be gone)
RESUME_INTERVAL_S = 0.5  # how often a group with a pending change asks its coordinator
KEY_LOCK_BASE = 1 << 63  # key-table locks (fsops.key_lock) live above this


@message("cl.ring_prepare")
@dataclass(frozen=True, slots=True)
class RingPrepare:
    nodelist: bytes  # the new NodeList
    change_id: bytes  # this attempt at the change (ringstate.py)


@message("cl.ring_export")
@dataclass(frozen=True, slots=True)
class RingExport:
    change_id: bytes
    precopy: bool  # True: send materialized chunks' bytes, unfrozen; False: freeze, send all


@message("cl.ring_stage")
@dataclass(frozen=True, slots=True)
class RingStage:
    change_id: bytes
    chunks: tuple[tuple[int, int, int, bytes], ...]  # (ino, index, version, bytes)


@message("cl.ring_import")
@dataclass(frozen=True, slots=True)
class RingImport:
    change_id: bytes
    items: tuple[tuple[bytes, bytes], ...]
    chunks: tuple[tuple[int, int, bytes], ...]  # (ino, index, the chunk file's bytes)


@message("cl.ring_commit")
@dataclass(frozen=True, slots=True)
class RingCommit:
    nodelist: bytes


@message("cl.ring_abort")
@dataclass(frozen=True, slots=True)
class RingAbort:
    change_id: bytes


@message("cl.ring_query")
@dataclass(frozen=True, slots=True)
class RingQuery:
    change_id: bytes  # the pending change the asker holds


@message("cl.ring_state")
@dataclass(frozen=True, slots=True)
class RingState:
    nodelist: bytes  # the group's installed NodeList (b"" if none)
    change_id: bytes  # the id of its pending change, b"" if none


@message("cl.ring_done")
@dataclass(frozen=True, slots=True)
class RingDone:
    moved_bytes: int = 0


@message("cl.join")
@dataclass(frozen=True, slots=True)
class JoinRequest:
    """Add `info` to the cluster: a new group, or a replica of an existing one. Any node takes
    it to the coordinator."""

    info: NodeInfo


@message("cl.leave")
@dataclass(frozen=True, slots=True)
class LeaveRequest:
    """Remove node `node_id`: a replica from its group, or the whole group when it is the
    only member."""

    node_id: int


@message("cl.replica_change")
@dataclass(frozen=True, slots=True)
class ReplicaChange:
    """At a group's leader: add `node_id` (at RPC address `rpc`) as a learner, wait until it
    caught up, promote it; or remove it (Raft dissertation §4.1: one server at a time)."""

    add: bool
    node_id: int
    rpc: str


@message("cl.retire")
@dataclass(frozen=True, slots=True)
class Retire:
    """To a replica removed from its group: stop, if `nodelist` (the cluster's) lacks you."""

    nodelist: bytes


@message("cl.change_reply")
@dataclass(frozen=True, slots=True)
class ChangeReply:
    nodelist: bytes  # the NodeList installed by the change
    moved_bytes: int
    seconds: float


def coordinator_of(old: NodeList, new: NodeList) -> int:
    """The group that decides a change: the lowest group in both rings."""
    both = set(old.groups()) & set(new.groups())
    if not both:
        raise RemoteError(BAD_CHANGE, "a change must keep at least one group")
    return min(both)


def joined(old: NodeList, info: NodeInfo) -> NodeList:
    """The NodeList with `info` added: to its group, or as a new one (RemoteError(BAD_CHANGE)
    if it cannot)."""
    if any(n.node_id == info.node_id for n in old.nodes):
        raise RemoteError(BAD_CHANGE, f"node {info.node_id} is in the cluster already")
    try:
        return NodeList(old.version + 1, (*old.nodes, info))
    except ValueError as e:
        raise RemoteError(BAD_CHANGE, str(e)) from None


def left(old: NodeList, node_id: int) -> NodeList:
    """The NodeList without node `node_id` (its whole group when it is the only member;
    RemoteError(BAD_CHANGE) if it cannot)."""
    try:
        old.node(node_id)
    except KeyError:
        raise RemoteError(BAD_CHANGE, f"node {node_id} is not in the cluster") from None
    rest = tuple(n for n in old.nodes if n.node_id != node_id)
    if not rest:
        raise RemoteError(BAD_CHANGE, "the last group cannot leave (drain the cluster)")
    return NodeList(old.version + 1, rest)


class GroupCaller:
    """Calls a group's leader by the members a NodeList gives it (following NOT_LEADER hints,
    trying the next member on silence), the local group in process."""

    def __init__(self, plane: RpcPlane, local: RingMember) -> None:
        self.plane = plane
        self.local = local
        self._leader: dict[int, int] = {}

    async def call(self, members: tuple[int, ...], group: int, msg: Any,
                   timeout_s: float = STEP_TIMEOUT_S) -> Any:
        deadline = trio.current_time() + timeout_s
        last: Exception | None = None
        while trio.current_time() < deadline:
            target = self._leader.get(group, members[0])
            try:
                if target == self.local.rt.node_id:
                    if isinstance(msg, JoinRequest | LeaveRequest):
                        return await self.local.drive(msg, forward=False)
                    return await self.local.take(msg)
                return await self.plane.call(target, msg, max(0.5, deadline
                                                              - trio.current_time()))
            except RemoteError as e:
                if e.code == p.NOT_LEADER:
                    hint = int(e.message) if e.message.isdigit() else 0
                    self._leader[group] = hint if hint in members else next_member(members, target)
                elif e.code not in (p.UNAVAILABLE, NO_HANDLER):  # NO_HANDLER: starting
                    raise
                last = e
            except (RpcTimeout, PeerUnavailable, ConnectionLost) as e:
                self._leader[group] = next_member(members, target)
                last = e
            await trio.sleep(0.05)
        raise RemoteError(p.UNAVAILABLE, f"group {group} did not answer in {timeout_s} s: "
                          f"{last!r}")


class RingMember:
    """This node's part in ring changes: the handlers of its group, the coordinator's driver,
    and the presumed-abort loop (module rules)."""

    def __init__(self, rt: GroupRuntime, plane: RpcPlane, chunk_size: int,
                 flush_all: Callable[[], Awaitable[None]] | None = None,
                 stop: Callable[[], None] | None = None) -> None:
        self.rt = rt
        self.plane = plane
        self.chunk_size = chunk_size
        self.flush_all = flush_all  # before a leave: upload what can be (best effort)
        self.stop = stop  # this node was removed from its group: stop it
        self.caller = GroupCaller(plane, self)
        self._driving = trio.Lock()  # one change at a time, driven by this node
        self._driven = b""  # the id of the change this node drives (b"": none)
        # What this leader pre-copied, by change: (ino, index) -> the chunk's version then.
        self._staged: dict[bytes, dict[tuple[int, int], int]] = {}
        for cls in (RingPrepare, RingExport, RingStage, RingImport, RingCommit, RingAbort,
                    RingQuery, ReplicaChange):
            plane.register(cls, self._on_step)
        plane.register(Retire, self._on_retire)
        for cls in (JoinRequest, LeaveRequest):
            plane.register(cls, self._on_change, admin=True)

    async def run(self) -> None:
        """The presumed-abort loop (module rules)."""
        while True:
            with trio.move_on_after(RESUME_INTERVAL_S):
                await self.rt.ring_event.wait()
            try:
                await self._resolve()
            except (RemoteError, trio.TooSlowError) as e:
                log.info("group %d: pending ring change: %s", self.rt.group, e)

    # -- requests ---------------------------------------------------------------------------

    async def _on_step(self, peer: int, msg: Any) -> Any:
        return await self.take(msg)

    async def take(self, msg: Any) -> Any:
        """A step of a change at this group (this node must lead it)."""
        if not self.rt.is_leader():
            raise RemoteError(p.NOT_LEADER, str(self.rt.leader_id()))
        if isinstance(msg, RingQuery):
            freeze = self.rt.sm.freeze
            return RingState(self.rt.sm.nodelist_bytes or b"",
                             freeze.change_id if freeze is not None else b"")
        if isinstance(msg, RingPrepare):
            self._know(NodeList.decode(msg.nodelist))
            await self._propose(ringstate.encode_prepare(msg.nodelist, msg.change_id))
            freeze = self.rt.sm.freeze
            if freeze is None or freeze.change_id != msg.change_id:
                raise RemoteError(RING_BUSY, f"group {self.rt.group}: another ring change "
                                  "is pending, or this group has a newer ring")
            return RingDone()
        if isinstance(msg, RingImport):
            self._pending(msg.change_id)
            await self._propose(ringstate.encode_import(msg.change_id, list(msg.items),
                                                        list(msg.chunks)))
            return RingDone()
        if isinstance(msg, RingStage):
            self._pending(msg.change_id)
            await self._propose(ringstate.encode_stage(msg.change_id, list(msg.chunks)))
            return RingDone()
        if isinstance(msg, RingExport):
            if msg.precopy:
                return RingDone(await self._precopy(msg.change_id))
            return RingDone(await self._export(msg.change_id))
        if isinstance(msg, ReplicaChange):
            await (self._add_replica(msg) if msg.add else self._remove_replica(msg))
            return RingDone()
        if isinstance(msg, RingCommit):
            version = NodeList.decode(msg.nodelist).version
            if self.rt.ring_version() < version:
                await self._propose_raw(encode_nodelist_entry(msg.nodelist))
            return RingDone()
        assert isinstance(msg, RingAbort), msg
        self._staged.pop(msg.change_id, None)
        await self._propose(ringstate.encode_abort(msg.change_id))
        return RingDone()

    def _know(self, nodelist: NodeList) -> None:
        """Dial every node of `nodelist` (a joining node is not known yet)."""
        for n in nodelist.nodes:
            if n.node_id != self.rt.node_id:
                self.plane.add_peer(n.node_id, peer_url(self.plane, n.rpc))

    def _pending(self, change_id: bytes) -> ringstate.Freeze:
        freeze = self.rt.sm.freeze
        if freeze is None or freeze.change_id != change_id:
            raise RemoteError(RING_BUSY, f"group {self.rt.group}: ring change "
                              f"{change_id.hex()} is not pending here")
        return freeze

    async def _propose(self, entry: dict[str, Any]) -> None:
        await self._propose_raw(encode_ring_entry(entry))

    async def _propose_raw(self, data: bytes) -> None:
        try:
            await self.rt.driver.propose(data)
        except Exception as e:  # NotLeader, a lost proposal: the caller retries the step
            raise RemoteError(p.UNAVAILABLE, f"proposal failed: {e!r}") from e

    # -- replicas (Raft membership changes; no state moves) ---------------------------------

    async def _add_replica(self, msg: ReplicaChange) -> None:
        raft = self.rt.driver.node.raft
        self.plane.add_peer(msg.node_id, peer_url(self.plane, msg.rpc))
        if msg.node_id not in raft.conf.voters | raft.conf.learners:
            await self._conf_change(ConfChange(ConfChangeType.ADD_LEARNER, msg.node_id))
        if msg.node_id in self.rt.driver.node.raft.conf.voters:
            return  # promoted already (a retried step)
        with trio.fail_after(CATCH_UP_TIMEOUT_S):  # the learner has the log (or a snapshot)
            while True:
                raft = self.rt.driver.node.raft
                pr = raft.trk.get(msg.node_id)
                if not self.rt.is_leader():
                    raise RemoteError(p.NOT_LEADER, str(self.rt.leader_id()))
                if pr is not None and pr.match >= raft.log.committed:
                    break
                await trio.sleep(0.05)
        await self._conf_change(ConfChange(ConfChangeType.PROMOTE, msg.node_id))
        log.info("group %d: node %d added as a voter", self.rt.group, msg.node_id)

    async def _remove_replica(self, msg: ReplicaChange) -> None:
        raft = self.rt.driver.node.raft
        if msg.node_id not in raft.conf.voters | raft.conf.learners:
            return  # removed already (a retried step)
        if msg.node_id == self.rt.node_id:
            # A leader does not remove itself: hand leadership to another voter first; the
            # caller follows the NOT_LEADER answer to it.
            others = sorted(raft.conf.voters - {self.rt.node_id})
            if not others:
                raise RemoteError(BAD_CHANGE, "the group's last voter cannot be removed")
            self.rt.driver.node.transfer_leader(others[0])
            with trio.move_on_after(5.0):
                while self.rt.is_leader():
                    await trio.sleep(0.05)
            raise RemoteError(p.NOT_LEADER, str(self.rt.leader_id()))
        await self._conf_change(ConfChange(ConfChangeType.REMOVE, msg.node_id))
        log.info("group %d: node %d removed", self.rt.group, msg.node_id)

    async def _conf_change(self, cc: ConfChange) -> None:
        try:
            await self.rt.driver.propose_conf_change(cc)
        except ConfChangeRejected as e:  # another change pending: the caller tries again
            raise RemoteError(p.UNAVAILABLE, f"membership change refused: {e}") from e
        except Exception as e:  # NotLeader, a lost proposal
            raise RemoteError(p.UNAVAILABLE, f"membership change failed: {e!r}") from e

    async def _on_retire(self, peer: int, msg: Retire) -> RingDone:
        nodelist = NodeList.decode(msg.nodelist)
        if not nodelist.has(self.rt.node_id) and self.stop:
            log.info("node %d: removed from group %d; stopping", self.rt.node_id,
                     self.rt.group)
            self.stop()
        return RingDone()

    # -- export -----------------------------------------------------------------------------

    async def _precopy(self, change_id: bytes) -> int:
        """Before the freeze: the bytes of every materialized chunk this group gives away, to
        its new owner (stage entries). The freeze then only waits for what changed since."""
        freeze = self._pending(change_id)
        if freeze.frozen or freeze.exported:
            return 0
        group, ring, kv = self.rt.group, freeze.new, self.rt.kv

        def scan() -> dict[int, list[tuple[bytes, bytes]]]:
            out: dict[int, list[tuple[bytes, bytes]]] = {}
            for k, v in ringstate.scan_all(kv, keys.MATERIALIZED):
                ino, index = keys.parse_materialized_key(k)
                where = ring.group_of_chunk(ino, index)
                if where != group and int.from_bytes(v, "big"):
                    out.setdefault(where, []).append((k, v))
            return out

        by_group = await trio.to_thread.run_sync(scan)
        members = freeze.nodelist.groups()
        staged = self._staged.setdefault(change_id, {})
        moved = 0
        for dest, items in sorted(by_group.items()):
            moved += await self._stage(members[dest], dest, change_id, items, staged)
        metrics.MIGRATED_BYTES.inc(moved)
        log.info("group %d: pre-copied %d chunks (%d bytes) for ring version %d", group,
                 len(staged), moved, ring.version)
        return moved

    async def _stage(self, members: tuple[int, ...], dest: int, change_id: bytes,
                     items: list[tuple[bytes, bytes]], staged: dict[tuple[int, int], int]
                     ) -> int:
        chunks_dir = self.rt.sm.chunks
        version = {keys.parse_materialized_key(k): int.from_bytes(v, "big") for k, v in items}
        plan = await trio.to_thread.run_sync(_batches, chunks_dir, items)
        limit = trio.Semaphore(SEND_PARALLEL)
        moved = 0

        async def one(blobs: list[tuple[int, int, bytes]]) -> None:
            try:
                await self.caller.call(members, dest, RingStage(change_id, tuple(
                    (ino, index, version[ino, index], data) for ino, index, data in blobs)))
                for ino, index, _ in blobs:
                    staged[ino, index] = version[ino, index]
            finally:
                limit.release()

        async with trio.open_nursery() as nursery:
            for _, marked in plan:
                await limit.acquire()
                blobs = await trio.to_thread.run_sync(_read_chunks, chunks_dir, marked)
                moved += sum(len(b[2]) for b in blobs)
                nursery.start_soon(one, blobs)
        return moved

    async def _export(self, change_id: bytes) -> int:
        freeze = self._pending(change_id)
        version = freeze.new.version
        if freeze.exported:
            return 0
        if not freeze.frozen:
            await self._propose(ringstate.encode_freeze(change_id))
            freeze = self._pending(change_id)
        group = self.rt.group
        ring = freeze.new
        kv = self.rt.kv

        def scan() -> dict[int, list[tuple[bytes, bytes]]]:
            out: dict[int, list[tuple[bytes, bytes]]] = {}
            for where, k, v in ringstate.leaving(kv, ring, group, ringstate.store_roots(kv)):
                out.setdefault(where, []).append((k, v))
            return out

        start = time.perf_counter()
        await self._quiet(freeze)
        quiet = time.perf_counter()
        by_group = await trio.to_thread.run_sync(scan)
        scanned = time.perf_counter()
        members = freeze.nodelist.groups()
        moved = 0
        staged = self._staged.pop(change_id, {})
        for dest, items in sorted(by_group.items()):
            moved += await self._send(members[dest], dest, change_id, items, staged)
        await self._propose(ringstate.encode_exported(change_id))
        metrics.MIGRATED_BYTES.inc(moved)
        log.info("group %d: sent %d keys (%d bytes) for ring version %d (quiet %.3f s, scan "
                 "%.3f s, send %.3f s)", group, sum(len(v) for v in by_group.values()), moved,
                 version, quiet - start, scanned - quiet, time.perf_counter() - scanned)
        return moved

    async def _quiet(self, freeze: ringstate.Freeze) -> None:
        """Until no prepared transaction holds a frozen inode (or a moving key table)."""
        with trio.fail_after(QUIET_TIMEOUT_S):
            while True:
                locks = await trio.to_thread.run_sync(self.rt.sm.txn.locks, StateView(self.rt.kv))
                if not any(ino in freeze.inos or (freeze.stores and ino >= KEY_LOCK_BASE)
                           for ino in locks):
                    return
                await trio.sleep(0.01)

    async def _send(self, members: tuple[int, ...], dest: int, change_id: bytes,
                    items: list[tuple[bytes, bytes]], staged: dict[tuple[int, int], int]
                    ) -> int:
        """Import entries at `dest`, each up to BATCH_BYTES (a chunk may exceed it alone),
        SEND_PARALLEL at a time: the next batch travels while `dest` logs the one before."""
        chunks_dir = self.rt.sm.chunks
        moved = 0
        limit = trio.Semaphore(SEND_PARALLEL)

        async def one(batch: list[tuple[bytes, bytes]], blobs: list[tuple[int, int, bytes]]
                      ) -> None:
            try:
                await self.caller.call(members, dest, RingImport(change_id, tuple(batch),
                                                                 tuple(blobs)))
            finally:
                limit.release()

        plan = await trio.to_thread.run_sync(_batches, chunks_dir, items, staged)
        async with trio.open_nursery() as nursery:
            for batch, marked in plan:
                await limit.acquire()
                blobs = await trio.to_thread.run_sync(_read_chunks, chunks_dir, marked)
                moved += sum(len(b[2]) for b in blobs)
                nursery.start_soon(one, batch, blobs)
        return moved + sum(len(k) + len(v) for k, v in items)

    # -- driving a change (at the coordinator's leader) -------------------------------------

    async def _on_change(self, peer: int, msg: JoinRequest | LeaveRequest) -> ChangeReply:
        return await self.drive(msg, forward=True)

    async def drive(self, msg: JoinRequest | LeaveRequest, *, forward: bool) -> ChangeReply:
        """Make the change if this node leads the coordinator's group; else hand it to that
        leader (`forward`) or answer NOT_LEADER (when this node is the one handed it)."""
        current = self._nodelist()
        new = joined(current, msg.info) if isinstance(msg, JoinRequest) else left(
            current, msg.node_id)
        coord = coordinator_of(current, new)
        if coord != self.rt.group or not self.rt.is_leader():
            if not forward:
                raise RemoteError(p.NOT_LEADER, str(self.rt.leader_id()))
            return await self.caller.call(current.members(coord), coord, msg, 900.0)
        if set(new.groups()) == set(current.groups()):
            return await self._replica_change(current, new, msg)
        if isinstance(msg, LeaveRequest) and self.flush_all is not None:
            with trio.move_on_after(STEP_TIMEOUT_S):
                await self.flush_all()
        return await self.change(new)

    async def _replica_change(self, current: NodeList, new: NodeList,
                              msg: JoinRequest | LeaveRequest) -> ChangeReply:
        """A replica joins or leaves a group: a Raft membership change in that group, then a
        NodeList with the same groups (nothing moves; every router learns the members)."""
        if isinstance(msg, JoinRequest):
            info = msg.info
            self._know(new)
            await self.caller.call(current.members(info.group), info.group,
                                   ReplicaChange(True, info.node_id, info.rpc),
                                   CATCH_UP_TIMEOUT_S + STEP_TIMEOUT_S)
            metrics.MEMBERSHIP_CHANGES.labels("replica_add").inc()
            return await self.change(new, count=False)
        info = current.node(msg.node_id)
        await self.caller.call(current.members(info.group), info.group,
                               ReplicaChange(False, info.node_id, info.rpc))
        reply = await self.change(new, count=False)
        metrics.MEMBERSHIP_CHANGES.labels("replica_remove").inc()
        self.plane.add_peer(info.node_id, peer_url(self.plane, info.rpc))
        try:  # it no longer hears its group's log: tell it to stop
            await self.plane.call(info.node_id, Retire(reply.nodelist), 5.0)
        except (RemoteError, PeerUnavailable, RpcTimeout, ConnectionLost) as e:
            log.info("node %d was removed but not told to stop: %r", info.node_id, e)
        self.plane.remove_peer(info.node_id)
        return reply

    def _nodelist(self) -> NodeList:
        raw = self.rt.sm.nodelist_bytes
        if raw is None:
            raise RemoteError(p.UNAVAILABLE, "no node list yet")
        return NodeList.decode(raw)

    async def change(self, new: NodeList, *, count: bool = True) -> ChangeReply:
        """Drive the change from the current NodeList to `new` (module docstring)."""
        async with self._driving:
            old = self._nodelist()
            if new.version != old.version + 1:
                raise RemoteError(BAD_CHANGE, f"version {new.version} after {old.version}")
            freeze = self.rt.sm.freeze
            if freeze is not None:  # a change no one drives (this node restarted): drop it
                log.info("group %d: ring change to version %d has no driver: aborting",
                         self.rt.group, freeze.new.version)
                await self.take(RingAbort(freeze.change_id))
            change_id = secrets.token_bytes(8)
            self._driven = change_id
            self._know(new)
            start = time.perf_counter()
            try:
                moved = await self._two_phase(old, new, change_id)
            finally:
                self._driven = b""
        kind = "join" if len(new.nodes) > len(old.nodes) else "leave"
        if count:
            metrics.MEMBERSHIP_CHANGES.labels(kind).inc()
        seconds = time.perf_counter() - start
        log.info("ring version %d -> %d (%s) in %.2f s, %d bytes moved", old.version,
                 new.version, kind, seconds, moved)
        return ChangeReply(new.encode(), moved, seconds)

    async def _two_phase(self, old: NodeList, new: NodeList, change_id: bytes) -> int:
        members = {**old.groups(), **new.groups()}
        coord = self.rt.group
        others = sorted(g for g in members if g != coord)
        raw = new.encode()
        moved = 0
        steps = [time.perf_counter()]
        try:
            await self.take(RingPrepare(raw, change_id))
            await self._each(members, others, RingPrepare(raw, change_id))
            steps.append(time.perf_counter())
            sources = sorted(old.groups())
            replies = await self._each(members, sources, RingExport(change_id, True))
            steps.append(time.perf_counter())
            replies += await self._each(members, sources, RingExport(change_id, False))
            steps.append(time.perf_counter())
            moved = sum(r.moved_bytes for r in replies)
        except BaseException as e:
            log.warning("ring change to version %d failed (%r): aborting", new.version, e)
            with trio.CancelScope(shield=True), trio.move_on_after(STEP_TIMEOUT_S):
                await self.take(RingAbort(change_id))
                await self._each(members, others, RingAbort(change_id), check=False)
            raise
        await failpoints.reach("ring.before_commit")
        await self.take(RingCommit(raw))  # the commit point
        await failpoints.reach("ring.after_commit")
        staying = [g for g in others if g in new.groups()]
        leaving = [g for g in others if g not in new.groups()]
        # A group that leaves stops once it installed the list, maybe before its answer gets
        # out; if it did not install it, it learns the outcome from us when it restarts.
        await self._each(members, leaving, RingCommit(raw), check=False,
                         timeout_s=LEAVER_COMMIT_TIMEOUT_S)
        await self._each(members, staying, RingCommit(raw), timeout_s=600.0)
        steps.append(time.perf_counter())
        log.info("ring version %d: prepare %.3f s, pre-copy %.3f s, frozen export %.3f s, "
                 "commit %.3f s", new.version, *(b - a for a, b in itertools.pairwise(steps)))
        return moved

    async def _each(self, members: dict[int, tuple[int, ...]], groups: list[int], msg: Any, *,
                    check: bool = True, timeout_s: float = STEP_TIMEOUT_S) -> list[Any]:
        replies: list[Any] = []
        errors: list[Exception] = []

        async def one(g: int) -> None:
            try:
                if g == self.rt.group:
                    replies.append(await self.take(msg))
                else:
                    replies.append(await self.caller.call(members[g], g, msg, timeout_s))
            except RemoteError as e:
                errors.append(RemoteError(e.code, f"group {g}: {e.message}"))

        async with trio.open_nursery() as nursery:
            for g in groups:
                nursery.start_soon(one, g)
        if errors and check:
            raise errors[0]
        return replies

    # -- presumed abort ---------------------------------------------------------------------

    async def _resolve(self) -> None:
        freeze = self.rt.sm.freeze
        if freeze is None or not self.rt.is_leader() or self._driven == freeze.change_id:
            return
        current = self.rt.sm.nodelist_bytes
        old = NodeList.decode(current) if current is not None else None
        pending = freeze.nodelist
        coord = coordinator_of(old, pending) if old is not None else min(
            g for g in pending.groups() if g != self.rt.group)
        if coord == self.rt.group:
            log.info("group %d: ring change to version %d has no driver: aborting",
                     self.rt.group, pending.version)
            await self.take(RingAbort(freeze.change_id))
            return
        state = await self.caller.call(pending.members(coord), coord,
                                       RingQuery(freeze.change_id), 5.0)
        theirs = NodeList.decode(state.nodelist).version if state.nodelist else 0
        if theirs >= pending.version:
            await self.take(RingCommit(pending.encode()))
            log.info("group %d: ring version %d committed (learned from group %d)",
                     self.rt.group, pending.version, coord)
        elif state.change_id != freeze.change_id:
            await self.take(RingAbort(freeze.change_id))
            log.info("group %d: ring change to version %d aborted (learned from group %d)",
                     self.rt.group, pending.version, coord)


Batch = tuple[list[tuple[bytes, bytes]], list[tuple[int, int]]]  # keys, chunks to read


def _batches(chunks: Any, items: list[tuple[bytes, bytes]],
             staged: dict[tuple[int, int], int] | None = None) -> list[Batch]:
    """`items` cut into import entries of about BATCH_BYTES, with the materialized chunks
    whose bytes go along: those not pre-copied at their current version (`staged`). Worker
    thread: it looks at the chunk files' sizes."""
    staged = staged or {}
    out: list[Batch] = []
    batch: list[tuple[bytes, bytes]] = []
    marked: list[tuple[int, int]] = []
    size = 0
    for k, v in items:
        batch.append((k, v))
        size += len(k) + len(v)
        if k[:4] == keys.MATERIALIZED and v and int.from_bytes(v, "big"):
            ino, index = keys.parse_materialized_key(k)
            if staged.get((ino, index)) == int.from_bytes(v, "big"):
                continue  # its bytes are there already, unchanged since
            marked.append((ino, index))
            with contextlib.suppress(FileNotFoundError):
                size += chunks.chunk_path(ino, index).stat().st_size
        if size >= BATCH_BYTES:
            out.append((batch, marked))
            batch, marked, size = [], [], 0
    if batch:
        out.append((batch, marked))
    return out


def _read_chunks(chunks: Any, marked: list[tuple[int, int]]) -> list[tuple[int, int, bytes]]:
    """The bytes of these materialized chunk files (worker thread)."""
    out = []
    for ino, index in marked:
        try:
            out.append((ino, index, chunks.chunk_path(ino, index).read_bytes()))
        except FileNotFoundError:
            out.append((ino, index, b""))  # materialized, never written past its start
    return out




async def learn_cluster(plane: RpcPlane, seed_url: str, timeout_s: float) -> tuple[int, NodeList]:
    """The node id at `seed_url` and the cluster's NodeList as it knows it (a joining node
    decides from it whether it founds a new group or joins one as a replica)."""
    with trio.move_on_after(timeout_s):
        while True:
            try:
                seed = await plane.identify(seed_url, 5.0)
                plane.add_peer(seed, seed_url)
                reply = await plane.call(seed, p.GetNodeList(), 10.0)
                return seed, NodeList.decode(reply.nodelist)
            except (RemoteError, PeerUnavailable, RpcTimeout, ConnectionLost) as e:
                log.info("joining through %s: %r; asking again", seed_url, e)
            await trio.sleep(1.0)
    raise JoinError(f"no member answered at {seed_url} in {timeout_s} s")


async def join_cluster(plane: RpcPlane, rt: GroupRuntime, me: NodeInfo, seed: int,
                       timeout_s: float) -> NodeList:
    """Start-up of a joining node (its group member runs, with no NodeList): ask node `seed`
    to add it until the change is made, then return the NodeList its group installed, the
    first that names this node. A change refused for good (BAD_CHANGE) raises JoinError;
    busy or unreachable members are asked again until `timeout_s`."""

    def joined_here() -> bool:
        raw = rt.sm.nodelist_bytes
        return raw is not None and NodeList.decode(raw).has(me.node_id)

    with trio.move_on_after(timeout_s):
        # A new group is ready for the change's steps once it leads itself; a replica waits
        # for its group's leader to add it.
        while rt.driver.node.raft.conf.voters == {me.node_id} and not rt.is_leader():
            await trio.sleep(0.01)
        backoff_s = 0.1
        while not joined_here():
            try:
                await plane.call(seed, JoinRequest(me), 900.0)
            except RemoteError as e:
                if e.code == BAD_CHANGE and "already" not in e.message:
                    raise JoinError(f"node {me.node_id} cannot join: {e.message}") from None
                log.info("node %d: join: %s; asking again", me.node_id, e)
            except (PeerUnavailable, RpcTimeout, ConnectionLost) as e:
                log.info("node %d: join through node %d: %r; asking again", me.node_id, seed, e)
            # The change installs our group's NodeList (or our own resolve loop learns it).
            with trio.move_on_after(backoff_s):
                while not joined_here():
                    await rt.ring_event.wait()
            backoff_s = min(backoff_s * 2, 5.0)
        assert rt.sm.nodelist_bytes is not None
        return NodeList.decode(rt.sm.nodelist_bytes)
    raise JoinError(f"node {me.node_id} did not join through node {seed} in {timeout_s} s")


class JoinError(Exception):
    """A node could not join the cluster (the node's start-up turns it into StartupError)."""
