"""RawNode: the driver-facing API of the sans-I/O Raft core (modelled on etcd-io/raft).

    node = RawNode(Config(id=1, ...), storage, random.Random(seed))
    # inputs (all synchronous, none blocks, none does I/O):
    node.tick()                         # every tick period (heartbeat/election timers)
    node.step(message)                  # a message from a peer (raft.messages.*)
    node.campaign()                     # start an election now (tests, bootstrap)
    index = node.propose(data)          # leader only; raises NotLeader(leader_hint) elsewhere
    index = node.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    node.transfer_leader(to)            # leader only (dissertation §3.10)
    node.read_index(context)            # linearizable read; the answer comes as a ReadState
    node.send_snapshot_piece(to, meta, offset, data, done)   # answer a SnapshotRequest
    node.report_unreachable(to); node.report_snapshot_failure(to)
    # output:
    if node.has_ready():
        rd = node.ready()               # see raft.ready for the order of handling
        ... send rd.messages; save; send rd.messages_after_persist; apply ...
        node.advance(rd)

Bootstrap: a founding member's storage starts with `bootstrap_log(voters)` saved (term 1, one
committed CONF_CHANGE entry per voter); a joining member starts with empty storage and learns the
configuration from the leader's log or snapshot. The configuration changes when CONF_CHANGE
entries are applied (`advance`), so handle the first Ready before expecting a campaign: a member
never campaigns while committed configuration changes are unapplied.

Snapshots: the application makes them (its state at `applied`; `snapshot_meta()` gives the meta
to store with it) and compacts storage itself. When a follower needs compacted entries, the Ready
carries SnapshotRequest(to, index, min_index, offset, ...): the driver reads up to
`config.snapshot_chunk_bytes` of its snapshot from `offset` and calls `send_snapshot_piece`. A
follower that received a whole snapshot hands it out as `Ready.snapshot` (meta + bytes).

Snapshot pieces: if `index` is 0 (or names a snapshot the application no longer has), send
the latest snapshot from offset 0; its meta must cover at least `min_index`. One piece per
follower is in flight; a lost piece is asked for again after `snapshot_retry_heartbeats`
heartbeat answers. If no snapshot can be supplied, call `report_snapshot_failure(to)`.
`LogStorage.initial_state()` must return, with the snapshot's index and term, the membership
at that index (`snapshot_meta().conf`): a restarted member rebuilds its configuration from it.

Restart: build a new RawNode over the same storage with `Config.applied` set to the state
machine's applied index; committed entries after it are handed out again.

Concurrency: the core is not thread-safe, but `step`, `tick`, `propose`, `read_index`... may be
called while a Ready is outstanding (between `ready()` and `advance()`), e.g. while the driver
awaits `storage.save()`; their effects appear in the next Ready.

ReadIndex contexts must be unique among this member's outstanding reads (the leader tells
members' contexts apart). A read may never be answered (leader change, lost message): time out.

Wire: `raft.messages.ALL_MESSAGE_TYPES` lists the dataclasses the RPC codec must carry; their
fields are ints, bools, bytes, Entry tuples and SnapshotMeta (raft.types).
"""

from __future__ import annotations

import random

from raft import election, leader
from raft.conf_change import ConfChange, ConfChangeType
from raft.config import Config
from raft.core import Raft
from raft.errors import NotLeader
from raft.log_storage import LogStorage
from raft.messages import Message, ReadIndexRequest, needs_persist
from raft.progress import ProgressState
from raft.ready import Ready, Role, SoftState, Status
from raft.types import ConfState, Entry, EntryType, HardState, SnapshotMeta


def bootstrap_log(voters: list[int]) -> tuple[HardState, list[Entry]]:
    """What founding members persist before their first start: the initial configuration."""
    entries = [
        Entry(1, i, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.PROMOTE, v).encode())
        for i, v in enumerate(sorted(voters), start=1)
    ]
    return HardState(term=1, vote=0, commit=len(entries)), entries


