"""Majority arithmetic over one configuration of voters (no joint consensus: dissertation §4.1
changes membership one server at a time, so any two majorities overlap).

Pure functions; learners never count.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping


class VoteResult(enum.Enum):
    PENDING = 0
    WON = 1
    LOST = 2


def majority(n_voters: int) -> int:
    return n_voters // 2 + 1


def committed_index(voters: Collection[int], match: Mapping[int, int]) -> int:
    """Largest index stored on a majority of voters (paper §5.3); 0 with no voters."""
    if not voters:
        return 0
    acked = sorted((match.get(v, 0) for v in voters), reverse=True)
    return acked[majority(len(voters)) - 1]


def vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    """WON once a majority granted, LOST once a majority can no longer be reached."""
    granted = sum(1 for v in voters if votes.get(v) is True)
    missing = sum(1 for v in voters if v not in votes)
    need = majority(len(voters))
    if voters and granted >= need:
        return VoteResult.WON
    if granted + missing >= need:
        return VoteResult.PENDING
    return VoteResult.LOST


def has_quorum(voters: Collection[int], members: Collection[int]) -> bool:
    """Whether `members` include a majority of `voters`."""
    present = set(members)
    return bool(voters) and sum(1 for v in voters if v in present) >= majority(len(voters))
