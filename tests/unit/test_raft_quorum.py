"""Majority arithmetic (paper §5.2 elections, §5.3 commitment)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from raft.quorum import VoteResult, committed_index, has_quorum, majority, vote_result


def test_majority() -> None:
    assert [majority(n) for n in range(1, 6)] == [1, 2, 2, 3, 3]


def test_committed_index_is_the_majority_match() -> None:
    assert committed_index({1, 2, 3}, {1: 5, 2: 3, 3: 1}) == 3
    assert committed_index({1, 2, 3, 4}, {1: 5, 2: 3, 3: 1, 4: 9}) == 3
    assert committed_index({1}, {1: 7}) == 7
    assert committed_index(set(), {}) == 0
    # Learners (not in voters) never count.
    assert committed_index({1, 2, 3}, {1: 9, 4: 9, 5: 9}) == 0


@given(st.dictionaries(st.integers(1, 5), st.integers(0, 100), min_size=1))
def test_committed_index_is_stored_on_a_majority(match: dict[int, int]) -> None:
    voters = set(match)
    index = committed_index(voters, match)
    assert sum(1 for v in voters if match[v] >= index) >= majority(len(voters))
    assert sum(1 for v in voters if match[v] > index) < majority(len(voters))


def test_vote_result() -> None:
    voters = {1, 2, 3}
    assert vote_result(voters, {1: True}) is VoteResult.PENDING
    assert vote_result(voters, {1: True, 2: True}) is VoteResult.WON
    assert vote_result(voters, {1: True, 2: False}) is VoteResult.PENDING
    assert vote_result(voters, {1: True, 2: False, 3: False}) is VoteResult.LOST
    assert vote_result({1}, {1: True}) is VoteResult.WON
    # Votes from non-voters are ignored.
    assert vote_result(voters, {1: True, 4: True, 5: True}) is VoteResult.PENDING


def test_has_quorum() -> None:
    assert has_quorum({1, 2, 3}, {1, 2})
    assert not has_quorum({1, 2, 3}, {1, 4, 5})
    assert not has_quorum(set(), {1})