class RawNode:
    def __init__(self, config: Config, storage: LogStorage, rng: random.Random) -> None:
        self.raft = Raft(config, storage, rng)
        self._prev_hard_state = self.raft.hard_state()
        self._prev_soft_state = self._soft_state()
        self._outstanding = False

    @property
    def id(self) -> int:
        return self.raft.id

    @property
    def term(self) -> int:
        """Current term: a proposal made now gets this term; if the committed entry at its index
        has another term, the proposal was lost to a leader change."""
        return self.raft.term

    @property
    def lead(self) -> int:
        """The leader this member knows of (0: none)."""
        return self.raft.lead

    # -- inputs --------------------------------------------------------------------------------

    def tick(self) -> None:
        self.raft.tick()

    def step(self, m: Message) -> None:
        assert m.to == self.raft.id, f"message for {m.to} stepped into {self.raft.id}"
        self.raft.step(m)

    def campaign(self) -> None:
        kind = election.CampaignKind.PRE_ELECTION
        if not self.raft.config.pre_vote:
            kind = election.CampaignKind.ELECTION
        election.campaign(self.raft, kind)

    def _require_leader(self) -> Raft:
        if self.raft.role is not Role.LEADER:
            raise NotLeader(self.raft.lead)
        return self.raft

    def propose(self, data: bytes) -> int:
        """Append `data` to the log; returns its index (applied when committed)."""
        return leader.propose(self._require_leader(), EntryType.NORMAL, data)

    def propose_conf_change(self, cc: ConfChange) -> int:
        r = self._require_leader()
        leader.check_conf_change(r, cc)
        index = leader.propose(r, EntryType.CONF_CHANGE, cc.encode())
        r.pending_conf_index = index
        return index

    def transfer_leader(self, to: int) -> None:
        leader.transfer_leader(self._require_leader(), to)

    def read_index(self, context: bytes) -> None:
        """Ask for a read index; answered by a ReadState with this context in a later Ready
        (or never, if leadership changes: the caller times out and retries)."""
        r = self.raft
        if r.role is Role.LEADER:
            leader.read_index(r, r.id, context)
        elif r.lead:
            r.send(ReadIndexRequest(r.id, r.lead, r.term, context))
        else:
            raise NotLeader(0)

    def send_snapshot_piece(
        self, to: int, meta: SnapshotMeta, offset: int, data: bytes, done: bool
    ) -> bool:
        if self.raft.role is not Role.LEADER:
            return False
        return leader.send_snapshot_piece(self.raft, to, meta, offset, data, done)

    def report_unreachable(self, to: int) -> None:
        pr = self.raft.trk.get(to)
        if pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    def report_snapshot_failure(self, to: int) -> None:
        """The driver could not supply a snapshot for `to`: try again from scratch later."""
        pr = self.raft.trk.get(to)
        if pr is not None and pr.state is ProgressState.SNAPSHOT:
            pr.pending_snapshot = 0
            pr.become_probe()

    # -- output --------------------------------------------------------------------------------

    def _soft_state(self) -> SoftState:
        return SoftState(self.raft.lead, self.raft.role)

    def has_ready(self) -> bool:
        r = self.raft
        return bool(
            r.proposals_unsent
            or r.msgs
            or r.read_states
            or r.snapshot_requests
            or r.log.unstable.entries
            or r.received_snapshot
            or r.log.has_next_committed_entries()
            or r.hard_state() != self._prev_hard_state
            or self._soft_state() != self._prev_soft_state
        )

    def ready(self) -> Ready:
        assert not self._outstanding, "advance() the previous Ready first"
        r = self.raft
        if r.role is Role.LEADER:
            leader.flush_proposals(r)
        hard_state, soft_state = r.hard_state(), self._soft_state()
        committed: list[Entry] = []
        if r.log.has_next_committed_entries():
            committed = r.log.next_committed_entries(r.config.max_committed_size_per_ready_bytes)
        msgs, r.msgs = r.msgs, []
        rd = Ready(
            soft_state=soft_state if soft_state != self._prev_soft_state else None,
            hard_state=hard_state if hard_state != self._prev_hard_state else None,
            entries=tuple(r.log.unstable.entries),
            snapshot=r.received_snapshot,
            committed_entries=tuple(committed),
            messages=tuple(m for m in msgs if not needs_persist(m)),
            messages_after_persist=tuple(m for m in msgs if needs_persist(m)),
            read_states=tuple(r.read_states),
            snapshot_requests=tuple(r.snapshot_requests),
        )
        r.read_states, r.snapshot_requests = [], []
        self._outstanding = True
        return rd

    def advance(self, rd: Ready) -> None:
        """Everything in `rd` is durable and its committed entries are applied."""
        assert self._outstanding, "advance() without ready()"
        self._outstanding = False
        r = self.raft
        if rd.hard_state is not None:
            self._prev_hard_state = rd.hard_state
        if rd.soft_state is not None:
            self._prev_soft_state = rd.soft_state
        if rd.snapshot is not None:
            r.log.unstable.stable_snapshot_to(rd.snapshot.meta.index)
            r.log.applied_to(max(r.log.applied, rd.snapshot.meta.index))
            if r.received_snapshot == rd.snapshot:
                r.received_snapshot = None
        if rd.entries:
            last = rd.entries[-1]
            r.log.unstable.stable_to(last.index, last.term)
            if r.role is Role.LEADER:
                leader.on_persisted(r, last.index, last.term)
        for e in rd.committed_entries:
            if e.term == r.term:
                r.uncommitted_bytes = max(0, r.uncommitted_bytes - len(e.data))
            r.log.applied_to(e.index)
            if e.type is EntryType.CONF_CHANGE:
                r.apply_conf_change(ConfChange.decode(e.data))

    # -- inspection ----------------------------------------------------------------------------

    @property
    def conf_state(self) -> ConfState:
        """Membership as of the applied index."""
        return self.raft.conf

    def snapshot_meta(self) -> SnapshotMeta:
        """Meta for a snapshot of the state machine at the applied index."""
        r = self.raft
        return SnapshotMeta(r.log.applied, r.log.term(r.log.applied), r.conf)

    def status(self) -> Status:
        r = self.raft
        progress = {i: pr.describe() for i, pr in r.trk.items()} if r.trk else {}
        return Status(
            id=r.id,
            role=r.role,
            term=r.term,
            vote=r.vote,
            lead=r.lead,
            commit=r.log.committed,
            applied=r.log.applied,
            last_index=r.log.last_index(),
            conf=r.conf,
            lead_transferee=r.lead_transferee,
            progress=progress,
        )


__all__ = ["ConfChange", "ConfChangeType", "RawNode", "bootstrap_log"]
