"""GroupRouter: sends a gateway's requests to the leader of the group that owns the state.

Rules:
- The router keeps a leader guess per group (first: the group's first member), follows
  NOT_LEADER hints, and moves to the next member when one does not answer. When the leader is
  this node, the request goes to the local GroupRuntime in process, through the same handler.
- Each try has `try_timeout_s`; the whole call has `request_timeout_s`, after which the group
  is Unavailable (the gateway answers NFS3ERR_JUKEBOX and the client retries later).
- UNAVAILABLE, MOVING (a ring change holds the state) and a peer's NO_HANDLER (its plane runs
  before its group member does, at start) are retried after a pause.
- STALE_RING / WRONG_GROUP: the router reloads the NodeList (from its own group's applied
  state) and raises RingChanged so the gateway re-plans against the new ring.
- The router also follows its own group's applied NodeList as it changes (`_follow_ring`):
  a node whose gateway is idle still coordinates transactions for its group, and its txn
  messages must reach groups that joined since (a coordinator that knew only the old ring
  posted a new group's prepare nowhere, and the transaction hung; tests/integration/
  test_elastic.py, a directory made in a group that rejoined).
- A chunk's bytes (ReadChunk, not a read-ahead) to another node go over the bulk channel
  (server/rpc/bulk.py) when the router has one, with the same answers and refusals as over
  the plane; the plane carries them whenever the channel cannot (BulkUnavailable).
- `post()` sends a txn message to a group's leader in the background (best effort: the txn
  cores retry on ticks); a refusal still teaches the router where the leader is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any

import trio

from server.cluster import protocol as p
from server.cluster.group import GroupRuntime
from server.cluster.group_txn import register_txn_messages
from server.cluster.membership import peer_url
from server.cluster.nodelist import NodeList
from server.cluster.ring import Ring
from server.rpc.bulk import BulkClient, BulkUnavailable
from server.rpc.connection import NO_HANDLER
from server.rpc.frames import ConnectionLost, PeerUnavailable, RemoteError, RpcTimeout
from server.rpc.plane import RpcPlane
from txn.messages import TxnMessage

log = logging.getLogger("objcache.router")

class GroupRouter:
    def __init__(self, plane: RpcPlane, node_id: int, nodelist: NodeList,
                 local: GroupRuntime | None, *, vnodes: int, request_timeout_s: float,
                 try_timeout_s: float = 2.0, bulk: BulkClient | None = None) -> None:
        register_txn_messages()
        self.plane = plane
        self.bulk = bulk
        self.node_id = node_id
        self.local = local
        self.vnodes = vnodes
        self.request_timeout_s = request_timeout_s
        self.try_timeout_s = try_timeout_s
        self._leader: dict[int, int] = {}
        self._set_nodelist(nodelist)
        self._nursery: trio.Nursery | None = None
        self.stats = {"calls": 0, "remote_calls": 0, "retries": 0, "unavailable": 0}

    def _set_nodelist(self, nodelist: NodeList) -> None:
        for n in nodelist.nodes:  # nodes that joined since (a no-op for known peers)
            if n.node_id != self.node_id:
                self.plane.add_peer(n.node_id, peer_url(self.plane, n.rpc))
        old = getattr(self, "nodelist", None)
        if old is not None:  # nodes that left: stop dialing them
            for n in old.nodes:
                if not nodelist.has(n.node_id) and n.node_id != self.node_id:
                    self.plane.remove_peer(n.node_id)
                    if self.bulk is not None:
                        self.bulk.forget(n.node_id)
        self.nodelist = nodelist
        self._ring = nodelist.ring(self.vnodes)
        self._members = nodelist.groups()
        self._home = next((g for g, members in self._members.items()
                           if self.node_id in members), None)

    @property
    def ring(self) -> Ring:
        return self._ring

    def home_group(self) -> int | None:
        """The group this node is a member of in the current node list (None: in none)."""
        return self._home

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.local is not None:
                nursery.start_soon(self._follow_ring, self.local)
            task_status.started()
            await trio.sleep_forever()

    async def _follow_ring(self, local: GroupRuntime) -> None:
        while True:
            await self._refresh()  # reads the newest applied NodeList: no change is missed
            await local.ring_event.wait()

    # -- requests ---------------------------------------------------------------------------

    async def call(self, group: int, request: p.GroupRequest) -> Any:
        self.stats["calls"] += 1
        request = dataclasses.replace(request, ring_version=self._ring.version)
        members = self._members.get(group)
        if not members:
            raise p.RingChanged(f"group {group} is not in ring version {self._ring.version}")
        local = self.local
        if local is not None and local.group == group and local.is_leader():
            # The common case of a node serving its own group: the local handler bounds its
            # own waits, so no deadline scope is needed; any refusal takes the slow path.
            try:
                reply = local.read_now(request)  # a READ's bytes from the page cache, if it can
                return reply if reply is not None else await local.handle(request)
            except RemoteError as e:
                if e.code not in (p.NOT_LEADER, p.UNAVAILABLE, p.MOVING, NO_HANDLER):
                    await self._refused(group, members, self.node_id, e)  # raises
        # The deadline goes down as each try's timeout rather than as a cancel scope around
        # the loop (one per remote call: a scope costs as much as encoding the request;
        # server/rpc/connection.py rules); a local handler bounds its own waits, as above.
        deadline = trio.current_time() + self.request_timeout_s
        while (left := deadline - trio.current_time()) > 0:
            target = self._leader.get(group, members[0])
            try:
                return await self._call_once(target, request, min(self.try_timeout_s, left))
            except RemoteError as e:
                if await self._refused(group, members, target, e):
                    # An election is on: give it a moment (never past the deadline).
                    await trio.sleep_until(min(trio.current_time() + 0.05, deadline))
            except (RpcTimeout, PeerUnavailable, ConnectionLost) as e:
                log.debug("group %d: node %d did not answer: %s", group, target, e)
                self._leader[group] = next_member(members, target)
                await trio.sleep_until(min(trio.current_time() + 0.02, deadline))
            self.stats["retries"] += 1
        self.stats["unavailable"] += 1
        raise p.Unavailable(f"group {group} did not answer in {self.request_timeout_s} s")

    async def _refused(self, group: int, members: tuple[int, ...], target: int,
                       e: RemoteError) -> bool:
        """Learn from a refusal: follow a NOT_LEADER hint (else try the next member); on a
        ring change refresh and raise RingChanged; raise anything that is not retryable.
        True when the group has no known leader right now (worth a pause before retrying)."""
        if e.code == p.NOT_LEADER:
            hint = int(e.message) if e.message.isdigit() else 0
            self._leader[group] = hint if hint in members else next_member(members, target)
            return hint not in members
        if e.code == p.STALE_RING and e.message.isdigit() and (
                int(e.message) < self._ring.version):
            return True  # the group has not installed our (newer) ring yet: it will
        if e.code in (p.STALE_RING, p.WRONG_GROUP):
            await self._refresh()
            raise p.RingChanged(e.message) from e
        if e.code not in (p.UNAVAILABLE, p.MOVING, NO_HANDLER):  # NO_HANDLER: it is starting
            raise e
        return True

    async def _call_once(self, target: int, request: Any, timeout_s: float) -> Any:
        if target == self.node_id and self.local is not None:
            return await self.local.handle(request)
        self.stats["remote_calls"] += 1
        if self.bulk is not None and type(request) is p.ReadChunk and not request.prefetch:
            try:  # chunk bytes go over the bulk channel when it can carry them
                data = await self.bulk.call(target, request, timeout_s)
                return p.ReadChunkReply(data)  # type: ignore[arg-type]  # a memoryview
            except BulkUnavailable:
                pass
        return await self.plane.call(target, request, timeout_s)

    async def _refresh(self) -> None:
        if self.local is None:
            return
        raw = self.local.nodelist_bytes()
        if raw is not None:
            nodelist = NodeList.decode(raw)
            if nodelist.version > self.nodelist.version:  # versions only grow
                log.info("ring version %d -> %d", self.nodelist.version, nodelist.version)
                self._set_nodelist(nodelist)

    # -- txn messages -----------------------------------------------------------------------

    def post(self, group: int, msg: TxnMessage) -> None:
        if self._nursery is None:
            return
        try:
            self._nursery.start_soon(self._post, group, msg)
        except RuntimeError:  # the router is shutting down: best effort means dropping it
            log.debug("router stopped; txn message for group %d dropped", group)

    async def _post(self, group: int, msg: TxnMessage) -> None:
        members = self._members.get(group)
        if not members:  # a group newer than our view? (_follow_ring may not have run yet)
            await self._refresh()
            members = self._members.get(group)
        if not members:
            log.warning("txn message for group %d, not in the ring", group)
            return
        target = self._leader.get(group, members[0])
        try:
            if target == self.node_id and self.local is not None:
                await self.local.take_txn_message(self.node_id, msg)
            else:
                envelope = p.TxnEnvelope(self._ring.version, msg)
                await self.plane.call(target, envelope, self.try_timeout_s)
        except RemoteError as e:
            # The txn core retries on its ticks (on the new ring after a refresh).
            with contextlib.suppress(RemoteError, p.RingChanged):
                await self._refused(group, members, target, e)
        except (RpcTimeout, PeerUnavailable, ConnectionLost):
            self._leader[group] = next_member(members, target)


def next_member(members: tuple[int, ...], node_id: int) -> int:
    """The member after `node_id` (the first if it is none of them), round the group."""
    i = members.index(node_id) if node_id in members else -1
    return members[(i + 1) % len(members)]
