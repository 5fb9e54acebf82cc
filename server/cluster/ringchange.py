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

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from server import failpoints, metrics
from server.cluster import protocol as p
from server.cluster import ringstate
from server.cluster.group import GroupRuntime
from server.cluster.membership import peer_url
from server.cluster.nodelist import NodeInfo, NodeList
from server.cluster.statemachine import StateView, encode_nodelist_entry, encode_ring_entry
from server.fs import keys
from server.rpc.codec import message
from server.rpc.frames import ConnectionLost, PeerUnavailable, RemoteError, RpcTimeout
from server.rpc.plane import RpcPlane

log = logging.getLogger("objcache.ringchange")

RING_BUSY = "ring-busy"  # another ring change is pending
BAD_CHANGE = "bad-change"  # the asked change is not possible (message says why)
BATCH_BYTES = 8 << 20  # one import entry (chunk bytes and keys); a chunk may exceed it alone
STEP_TIMEOUT_S = 60.0  # one step at one group, retries included
QUIET_TIMEOUT_S = 30.0  # waiting for prepared transactions on frozen inodes to finish
RESUME_INTERVAL_S = 0.5  # how often a group with a pending change asks its coordinator
KEY_LOCK_BASE = 1 << 63  # key-table locks (fsops.key_lock) live above this


@message("cl.ring_prepare")
@dataclass(frozen=True, slots=True)
class RingPrepare:
    nodelist: bytes  # the new NodeList


@message("cl.ring_export")
@dataclass(frozen=True, slots=True)
class RingExport:
    version: int


@message("cl.ring_import")
@dataclass(frozen=True, slots=True)
class RingImport:
    version: int
    items: tuple[tuple[bytes, bytes], ...]
    chunks: tuple[tuple[int, int, bytes], ...]  # (ino, index, the chunk file's bytes)


@message("cl.ring_commit")
@dataclass(frozen=True, slots=True)
class RingCommit:
    nodelist: bytes


@message("cl.ring_abort")
@dataclass(frozen=True, slots=True)
class RingAbort:
    version: int


@message("cl.ring_query")
@dataclass(frozen=True, slots=True)
class RingQuery:
    version: int  # the pending change the asker holds


@message("cl.ring_state")
@dataclass(frozen=True, slots=True)
class RingState:
    nodelist: bytes  # the group's installed NodeList (b"" if none)
    pending: int  # the version of its pending change, 0 if none


@message("cl.ring_done")
@dataclass(frozen=True, slots=True)
class RingDone:
    moved_bytes: int = 0


@message("cl.join")
@dataclass(frozen=True, slots=True)
class JoinRequest:
    """Add `info` to the cluster (as a new group). Any node takes it to the coordinator."""

    info: NodeInfo


@message("cl.leave")
@dataclass(frozen=True, slots=True)
class LeaveRequest:
    """Remove node `node_id` (the whole group when it is the group's only member)."""

    node_id: int


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
    """The NodeList with `info` added as a new group (RemoteError(BAD_CHANGE) if it cannot)."""
    if any(n.node_id == info.node_id for n in old.nodes):
        raise RemoteError(BAD_CHANGE, f"node {info.node_id} is in the cluster already")
    if info.group in old.groups():
        raise RemoteError(BAD_CHANGE, f"group {info.group} exists: adding a replica to a "
                          "group is a Raft membership change, not supported yet")
    try:
        return NodeList(old.version + 1, (*old.nodes, info))
    except ValueError as e:
        raise RemoteError(BAD_CHANGE, str(e)) from None


