"""Leader handlers and leader-only operations (paper §5.3, §6.4; dissertation §3.10, §4, §6.2).

Rules:
- Proposals are appended to the leader's log and broadcast when the next Ready is built, so
  proposals made between two Readies travel in one AppendEntries (batching). They are refused
  during a leadership transfer and beyond max_uncommitted_bytes of unapplied payload.
- Responses move the follower's Progress: success raises match (and may commit), a rejection
  lowers next using the follower's hint (fast backtracking).
- CheckQuorum (§6.2): every election timeout the leader checks that a majority of voters was
  heard from; if not, it steps down.
- ReadIndex (§6.4): see `raft.read_only`.
- Leadership transfer (§3.10): proposals stop, the transferee is brought up to date, then sent
  TimeoutNow; the transfer is abandoned after an election timeout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raft import conf_change, replication
from raft.conf_change import ConfChange, ConfChangeType
from raft.errors import ProposalDropped, ReadIndexDropped
from raft.messages import (
    AppendEntriesResponse,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    ReadIndexRequest,
    ReadIndexResponse,
    TimeoutNow,
)
from raft.progress import ProgressState
from raft.quorum import has_quorum
from raft.ready import ReadState
from raft.types import EntryType, SnapshotMeta

if TYPE_CHECKING:
    from raft.core import Raft


# -- ticks ---------------------------------------------------------------------------------------


def tick_leader(r: Raft) -> None:
    r.election_elapsed += 1
    if r.election_elapsed >= r.config.election_timeout_ticks:
        r.election_elapsed = 0
        if r.config.check_quorum and not _quorum_active(r):
            r.become_follower(r.term, 0)
            return
        r.lead_transferee = 0  # a transfer that took an election timeout failed (§3.10)
    r.heartbeat_elapsed += 1
    if r.heartbeat_elapsed >= r.config.heartbeat_ticks:
        r.heartbeat_elapsed = 0
        replication.bcast_heartbeat(r, r.read_only.last_pending_context())


def _quorum_active(r: Raft) -> bool:
    active = {node_id for node_id, pr in r.trk.items() if pr.recent_active or node_id == r.id}
    for node_id, pr in r.trk.items():
        pr.recent_active = node_id == r.id
    return has_quorum(r.conf.voters, active)


# -- local operations ----------------------------------------------------------------------------


def propose(r: Raft, type: EntryType, data: bytes) -> int:
    if r.lead_transferee:
        raise ProposalDropped(f"leadership transfer to {r.lead_transferee} in progress")
    if r.id not in r.trk:
        raise ProposalDropped("this leader was removed from the group")
    if r.uncommitted_bytes and r.uncommitted_bytes + len(data) > r.config.max_uncommitted_bytes:
        raise ProposalDropped("too much uncommitted data: wait for commits")
    r.uncommitted_bytes += len(data)
    index = append_as_leader(r, type, data)
    r.proposals_unsent = True
    return index


def append_as_leader(r: Raft, type: EntryType, data: bytes) -> int:
    """Append one entry of ours to the leader's log; its index. The only voter commits it as
    appended (raft/replication.py rules), with what a commit brings (on_commit_advanced:
    reads that waited for a commit of this term)."""
    index = r.log.last_index() + 1
    r.log.append([replication.new_entry(r, index, type, data)])
    if r.conf.voters == {r.id}:
        _count_own_match(r, index)
    return index


def flush_proposals(r: Raft) -> None:
    if r.proposals_unsent:
        r.proposals_unsent = False
        replication.bcast_append(r)


def check_conf_change(r: Raft, cc: ConfChange) -> None:
    """One change at a time (dissertation §4.1); a learner is promoted once caught up (§4.2.1)."""
    if r.pending_conf_index > r.log.applied:
        raise ProposalDropped("a membership change is still pending")
    conf_change.validate(r.conf, cc)
    if cc.type is ConfChangeType.PROMOTE:
        pr = r.trk.get(cc.node_id)
        if pr is None or pr.match < r.log.committed:
            raise ProposalDropped(f"learner {cc.node_id} has not caught up yet")


def transfer_leader(r: Raft, to: int) -> None:
    if to == r.id or to not in r.conf.voters:
        raise ProposalDropped(f"cannot transfer leadership to {to}")
    if r.lead_transferee == to:
        return
    r.lead_transferee = to
    r.election_elapsed = 0  # the transfer must finish within an election timeout
    flush_proposals(r)
    if r.trk[to].match == r.log.last_index():
        r.send(TimeoutNow(r.id, to, r.term))
    else:
        replication.send_append(r, to)


def best_successor(r: Raft) -> int:
    """A voter whose log is complete (match == last index), lowest id first; 0 if none."""
    last = r.log.last_index()
    complete = [i for i in sorted(r.conf.voters) if i in r.trk and r.trk[i].match == last]
    return complete[0] if complete else 0


def read_index(r: Raft, requester: int, context: bytes) -> None:
    if r.conf.voters == {r.id}:
        _answer_read(r, requester, r.log.committed, context)
    elif r.log.term_or_zero(r.log.committed) != r.term:
        if len(r.pending_reads) >= r.config.max_pending_read_index:
            raise ReadIndexDropped("too many reads wait for the leader's first commit")
        r.pending_reads.append((requester, context))
    elif len(r.read_only) >= r.config.max_pending_read_index:
        raise ReadIndexDropped("too many reads wait for a heartbeat round")
    else:
        key = r.read_only.add_request(r.log.committed, requester, context, r.id)
        replication.bcast_heartbeat(r, key)


def _answer_read(r: Raft, requester: int, index: int, context: bytes) -> None:
    if requester == r.id:
        r.read_states.append(ReadState(index, context))
    else:
        r.send(ReadIndexResponse(r.id, requester, r.term, context, index))


def on_commit_advanced(r: Raft) -> None:
    """The commit index moved: tell followers, and serve reads that waited for it."""
    replication.bcast_append(r)
    if r.pending_reads and r.log.term_or_zero(r.log.committed) == r.term:
        waiting, r.pending_reads = r.pending_reads, []
        for requester, context in waiting:
            read_index(r, requester, context)


def on_persisted(r: Raft, index: int, term: int) -> None:
    """Our own entries up to `index` are durable: our vote in the commit counts (§10.2.1)."""
    if r.log.term_or_zero(index) != term:
        return
    _count_own_match(r, index)


def _count_own_match(r: Raft, index: int) -> None:
    """Our own log counts as holding entries up to `index`: a new commit index, if that makes
    one. No new match (a lone voter counted its entries as it appended them): nothing to do."""
    if r.trk[r.id].maybe_update(index) and replication.maybe_commit(r):
        on_commit_advanced(r)


def send_snapshot_piece(
    r: Raft, to: int, meta: SnapshotMeta, offset: int, data: bytes, done: bool
) -> bool:
    """The driver answers a SnapshotRequest; False if the request is no longer current."""
    pr = r.trk.get(to)
    if pr is None or pr.state is not ProgressState.SNAPSHOT or not pr.snapshot_in_flight:
        return False
    if offset == 0:
        assert meta.index >= r.log.first_index() - 1, "snapshot older than the log's start"
        pr.pending_snapshot = meta.index
    elif offset != pr.snapshot_offset or meta.index != pr.pending_snapshot:
        return False
    assert len(data) <= r.config.snapshot_chunk_bytes, "snapshot piece too large"
    pr.snapshot_offset = offset
    r.send(InstallSnapshot(r.id, to, r.term, meta, offset, data, done))
    return True


# -- responses -----------------------------------------------------------------------------------


def handle_append_response(r: Raft, m: AppendEntriesResponse) -> None:
    pr = r.trk.get(m.frm)
    if pr is None:
        return
    pr.recent_active = True
    if m.reject:
        next_probe = m.hint_index
        if m.hint_term > 0:
            next_probe, _ = r.log.find_conflict_by_term(m.hint_index, m.hint_term)
        if pr.maybe_decr_to(m.index, next_probe):
            if pr.state is ProgressState.REPLICATE:
                pr.become_probe()
            replication.send_append(r, m.frm)
        return
    was_paused = pr.is_paused()
    if not pr.maybe_update(m.index):
        return
    _after_match_advanced(r, m.frm, m.index)
    if replication.maybe_commit(r):
        on_commit_advanced(r)
    elif was_paused:
        replication.send_append(r, m.frm)
    while replication.send_append(r, m.frm, send_if_empty=False):
        pass  # fill the in-flight window
    if m.frm == r.lead_transferee and pr.match == r.log.last_index():
        r.send(TimeoutNow(r.id, m.frm, r.term))


def _after_match_advanced(r: Raft, node_id: int, index: int) -> None:
    pr = r.trk[node_id]
    if pr.state is ProgressState.PROBE:
        pr.become_replicate()
    elif pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
        pr.become_probe()
        pr.become_replicate()
    elif pr.state is ProgressState.REPLICATE:
        pr.inflights.free_le(index)


def handle_heartbeat_response(r: Raft, m: HeartbeatResponse) -> None:
    pr = r.trk.get(m.frm)
    if pr is None:
        return
    pr.recent_active = True
    pr.probe_sent = False
    if pr.state is ProgressState.REPLICATE and pr.inflights.full():
        pr.inflights.free_first_one()  # messages may be lost: let one more probe the gap
    if pr.state is ProgressState.SNAPSHOT:
        _maybe_retry_snapshot_piece(r, m.frm)
    elif pr.match < r.log.last_index():
        replication.send_append(r, m.frm)
    if not m.context:
        return
    acks = r.read_only.recv_ack(m.frm, m.context)
    if acks is not None and has_quorum(r.conf.voters, acks):
        for status in r.read_only.advance(m.context):
            _answer_read(r, status.requester, status.index, status.context)


def _maybe_retry_snapshot_piece(r: Raft, node_id: int) -> None:
    pr = r.trk[node_id]
    pr.snapshot_stalled_heartbeats += 1
    if pr.snapshot_stalled_heartbeats >= r.config.snapshot_retry_heartbeats:
        pr.snapshot_in_flight = False  # the piece or its answer was lost: ask again
        replication.request_snapshot_piece(r, node_id, pr)


def handle_install_snapshot_response(r: Raft, m: InstallSnapshotResponse) -> None:
    pr = r.trk.get(m.frm)
    if pr is None or pr.state is not ProgressState.SNAPSHOT:
        return
    pr.recent_active = True
    if m.index != pr.pending_snapshot:
        return  # about another snapshot
    if m.next_offset != 0 and m.next_offset <= pr.snapshot_offset:
        return  # stale or duplicate (0 means the follower lost its pieces: start over)
    pr.snapshot_offset = m.next_offset
    pr.snapshot_in_flight = False
    replication.request_snapshot_piece(r, m.frm, pr)


def handle_read_index_request(r: Raft, m: ReadIndexRequest) -> None:
    if m.frm in r.trk:
        try:
            read_index(r, m.frm, m.context)
        except ReadIndexDropped:
            pass  # the follower's request times out and is retried, as if the message was lost


LEADER_HANDLERS = {
    AppendEntriesResponse: handle_append_response,
    HeartbeatResponse: handle_heartbeat_response,
    InstallSnapshotResponse: handle_install_snapshot_response,
    ReadIndexRequest: handle_read_index_request,
}
