"""Tuning of one Raft member. Every limit the core enforces is set here (STYLE.md habit 7).

Times are counted in ticks: the driver calls `RawNode.tick()` at a fixed period, so the core
never reads a clock. Sizes are payload bytes (the sum of `len(entry.data)`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Config:
    id: int
    # A follower that hears nothing for a random time in [T, 2T) ticks starts an election (§5.2).
    election_timeout_ticks: int = 10
    # The leader sends heartbeats every this many ticks; must be well below the election timeout.
    heartbeat_ticks: int = 1
    # Replication pipelining: at most this many AppendEntries in flight per follower (§10.2.1).
    max_inflight_msgs: int = 64
    # An AppendEntries carries at most this much payload (at least one entry).
    max_size_per_msg_bytes: int = 1 << 20
    # A Ready hands out at most this much committed payload to apply (at least one entry).
    max_committed_size_per_ready_bytes: int = 4 << 20
    # InstallSnapshot carries the snapshot in pieces of at most this many bytes.
    snapshot_chunk_bytes: int = 256 << 10
    # Heartbeat responses without progress before a snapshot chunk is asked for again.
    snapshot_retry_heartbeats: int = 5
    # Dissertation §9.6: a pre-election keeps a partitioned node from inflating terms.
    pre_vote: bool = True
    # Dissertation §6.2: a leader that cannot reach a quorum for an election timeout steps down,
    # and followers that hear from a leader ignore vote requests (the leader "lease", §4.2.3).
    check_quorum: bool = True
    # A leader refuses proposals while this much payload of its term is not yet applied, so a
    # leader that cannot commit does not grow its log without bound (etcd MaxUncommittedSize).
    max_uncommitted_bytes: int = 256 << 20
    # Outstanding ReadIndex requests (waiting for the first commit or a heartbeat round, §6.4).
    max_pending_read_index: int = 1024
    # Index of the last entry the state machine has applied (restart); 0 means the snapshot.
    applied: int = 0

    def __post_init__(self) -> None:
        assert self.id >= 1, "node ids are >= 1 (0 means 'nobody')"
        assert self.heartbeat_ticks >= 1
        assert self.election_timeout_ticks > self.heartbeat_ticks
        assert self.max_inflight_msgs >= 1
        assert self.snapshot_chunk_bytes >= 1
