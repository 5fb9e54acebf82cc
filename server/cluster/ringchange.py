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

The messages are in ringmsgs.py, what moves (pre-copy and export) in ringmove.py, and a
node's join at its start in ringjoin.py.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from raft.conf_change import ConfChange, ConfChangeType
from raft.errors import ConfChangeRejected
from server import failpoints, metrics
from server.cluster import protocol as p
from server.cluster import ringstate
from server.cluster.group import GroupRuntime
from server.cluster.membership import peer_url
from server.cluster.nodelist import NodeList
from server.cluster.ringmove import StateMover
from server.cluster.ringmsgs import (
    BAD_CHANGE,
    RING_BUSY,
    ChangeReply,
    JoinRequest,
    LeaveRequest,
    ReplicaChange,
    Retire,
    RingAbort,
    RingCommit,
    RingDone,
    RingExport,
    RingImport,
    RingPrepare,
    RingQuery,
    RingStage,
    RingState,
    coordinator_of,
    joined,
    left,
)
from server.cluster.router import next_member
from server.cluster.statemachine import encode_nodelist_entry, encode_ring_entry
from server.rpc.connection import NO_HANDLER
from server.rpc.frames import ConnectionLost, PeerUnavailable, RemoteError, RpcTimeout
from server.rpc.plane import RpcPlane

log = logging.getLogger("objcache.ringchange")

STEP_TIMEOUT_S = 60.0  # one step at one group, retries included
CATCH_UP_TIMEOUT_S = 300.0  # a new replica receiving the group's log or snapshot
LEAVER_COMMIT_TIMEOUT_S = 10.0  # telling a group that leaves the outcome (it may be gone)
RESUME_INTERVAL_S = 0.5  # how often a group with a pending change asks its coordinator


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


class RingMember(StateMover):
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
