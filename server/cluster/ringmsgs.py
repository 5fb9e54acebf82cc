"""The messages of ring changes (ringchange.py drives them) and the NodeLists they make.

Rules:
- Every step message names its change by `change_id` (ringstate.py): a step of an aborted
  attempt never touches another attempt.
- `joined` and `left` refuse a change that cannot be (BAD_CHANGE, with the reason), and
  `coordinator_of` one that keeps no group.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.cluster.nodelist import NodeInfo, NodeList
from server.rpc.codec import message
from server.rpc.frames import RemoteError

RING_BUSY = "ring-busy"  # another ring change is pending
BAD_CHANGE = "bad-change"  # the asked change is not possible (message says why)


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
