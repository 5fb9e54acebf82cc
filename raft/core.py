"""The Raft state machine of one member: roles, terms, and message dispatch (paper §5, Fig. 2).

Sans-I/O (STYLE.md habit 1): no sockets, no clock, no global randomness. Time arrives as
`tick()`, messages as `step()`, randomness from the injected `random.Random`. Everything the
member wants done is recorded here (`msgs`, `read_states`, `snapshot_requests`, the log's unstable
part) and handed out by `raft.node.RawNode` as a Ready.

Rules enforced here, for every role:
- A message from a higher term makes us a follower of that term first (§5.1), except that
  PreVote never changes terms (§9.6), and that vote requests are ignored while we hear from a
  leader (CheckQuorum's lease, dissertation §4.2.3) unless they come from a leadership transfer.
- A message from a lower term is dropped; a stale leader's AppendEntries/heartbeat is answered
  so it learns the newer term and steps down (needed with PreVote/CheckQuorum, §9.6).
- Then the handler for (role, message type) runs: see the tables in `raft.election`,
  `raft.follower` and `raft.leader`. Unknown pairs are dropped.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from raft import conf_change, election, follower, leader, replication
from raft.conf_change import ConfChange
from raft.config import Config
from raft.log import RaftLog
from raft.log_storage import LogStorage
from raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    Message,
    PreVote,
    PreVoteResponse,
    RequestVote,
    TimeoutNow,
    from_leader,
)
from raft.progress import Progress
from raft.read_only import ReadOnly
from raft.ready import ReadState, Role, Snapshot, SnapshotRequest
from raft.types import ConfState, EntryType, HardState, SnapshotMeta

Handler = Callable[["Raft", Message], None]

_HANDLERS: dict[Role, dict[type, Handler]] = {
    Role.FOLLOWER: {**election.VOTE_REQUEST_HANDLERS, **follower.FOLLOWER_HANDLERS},
    Role.PRE_CANDIDATE: {**election.VOTE_REQUEST_HANDLERS, **follower.CANDIDATE_HANDLERS},
    Role.CANDIDATE: {**election.VOTE_REQUEST_HANDLERS, **follower.CANDIDATE_HANDLERS},
    Role.LEADER: {**election.VOTE_REQUEST_HANDLERS, **leader.LEADER_HANDLERS},
}

_TICKS: dict[Role, Callable[[Raft], None]] = {
    Role.FOLLOWER: election.tick_election,
    Role.PRE_CANDIDATE: election.tick_election,
    Role.CANDIDATE: election.tick_election,
    Role.LEADER: leader.tick_leader,
}


class Raft:
    def __init__(self, config: Config, storage: LogStorage, rng: random.Random) -> None:
        hard_state, snapshot = storage.initial_state()
        self.id = config.id
        self.config = config
        self.rng = rng
        applied = max(config.applied, snapshot.index if snapshot else 0)
        self.log = RaftLog(storage, hard_state.commit, applied)
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.conf = snapshot.conf if snapshot else ConfState()
        self.role = Role.FOLLOWER
        self.lead = 0
        self.trk: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.snapshot_requests: list[SnapshotRequest] = []
        self.read_only = ReadOnly()
        self.pending_reads: list[tuple[int, bytes]] = []  # (requester, context)
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_timeout_ticks
        self.lead_transferee = 0
        self.pending_conf_index = 0
        self.proposals_unsent = False
        self.uncommitted_bytes = 0
        self.conf_scan_upto = 0  # committed entries scanned for CONF_CHANGE (election.py)
        self.last_conf_change_index = 0
        self.incoming_snapshot: tuple[SnapshotMeta, bytearray] | None = None
        self.received_snapshot: Snapshot | None = None
        self._replay_conf_changes()
        self.become_follower(self.term, 0)

    def _replay_conf_changes(self) -> None:
        """Rebuild the configuration as of `applied` from the entries after the snapshot."""
        for e in self.log.scan(self.log.first_index(), self.log.applied + 1):
            if e.type is EntryType.CONF_CHANGE:
                self.apply_conf_change(ConfChange.decode(e.data))

    # -- state ---------------------------------------------------------------------------------

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def promotable(self) -> bool:
        """May start elections: a voter with no received snapshot waiting to be installed."""
        return self.id in self.conf.voters and self.log.unstable.snapshot is None

    def send(self, m: Message) -> None:
        assert m.frm == self.id and m.to != self.id, m
        self.msgs.append(m)

    # -- role changes (§5.2) -------------------------------------------------------------------

    def reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = 0
            self.incoming_snapshot = None
        self.lead = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        timeout = self.config.election_timeout_ticks
        self.randomized_election_timeout = timeout + self.rng.randrange(timeout)
        self.lead_transferee = 0
        self.votes = {}
        self.trk = {}
        self.read_only.clear()
        self.pending_reads = []
        self.pending_conf_index = 0
        self.proposals_unsent = False
        self.uncommitted_bytes = 0

    def become_follower(self, term: int, lead: int) -> None:
        self.reset(term)
        self.role = Role.FOLLOWER
        self.lead = lead

    def become_pre_candidate(self) -> None:
        assert self.role is not Role.LEADER
        # Term and vote stay: a pre-election changes no persistent state (§9.6).
        self.role = Role.PRE_CANDIDATE
        self.votes = {}
        self.lead = 0

    def become_candidate(self) -> None:
        assert self.role is not Role.LEADER
        self.reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def become_leader(self) -> None:
        assert self.role is Role.CANDIDATE
        self.reset(self.term)
        self.role = Role.LEADER
        self.lead = self.id
        self.sync_progress()
        self.trk[self.id].match = self.log.persisted_last_index()
        self.trk[self.id].become_replicate()
        # §5.4.2 / §8: entries of earlier terms commit only under one of our own term.
        noop_index = leader.append_as_leader(self, EntryType.NOOP, b"")
        # Dissertation §4.1 (bug fix): no membership change until the NOOP is applied.
        self.pending_conf_index = noop_index

    def sync_progress(self) -> None:
        """Leader: one Progress per member of the configuration."""
        members = self.conf.voters | self.conf.learners | {self.id}
        for gone in set(self.trk) - members:
            del self.trk[gone]
        for node_id in sorted(members):
            if node_id not in self.trk:
                self.trk[node_id] = Progress(
                    match=0,
                    next=self.log.last_index() + 1,
                    max_inflight=self.config.max_inflight_msgs,
                )
            self.trk[node_id].is_learner = node_id in self.conf.learners

    # -- input ---------------------------------------------------------------------------------

    def tick(self) -> None:
        _TICKS[self.role](self)

    def step(self, m: Message) -> None:
        if m.term > self.term:
            if not self._on_higher_term(m):
                return
        elif m.term < self.term:
            self._on_lower_term(m)
            return
        handler = _HANDLERS[self.role].get(type(m))
        if handler is not None:
            handler(self, m)

    def _on_higher_term(self, m: Message) -> bool:
        """Term rule of §5.1; False if the message is to be ignored."""
        if isinstance(m, PreVote | RequestVote):
            transfer = isinstance(m, RequestVote) and m.transfer
            in_lease = (
                self.config.check_quorum
                and self.lead != 0
                and self.election_elapsed < self.config.election_timeout_ticks
            )
            if in_lease and not transfer:
                return False
            if isinstance(m, PreVote):
                return True
        elif isinstance(m, PreVoteResponse) and m.granted:
            return True  # granted pre-votes carry the term we would campaign in
        self.become_follower(m.term, m.frm if from_leader(m) else 0)
        return True

    def _on_lower_term(self, m: Message) -> None:
        if isinstance(m, AppendEntries | Heartbeat) and (
            self.config.check_quorum or self.config.pre_vote
        ):
            # A leader cut off from us while we moved on: tell it the term so it steps down.
            self.send(AppendEntriesResponse(self.id, m.frm, self.term, index=0))
        elif isinstance(m, PreVote):
            self.send(PreVoteResponse(self.id, m.frm, self.term, granted=False))

    # -- configuration -------------------------------------------------------------------------

    def apply_conf_change(self, cc: ConfChange) -> None:
        self.conf = conf_change.apply(self.conf, cc)
        if self.role is not Role.LEADER:
            return
        if self.id not in self.conf.voters:
            # Dissertation §4.2.2: a removed leader steps down once the change is committed,
            # handing over to an up-to-date voter at once rather than after an election timeout.
            successor = leader.best_successor(self)
            self.become_follower(self.term, 0)
            if successor:
                self.send(TimeoutNow(self.id, successor, self.term))
            return
        if self.lead_transferee and self.lead_transferee not in self.conf.voters:
            self.lead_transferee = 0
        known = set(self.trk)
        self.sync_progress()
        for added in sorted(set(self.trk) - known):
            replication.send_append(self, added)  # start catching the new member up now
        if replication.maybe_commit(self):
            leader.on_commit_advanced(self)
