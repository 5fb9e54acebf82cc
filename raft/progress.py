"""What the leader knows about each follower's log (paper §5.3 nextIndex/matchIndex), and the
flow control around it (dissertation §10.2.1 pipelining).

States:
- PROBE: the leader does not know where the follower's log matches; one AppendEntries at a time,
  paused until a response or a heartbeat response arrives.
- REPLICATE: optimistic pipelining; `next` advances as soon as entries are sent, bounded by a
  window of `max_inflight_msgs` unacknowledged messages.
- SNAPSHOT: the entries the follower needs were compacted; the leader streams a snapshot in
  pieces (one piece in flight) and sends no entries until the follower acknowledges it.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """Last indexes of unacknowledged AppendEntries, oldest first, at most `capacity`."""

    def __init__(self, capacity: int) -> None:
        assert capacity >= 1
        self.capacity = capacity
        self._last_indexes: deque[int] = deque()

    def __len__(self) -> int:
        return len(self._last_indexes)

    def full(self) -> bool:
        return len(self._last_indexes) >= self.capacity

    def add(self, last_index: int) -> None:
        assert not self.full(), "caller must check full() first"
        assert not self._last_indexes or self._last_indexes[-1] < last_index
        self._last_indexes.append(last_index)

    def free_le(self, index: int) -> None:
        """Forget messages whose entries are all acknowledged by a match at `index`."""
        while self._last_indexes and self._last_indexes[0] <= index:
            self._last_indexes.popleft()

    def free_first_one(self) -> None:
        if self._last_indexes:
            self._last_indexes.popleft()

    def reset(self) -> None:
        self._last_indexes.clear()


@dataclass(eq=False)
class Progress:
    match: int
    next: int
    max_inflight: int
    is_learner: bool = False
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    # Heard from since the last CheckQuorum round (dissertation §6.2).
    recent_active: bool = False
    # SNAPSHOT state: index the follower must reach, bytes of it acknowledged, piece asked for.
    pending_snapshot: int = 0
    snapshot_offset: int = 0
    snapshot_in_flight: bool = False
    snapshot_stalled_heartbeats: int = 0
    inflights: Inflights = field(init=False)

    def __post_init__(self) -> None:
        self.inflights = Inflights(self.max_inflight)

    def _reset_state(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_offset = 0
        self.snapshot_in_flight = False
        self.snapshot_stalled_heartbeats = 0
        self.inflights.reset()

    def become_probe(self) -> None:
        # After a snapshot the follower holds at least the snapshot's index.
        floor = self.pending_snapshot + 1 if self.state is ProgressState.SNAPSHOT else 0
        self._reset_state(ProgressState.PROBE)
        self.next = max(self.match + 1, floor)

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, min_index: int) -> None:
        """`min_index`: the snapshot sent must cover at least this index."""
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = min_index

    def maybe_update(self, index: int) -> bool:
        """The follower's log matches up to `index`. False if that is old news."""
        if index <= self.match:
            self.next = max(self.next, index + 1)
            return False
        self.match = index
        self.next = max(self.next, index + 1)
        self.probe_sent = False
        return True

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected AppendEntries with prev_log_index `rejected`; it may match at
        `match_hint`. False if the rejection is stale (answers an older message)."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def sent_entries(self, count: int, last_index: int) -> None:
        """An AppendEntries left carrying `count` entries ending at `last_index`."""
        if self.state is ProgressState.REPLICATE:
            if count:
                self.next = last_index + 1
                self.inflights.add(last_index)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True
        else:
            raise AssertionError("no entries are sent in SNAPSHOT state")

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def describe(self) -> str:
        extra = ""
        if self.state is ProgressState.SNAPSHOT:
            extra = f" snap={self.pending_snapshot}@{self.snapshot_offset}"
        elif self.state is ProgressState.REPLICATE:
            extra = f" inflight={len(self.inflights)}"
        learner = " learner" if self.is_learner else ""
        paused = " paused" if self.is_paused() else ""
        return f"{self.state.value} match={self.match} next={self.next}{extra}{learner}{paused}"
