"""Leader side of log replication (paper §5.3, §7; dissertation §10.2.1).

Rules:
- Each follower gets entries from its Progress.next; a message carries at most
  max_size_per_msg_bytes (and at least one entry), and a follower in REPLICATE has at most
  max_inflight_msgs messages unacknowledged.
- If the entries before `next` were compacted, the follower is switched to SNAPSHOT and the
  driver is asked (SnapshotRequest) for the snapshot, one piece at a time.
- The leader commits the largest index a majority of voters store, but only if that entry is of
  its own term (§5.4.2); its own vote counts only for entries it has persisted, except when it
  is the only voter: then an entry commits as it is appended (etcd does the same), so one
  Ready carries it both to save and to apply, and the driver saves before it applies (the
  Ready contract). The commit index and the entry reach the disk in one batch, and nothing
  depends on the commit before then: applying, answering the proposer and ReadIndex (whose
  reader waits for applied) all follow the save. It saves one Ready round per commit.
- Heartbeats carry min(match, commit) so a follower never learns a commit index past the log it
  has acknowledged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raft.log_storage import Compacted
from raft.messages import AppendEntries, Heartbeat
from raft.progress import Progress, ProgressState
from raft.quorum import committed_index
from raft.ready import SnapshotRequest
from raft.types import Entry, EntryType

if TYPE_CHECKING:
    from raft.core import Raft


def new_entry(r: Raft, index: int, type: EntryType, data: bytes) -> Entry:
    return Entry(term=r.term, index=index, type=type, data=data)


def send_append(r: Raft, to: int, send_if_empty: bool = True) -> bool:
    """Send `to` the entries it lacks (or the commit index); False if nothing was sent."""
    pr = r.trk[to]
    if pr.state is ProgressState.SNAPSHOT:
        request_snapshot_piece(r, to, pr)
        return False
    if pr.is_paused():
        return False
    prev = pr.next - 1
    try:
        prev_term = r.log.term(prev)
        entries = r.log.entries_from(pr.next, r.config.max_size_per_msg_bytes)
    except Compacted:
        pr.become_snapshot(r.log.first_index() - 1)
        request_snapshot_piece(r, to, pr)
        return False
    if not entries and not send_if_empty:
        return False
    r.send(AppendEntries(r.id, to, r.term, prev, prev_term, tuple(entries), r.log.committed))
    pr.sent_entries(len(entries), entries[-1].index if entries else prev)
    return True


def request_snapshot_piece(r: Raft, to: int, pr: Progress) -> None:
    """Ask the driver for the next piece of the snapshot `to` needs (one at a time)."""
    if pr.snapshot_in_flight:
        return
    pr.snapshot_in_flight = True
    pr.snapshot_stalled_heartbeats = 0
    started = pr.snapshot_offset > 0
    r.snapshot_requests.append(
        SnapshotRequest(
            to=to,
            index=pr.pending_snapshot if started else 0,
            min_index=r.log.first_index() - 1,
            offset=pr.snapshot_offset,
        )
    )


def send_heartbeat(r: Raft, to: int, context: bytes) -> None:
    commit = min(r.trk[to].match, r.log.committed)
    r.send(Heartbeat(r.id, to, r.term, commit, context))


def peers(r: Raft) -> list[int]:
    return [node_id for node_id in sorted(r.trk) if node_id != r.id]


def bcast_append(r: Raft) -> None:
    for to in peers(r):
        send_append(r, to)


def bcast_heartbeat(r: Raft, context: bytes = b"") -> None:
    for to in peers(r):
        send_heartbeat(r, to, context)


def maybe_commit(r: Raft) -> bool:
    """Advance the commit index to what a majority stores, if of our term (§5.4.2)."""
    match = {node_id: pr.match for node_id, pr in r.trk.items()}
    return r.log.maybe_commit(committed_index(r.conf.voters, match), r.term)
