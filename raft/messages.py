"""Every message Raft members exchange, as frozen dataclasses (STYLE.md habit 3).

Names follow the paper (Figure 2) and the dissertation. Every message carries `frm`, `to` and
`term`: the sender's current term, except a granted PreVote response, which carries the term the
pre-candidate asked about (dissertation §9.6). Wire encoding is not done here; `server/rpc`
owns the single CBOR codec.

Which messages may leave before the sender's state is durable is decided by `needs_persist()`:
a vote, a vote request (it carries the candidate's own vote) and any acknowledgement of log
entries or a snapshot must wait until the Ready that produced them is saved (paper §5, "Rules
for servers": respond to RPCs only after updating stable storage).
"""

from __future__ import annotations

from dataclasses import dataclass

from raft.types import Entry, SnapshotMeta


@dataclass(frozen=True, slots=True)
class PreVote:
    """Would you vote for me at `term` (my term + 1)? Changes no state (dissertation §9.6)."""

    frm: int
    to: int
    term: int
    last_log_index: int
    last_log_term: int


@dataclass(frozen=True, slots=True)
class PreVoteResponse:
    frm: int
    to: int
    term: int
    granted: bool


@dataclass(frozen=True, slots=True)
class RequestVote:
    """RequestVote RPC (paper §5.2). `transfer` is set after TimeoutNow so that voters ignore
    their leader lease (dissertation §3.10)."""

    frm: int
    to: int
    term: int
    last_log_index: int
    last_log_term: int
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class RequestVoteResponse:
    frm: int
    to: int
    term: int
    granted: bool


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """AppendEntries RPC (paper §5.3); `entries` may be empty to carry only the commit index."""

    frm: int
    to: int
    term: int
    prev_log_index: int
    prev_log_term: int
    entries: tuple[Entry, ...]
    leader_commit: int


@dataclass(frozen=True, slots=True)
class AppendEntriesResponse:
    """On success `index` is the follower's last index matching the leader.

    On rejection `index` is the rejected prev_log_index and (hint_index, hint_term) is the
    follower's last entry at or before it whose term is <= the leader's prev_log_term, so the
    leader can skip a whole conflicting term per round trip (paper §5.3, end; dissertation
    §5.3.1 "fast backtracking").
    """

    frm: int
    to: int
    term: int
    index: int
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Empty AppendEntries without log matching (paper §5.2). `leader_commit` is capped at the
    follower's match index; `context` names the ReadIndex round it confirms (§6.4)."""

    frm: int
    to: int
    term: int
    leader_commit: int
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    frm: int
    to: int
    term: int
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """One piece of a snapshot (paper §7, Figure 13): bytes [offset, offset+len(data))."""

    frm: int
    to: int
    term: int
    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool


@dataclass(frozen=True, slots=True)
class InstallSnapshotResponse:
    """Acknowledges pieces of the snapshot at `index`: the follower expects `next_offset` next.
    The last piece is acknowledged with an AppendEntriesResponse instead."""

    frm: int
    to: int
    term: int
    index: int
    next_offset: int


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Start an election now: leadership transfer (dissertation §3.10)."""

    frm: int
    to: int
    term: int


@dataclass(frozen=True, slots=True)
class ReadIndexRequest:
    """A follower asks the leader for a read index on behalf of a client (dissertation §6.4)."""

    frm: int
    to: int
    term: int
    context: bytes


@dataclass(frozen=True, slots=True)
class ReadIndexResponse:
    frm: int
    to: int
    term: int
    context: bytes
    index: int


Message = (
    PreVote
    | PreVoteResponse
    | RequestVote
    | RequestVoteResponse
    | AppendEntries
    | AppendEntriesResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshot
    | InstallSnapshotResponse
    | TimeoutNow
    | ReadIndexRequest
    | ReadIndexResponse
)

ALL_MESSAGE_TYPES: tuple[type, ...] = Message.__args__  # type: ignore[attr-defined]

_AFTER_PERSIST = (
    RequestVote,
    RequestVoteResponse,
    AppendEntriesResponse,
    InstallSnapshotResponse,
)


def needs_persist(m: Message) -> bool:
    """Whether `m` may be sent only after the Ready that produced it is durable."""
    return isinstance(m, _AFTER_PERSIST)


def from_leader(m: Message) -> bool:
    """Messages only a leader of `m.term` sends."""
    return isinstance(m, AppendEntries | Heartbeat | InstallSnapshot | TimeoutNow)