def left(old: NodeList, node_id: int) -> NodeList:
    """The NodeList without node `node_id`'s group (RemoteError(BAD_CHANGE) if it cannot)."""
    try:
        info = old.node(node_id)
    except KeyError:
        raise RemoteError(BAD_CHANGE, f"node {node_id} is not in the cluster") from None
    if len(old.members(info.group)) > 1:
        raise RemoteError(BAD_CHANGE, f"node {node_id} is one of several replicas of group "
                          f"{info.group}: removing a replica is not supported yet")
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
                    return await self.local.take(msg)
                return await self.plane.call(target, msg, max(0.5, deadline
                                                              - trio.current_time()))
            except RemoteError as e:
                if e.code == p.NOT_LEADER:
                    hint = int(e.message) if e.message.isdigit() else 0
                    self._leader[group] = hint if hint in members else _next(members, target)
                elif e.code not in (p.UNAVAILABLE,):
                    raise
                last = e
            except (RpcTimeout, PeerUnavailable, ConnectionLost) as e:
                self._leader[group] = _next(members, target)
                last = e
            await trio.sleep(0.05)
        raise RemoteError(p.UNAVAILABLE, f"group {group} did not answer in {timeout_s} s: "
                          f"{last!r}")


class RingMember:
    """This node's part in ring changes: the handlers of its group, the coordinator's driver,
    and the presumed-abort loop (module rules)."""

    def __init__(self, rt: GroupRuntime, plane: RpcPlane, chunk_size: int,
                 flush_all: Callable[[], Awaitable[None]] | None = None) -> None:
        self.rt = rt
        self.plane = plane
        self.chunk_size = chunk_size
        self.flush_all = flush_all  # before a leave: upload what can be (best effort)
        self.caller = GroupCaller(plane, self)
        self._driving = trio.Lock()  # one change at a time, driven by this node
        self._driven = 0  # the version of the change this node drives (0: none)
        for cls in (RingPrepare, RingExport, RingImport, RingCommit, RingAbort, RingQuery):
            plane.register(cls, self._on_step)
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
                             freeze.new.version if freeze is not None else 0)
        if isinstance(msg, RingPrepare):
            self._know(NodeList.decode(msg.nodelist))
            await self._propose(ringstate.encode_prepare(msg.nodelist))
            freeze = self.rt.sm.freeze
            version = NodeList.decode(msg.nodelist).version
            if freeze is None and self.rt.ring_version() >= version:
                return RingDone()  # installed already (a retried step)
            if freeze is None or freeze.new.version != version:
                raise RemoteError(RING_BUSY, f"group {self.rt.group}: another ring change "
                                  "is pending, or this group has a newer ring")
            return RingDone()
        if isinstance(msg, RingImport):
            self._pending(msg.version)
            await self._propose(ringstate.encode_import(msg.version, list(msg.items),
                                                        list(msg.chunks)))
            return RingDone()
        if isinstance(msg, RingExport):
            return RingDone(await self._export(msg.version))
        if isinstance(msg, RingCommit):
            version = NodeList.decode(msg.nodelist).version
            if self.rt.ring_version() < version:
                await self._propose_raw(encode_nodelist_entry(msg.nodelist))
            return RingDone()
        assert isinstance(msg, RingAbort), msg
        await self._propose(ringstate.encode_abort(msg.version))
        return RingDone()

    def _know(self, nodelist: NodeList) -> None:
        """Dial every node of `nodelist` (a joining node is not known yet)."""
        for n in nodelist.nodes:
            if n.node_id != self.rt.node_id:
                self.plane.add_peer(n.node_id, peer_url(self.plane, n.rpc))

    def _pending(self, version: int) -> ringstate.Freeze:
        freeze = self.rt.sm.freeze
        if freeze is None or freeze.new.version != version:
            raise RemoteError(RING_BUSY, f"group {self.rt.group}: change to version {version} "
                              "is not pending here")
        return freeze

    async def _propose(self, entry: dict[str, Any]) -> None:
        await self._propose_raw(encode_ring_entry(entry))

    async def _propose_raw(self, data: bytes) -> None:
        try:
            await self.rt.driver.propose(data)
        except Exception as e:  # NotLeader, a lost proposal: the caller retries the step
            raise RemoteError(p.UNAVAILABLE, f"proposal failed: {e!r}") from e

    # -- export -----------------------------------------------------------------------------

    async def _export(self, version: int) -> int:
        freeze = self._pending(version)
        if freeze.exported:
            return 0
        await self._quiet(freeze)
        group = self.rt.group
        ring = freeze.new
        kv = self.rt.kv

        def scan() -> dict[int, list[tuple[bytes, bytes]]]:
            roots = ringstate.store_roots(kv)
            out: dict[int, list[tuple[bytes, bytes]]] = {}
            keep = ring if group in ring.groups else None
            for _, k, v in ringstate.leaving(kv, keep, group, roots):
                where = ringstate.owner(k, ring, roots)
                if where is not None:
                    out.setdefault(where[0], []).append((k, v))
            return out

        by_group = await trio.to_thread.run_sync(scan)
        members = freeze.nodelist.groups()
        moved = 0
        for dest, items in sorted(by_group.items()):
            moved += await self._send(members[dest], dest, version, items)
        await self._propose(ringstate.encode_exported(version))
        metrics.MIGRATED_BYTES.inc(moved)
        log.info("group %d: sent %d keys (%d bytes) for ring version %d", group,
                 sum(len(v) for v in by_group.values()), moved, version)
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

    async def _send(self, members: tuple[int, ...], dest: int, version: int,
                    items: list[tuple[bytes, bytes]]) -> int:
        """Import entries at `dest`, each up to BATCH_BYTES (a chunk may exceed it alone)."""
        chunks_dir = self.rt.sm.chunks
        moved = 0
        batch: list[tuple[bytes, bytes]] = []
        blobs: list[tuple[int, int, bytes]] = []
        size = 0

        async def flush() -> None:
            nonlocal batch, blobs, size
            if batch or blobs:
                await self.caller.call(members, dest, RingImport(version, tuple(batch),
                                                                 tuple(blobs)))
            batch, blobs, size = [], [], 0

        for k, v in items:
            batch.append((k, v))
            size += len(k) + len(v)
            if k[:4] == keys.MATERIALIZED and v and int.from_bytes(v, "big"):
                ino, index = keys.parse_materialized_key(k)
                data = await trio.to_thread.run_sync(_chunk_bytes, chunks_dir, ino, index)
                blobs.append((ino, index, data))
                size += len(data)
                moved += len(data)
            if size >= BATCH_BYTES:
                await flush()
        await flush()
        return moved + sum(len(k) + len(v) for k, v in items)

    # -- driving a change (at the coordinator's leader) -------------------------------------

    async def _on_change(self, peer: int, msg: JoinRequest | LeaveRequest) -> ChangeReply:
        current = self._nodelist()
        new = joined(current, msg.info) if isinstance(msg, JoinRequest) else left(
            current, msg.node_id)
        coord = coordinator_of(current, new)
        if coord != self.rt.group:  # not ours to drive: hand it to the coordinator's leader
            return await self.caller.call(current.members(coord), coord, msg, 600.0)
        if not self.rt.is_leader():
            raise RemoteError(p.NOT_LEADER, str(self.rt.leader_id()))
        if isinstance(msg, LeaveRequest) and self.flush_all is not None:
            with trio.move_on_after(STEP_TIMEOUT_S):
                await self.flush_all()
        return await self.change(new)

    def _nodelist(self) -> NodeList:
        raw = self.rt.sm.nodelist_bytes
        if raw is None:
            raise RemoteError(p.UNAVAILABLE, "no node list yet")
        return NodeList.decode(raw)

    async def change(self, new: NodeList) -> ChangeReply:
        """Drive the change from the current NodeList to `new` (module docstring)."""
        async with self._driving:
            old = self._nodelist()
            if new.version != old.version + 1:
                raise RemoteError(BAD_CHANGE, f"version {new.version} after {old.version}")
            self._driven = new.version
            self._know(new)
            start = time.perf_counter()
            try:
                moved = await self._two_phase(old, new)
            finally:
                self._driven = 0
        kind = "join" if len(new.groups()) > len(old.groups()) else "leave"
        metrics.MEMBERSHIP_CHANGES.labels(kind).inc()
        seconds = time.perf_counter() - start
        log.info("ring version %d -> %d (%s) in %.2f s, %d bytes moved", old.version,
                 new.version, kind, seconds, moved)
        return ChangeReply(new.encode(), moved, seconds)

    async def _two_phase(self, old: NodeList, new: NodeList) -> int:
        members = {**old.groups(), **new.groups()}
        coord = self.rt.group
        others = sorted(g for g in members if g != coord)
        raw = new.encode()
        moved = 0
        try:
            await self.take(RingPrepare(raw))
            await self._each(members, others, RingPrepare(raw))
            replies = await self._each(members, sorted(old.groups()), RingExport(new.version))
            moved = sum(r.moved_bytes for r in replies)
        except BaseException as e:
            log.warning("ring change to version %d failed (%r): aborting", new.version, e)
            with trio.CancelScope(shield=True), trio.move_on_after(STEP_TIMEOUT_S):
                await self.take(RingAbort(new.version))
                await self._each(members, others, RingAbort(new.version), check=False)
            raise
        await failpoints.reach("ring.before_commit")
        await self.take(RingCommit(raw))  # the commit point
        await failpoints.reach("ring.after_commit")
        await self._each(members, others, RingCommit(raw), timeout_s=600.0)
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
        if freeze is None or not self.rt.is_leader() or self._driven == freeze.new.version:
            return
        current = self.rt.sm.nodelist_bytes
        old = NodeList.decode(current) if current is not None else None
        pending = freeze.nodelist
        coord = coordinator_of(old, pending) if old is not None else min(
            g for g in pending.groups() if g != self.rt.group)
        if coord == self.rt.group:
            log.info("group %d: ring change to version %d has no driver: aborting",
                     self.rt.group, pending.version)
            await self.take(RingAbort(pending.version))
            return
        state = await self.caller.call(pending.members(coord), coord,
                                       RingQuery(pending.version), 5.0)
        theirs = NodeList.decode(state.nodelist).version if state.nodelist else 0
        if theirs >= pending.version:
            await self.take(RingCommit(pending.encode()))
            log.info("group %d: ring version %d committed (learned from group %d)",
                     self.rt.group, pending.version, coord)
        elif state.pending != pending.version:
            await self.take(RingAbort(pending.version))
            log.info("group %d: ring change to version %d aborted (learned from group %d)",
                     self.rt.group, pending.version, coord)


