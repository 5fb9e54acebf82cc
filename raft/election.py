"""Leader election (paper §5.2, §5.4.1) with the pre-election of dissertation §9.6.

Rules:
- A follower or candidate that hears from no leader for a randomized election timeout
  (uniform in [T, 2T) ticks, drawn from the injected rng) campaigns.
- With pre_vote, it first asks the voters whether they *would* vote for it at term + 1; only a
  majority of yes moves it to a real election. A node cut off by a partition thus never bumps
  its term and cannot depose a healthy leader when it comes back.
- A voter grants at most one vote per term (the vote is persisted before the grant is sent:
  `needs_persist`), and only to a candidate whose log is at least as up-to-date (§5.4.1).
- Only votes from voters count; learners never campaign.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from raft import replication
from raft.messages import PreVote, PreVoteResponse, RequestVote, RequestVoteResponse
from raft.quorum import VoteResult, vote_result
from raft.ready import Role
from raft.types import EntryType

if TYPE_CHECKING:
    from raft.core import Raft


class CampaignKind(enum.Enum):
    PRE_ELECTION = "pre-election"
    ELECTION = "election"
    TRANSFER = "transfer"  # after TimeoutNow: skip the pre-election, override leases


def tick_election(r: Raft) -> None:
    r.election_elapsed += 1
    if r.promotable() and r.election_elapsed >= r.randomized_election_timeout:
        r.election_elapsed = 0
        campaign(r, CampaignKind.PRE_ELECTION if r.config.pre_vote else CampaignKind.ELECTION)


def has_unapplied_conf_change(r: Raft) -> bool:
    """A committed but unapplied membership change means our configuration may be stale.

    Committed entries never change, so each one is scanned once (`conf_scan_upto`)."""
    lo = max(r.conf_scan_upto + 1, r.log.applied + 1, r.log.first_index())
    for e in r.log.scan(lo, r.log.committed + 1):
        if e.type is EntryType.CONF_CHANGE:
            r.last_conf_change_index = e.index
    r.conf_scan_upto = max(r.conf_scan_upto, r.log.committed)
    return r.last_conf_change_index > r.log.applied


def campaign(r: Raft, kind: CampaignKind) -> None:
    if r.role is Role.LEADER or not r.promotable() or has_unapplied_conf_change(r):
        return
    if kind is CampaignKind.PRE_ELECTION:
        r.become_pre_candidate()
        term = r.term + 1
    else:
        r.become_candidate()
        term = r.term
    if poll(r, r.id, True) is VoteResult.WON:
        _won(r)  # a group of one
        return
    last_index, last_term = r.log.last_index(), r.log.last_term()
    for peer in sorted(r.conf.voters - {r.id}):
        if kind is CampaignKind.PRE_ELECTION:
            r.send(PreVote(r.id, peer, term, last_index, last_term))
        else:
            transfer = kind is CampaignKind.TRANSFER
            r.send(RequestVote(r.id, peer, term, last_index, last_term, transfer))


def poll(r: Raft, voter: int, granted: bool) -> VoteResult:
    if voter in r.conf.voters:
        r.votes.setdefault(voter, granted)
    return vote_result(r.conf.voters, r.votes)


def _won(r: Raft) -> None:
    if r.role is Role.PRE_CANDIDATE:
        campaign(r, CampaignKind.ELECTION)
    else:
        r.become_leader()
        replication.bcast_append(r)


def handle_vote_request(r: Raft, m: PreVote | RequestVote) -> None:
    pre = isinstance(m, PreVote)
    can_vote = (
        r.vote == m.frm
        or (r.vote == 0 and r.lead == 0)
        or (pre and m.term > r.term)  # a pre-vote is for a future term: nothing to double-grant
    )
    granted = can_vote and r.log.is_up_to_date(m.last_log_index, m.last_log_term)
    response = PreVoteResponse if pre else RequestVoteResponse
    r.send(response(r.id, m.frm, m.term if granted else r.term, granted))
    if granted and not pre:
        r.election_elapsed = 0
        r.vote = m.frm


def handle_vote_response(r: Raft, m: PreVoteResponse | RequestVoteResponse) -> None:
    expected = PreVoteResponse if r.role is Role.PRE_CANDIDATE else RequestVoteResponse
    if not isinstance(m, expected):
        return  # an answer to an earlier round
    result = poll(r, m.frm, m.granted)
    if result is VoteResult.WON:
        _won(r)
    elif result is VoteResult.LOST:
        r.become_follower(r.term, 0)


VOTE_REQUEST_HANDLERS = {PreVote: handle_vote_request, RequestVote: handle_vote_request}
VOTE_RESPONSE_HANDLERS = {
    PreVoteResponse: handle_vote_response,
    RequestVoteResponse: handle_vote_response,
}
