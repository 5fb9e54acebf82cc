"""Follower and candidate handlers: accepting the leader's log, pieces of its snapshot, its
commit index, and its answers to forwarded reads (paper §5.3, §7; dissertation §6.4).

Rules:
- Any message from the leader of our term resets the election timer and names the leader.
- AppendEntries is accepted only if our log holds prev_log_index with prev_log_term; a
  conflicting uncommitted suffix is truncated (§5.3). A rejection carries a hint for fast
  backtracking (`RaftLog.find_conflict_by_term`).
- Snapshot pieces must arrive in order; any gap is answered with the offset we expect. A complete
  snapshot that would not lose committed entries replaces the log and is handed to the driver.
- A candidate that hears from a leader of its term becomes its follower (§5.2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raft import election
from raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    ReadIndexResponse,
    TimeoutNow,
)
from raft.ready import ReadState, Snapshot
from raft.types import SnapshotMeta

if TYPE_CHECKING:
    from raft.core import Raft


def _heard_from_leader(r: Raft, leader_id: int) -> None:
    r.election_elapsed = 0
    r.lead = leader_id


def handle_append_entries(r: Raft, m: AppendEntries) -> None:
    _heard_from_leader(r, m.frm)
    if m.prev_log_index < r.log.committed:
        # Old news: everything up to our commit index matches the leader already.
        r.send(AppendEntriesResponse(r.id, m.frm, r.term, index=r.log.committed))
        return
    last_new = r.log.maybe_append(m.prev_log_index, m.prev_log_term, m.leader_commit, m.entries)
    if last_new is not None:
        r.send(AppendEntriesResponse(r.id, m.frm, r.term, index=last_new))
        return
    hint_index, hint_term = r.log.find_conflict_by_term(
        min(m.prev_log_index, r.log.last_index()), m.prev_log_term
    )
    r.send(
        AppendEntriesResponse(
            r.id, m.frm, r.term, m.prev_log_index, True, hint_index, hint_term
        )
    )


def handle_heartbeat(r: Raft, m: Heartbeat) -> None:
    _heard_from_leader(r, m.frm)
    # The leader caps leader_commit at our match index, which we acknowledged after persisting.
    r.log.commit_to(m.leader_commit)
    r.send(HeartbeatResponse(r.id, m.frm, r.term, m.context))


def handle_install_snapshot(r: Raft, m: InstallSnapshot) -> None:
    _heard_from_leader(r, m.frm)
    if m.offset == 0:
        r.incoming_snapshot = (m.meta, bytearray())
    expected = _expected_offset(r, m.meta)
    if m.offset != expected:
        r.send(InstallSnapshotResponse(r.id, m.frm, r.term, m.meta.index, expected))
        return
    assert r.incoming_snapshot is not None
    buffer = r.incoming_snapshot[1]
    buffer += m.data
    if not m.done:
        r.send(InstallSnapshotResponse(r.id, m.frm, r.term, m.meta.index, len(buffer)))
        return
    r.incoming_snapshot = None
    _restore(r, m.frm, m.meta, bytes(buffer))


def _expected_offset(r: Raft, meta: SnapshotMeta) -> int:
    if r.incoming_snapshot is None or r.incoming_snapshot[0] != meta:
        return 0
    return len(r.incoming_snapshot[1])


def _restore(r: Raft, leader_id: int, meta: SnapshotMeta, data: bytes) -> None:
    """Paper §7, receiver rules 6-8."""
    if meta.index <= r.log.committed:
        pass  # we already have everything it holds
    elif r.log.match_term(meta.index, meta.term):
        r.log.commit_to(meta.index)  # our log already contains it: keep the suffix
    else:
        r.log.restore(meta)
        r.conf = meta.conf
        r.received_snapshot = Snapshot(meta, data)
    r.send(AppendEntriesResponse(r.id, leader_id, r.term, index=r.log.committed))


def handle_timeout_now(r: Raft, m: TimeoutNow) -> None:
    election.campaign(r, election.CampaignKind.TRANSFER)


def handle_read_index_response(r: Raft, m: ReadIndexResponse) -> None:
    r.read_states.append(ReadState(m.index, m.context))


def _as_follower(handler):  # a candidate that hears from the leader of its term (§5.2)
    def step(r: Raft, m) -> None:
        r.become_follower(r.term, m.frm)
        handler(r, m)

    return step


FOLLOWER_HANDLERS = {
    AppendEntries: handle_append_entries,
    Heartbeat: handle_heartbeat,
    InstallSnapshot: handle_install_snapshot,
    TimeoutNow: handle_timeout_now,
    ReadIndexResponse: handle_read_index_response,
}

CANDIDATE_HANDLERS = {
    **election.VOTE_RESPONSE_HANDLERS,
    AppendEntries: _as_follower(handle_append_entries),
    Heartbeat: _as_follower(handle_heartbeat),
    InstallSnapshot: _as_follower(handle_install_snapshot),
}