def _chunk_bytes(chunks: Any, ino: int, index: int) -> bytes:
    try:
        return chunks.chunk_path(ino, index).read_bytes()
    except FileNotFoundError:
        return b""  # a materialized chunk never written past its start: zeros


def _next(members: tuple[int, ...], node_id: int) -> int:
    i = members.index(node_id) if node_id in members else -1
    return members[(i + 1) % len(members)]


async def join_cluster(plane: RpcPlane, rt: GroupRuntime, me: NodeInfo, seed_url: str,
                       timeout_s: float) -> NodeList:
    """Start-up of a joining node (its group runs, with no NodeList): ask the member at
    `seed_url` to add it, until the change is made, then return the NodeList its group
    installed. A change refused for good (BAD_CHANGE) raises JoinError; busy or unreachable
    members are asked again until `timeout_s`."""
    with trio.move_on_after(timeout_s):
        seed = None
        backoff_s = 0.1
        while rt.sm.nodelist_bytes is None:
            try:
                if seed is None:
                    seed = await plane.identify(seed_url, 5.0)
                    plane.add_peer(seed, seed_url)
                await plane.call(seed, JoinRequest(me), 600.0)
            except RemoteError as e:
                if e.code == BAD_CHANGE and "already" not in e.message:
                    raise JoinError(f"node {me.node_id} cannot join: {e.message}") from None
                log.info("node %d: join: %s; asking again", me.node_id, e)
            except (PeerUnavailable, RpcTimeout, ConnectionLost) as e:
                log.info("node %d: join through %s: %r; asking again", me.node_id, seed_url, e)
            # The change installs our group's NodeList (or our own resolve loop learns it).
            with trio.move_on_after(backoff_s):
                while rt.sm.nodelist_bytes is None:
                    await rt.ring_event.wait()
            backoff_s = min(backoff_s * 2, 5.0)
        return NodeList.decode(rt.sm.nodelist_bytes)
    raise JoinError(f"node {me.node_id} did not join through {seed_url} in {timeout_s} s")


class JoinError(Exception):
    """A node could not join the cluster (the node's start-up turns it into StartupError)."""
