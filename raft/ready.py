"""What the core hands the driver, and the driver's obligations (the Ready/advance contract).

A Ready must be handled in this order (paper §5 "persist before responding"; STYLE.md habit 2):
1. send `messages` — they depend on nothing unsaved (the leader may replicate entries it has
   not persisted yet, dissertation §10.2.1, since its own vote in the commit waits for `advance`;
   a lone voter commits as it appends, so its Ready may hold an entry in both `entries` and
   `committed_entries`: step 2 before step 4 is what keeps it unapplied until durable);
2. install `snapshot` into the state machine if set, then `storage.save(hard_state, entries,
   snapshot.meta)` durably;
3. only then send `messages_after_persist` (votes, vote requests, acknowledgements);
4. apply `committed_entries` in order, serve `read_states` once applied >= their index;
   answer `snapshot_requests` with `RawNode.send_snapshot_piece(...)` (any time later);
5. call `RawNode.advance(ready)`. Only one Ready is outstanding at a time.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from raft.messages import Message
from raft.types import ConfState, Entry, HardState, SnapshotMeta


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth telling the driver about when it changes."""

    lead: int
    role: Role


@dataclass(frozen=True, slots=True)
class ReadState:
    """A ReadIndex answer: once applied >= `index`, a read for `context` is linearizable."""

    index: int
    context: bytes


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A snapshot received from the leader, reassembled, for the driver to install."""

    meta: SnapshotMeta
    data: bytes


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """The leader needs a piece of a snapshot for follower `to`.

    `index` 0: start a transfer: supply the latest snapshot (it must cover at least
    `min_index`) from offset 0. Otherwise supply bytes from `offset` of the snapshot at `index`
    (or restart with a newer snapshot from offset 0 if that one is gone)."""

    to: int
    index: int
    min_index: int
    offset: int


@dataclass(frozen=True, slots=True)
class Ready:
    soft_state: SoftState | None = None
    hard_state: HardState | None = None  # None: unchanged since the last Ready
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    committed_entries: tuple[Entry, ...] = ()
    messages: tuple[Message, ...] = ()
    messages_after_persist: tuple[Message, ...] = ()
    read_states: tuple[ReadState, ...] = ()
    snapshot_requests: tuple[SnapshotRequest, ...] = ()

    def must_sync(self) -> bool:
        return bool(self.hard_state or self.entries or self.snapshot)


@dataclass(frozen=True, slots=True)
class Status:
    id: int
    role: Role
    term: int
    vote: int
    lead: int
    commit: int
    applied: int
    last_index: int
    conf: ConfState
    lead_transferee: int = 0
    progress: dict[int, str] = field(default_factory=dict)  # leader only: id -> description
