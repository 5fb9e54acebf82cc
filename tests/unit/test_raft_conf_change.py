"""One-server membership changes (dissertation §4.1) and ReadIndex bookkeeping (§6.4)."""

from __future__ import annotations

import pytest

from raft.conf_change import ConfChange, ConfChangeType, apply, validate
from raft.errors import ConfChangeRejected
from raft.read_only import ReadOnly
from raft.types import ConfState

ADD, PROMOTE, REMOVE = ConfChangeType.ADD_LEARNER, ConfChangeType.PROMOTE, ConfChangeType.REMOVE
CONF = ConfState(frozenset({1, 2, 3}), frozenset({4}))


def test_encoding_round_trip() -> None:
    cc = ConfChange(PROMOTE, 2**40)
    assert ConfChange.decode(cc.encode()) == cc


def test_learner_then_voter_then_removed() -> None:
    conf = apply(ConfState(frozenset({1})), ConfChange(ADD, 2))
    assert conf == ConfState(frozenset({1}), frozenset({2}))
    conf = apply(conf, ConfChange(PROMOTE, 2))
    assert conf == ConfState(frozenset({1, 2}), frozenset())
    assert apply(conf, ConfChange(REMOVE, 1)) == ConfState(frozenset({2}), frozenset())


@pytest.mark.parametrize(
    "cc",
    [ConfChange(ADD, 3), ConfChange(PROMOTE, 3), ConfChange(PROMOTE, 9), ConfChange(REMOVE, 9)],
)
def test_invalid_changes_are_rejected(cc: ConfChange) -> None:
    with pytest.raises(ConfChangeRejected):
        validate(CONF, cc)


def test_last_voter_cannot_be_removed() -> None:
    with pytest.raises(ConfChangeRejected):
        validate(ConfState(frozenset({1})), ConfChange(REMOVE, 1))


def test_read_only_releases_earlier_requests_with_a_later_ack() -> None:
    ro = ReadOnly()
    assert ro.add_request(5, 1, b"a", self_id=1) == b"1:1:a"
    assert ro.add_request(6, 2, b"a", self_id=1) == b"2:2:a"  # another member's context "a"
    assert ro.last_pending_context() == b"2:2:a"
    assert ro.recv_ack(3, b"2:2:a") == {1, 3}
    released = ro.advance(b"2:2:a")
    assert [(s.index, s.requester, s.context) for s in released] == [(5, 1, b"a"), (6, 2, b"a")]
    assert len(ro) == 0


def test_read_only_a_repeated_request_replaces_the_earlier_one() -> None:
    ro = ReadOnly()
    old = ro.add_request(5, 2, b"a", self_id=1)
    new = ro.add_request(9, 2, b"a", self_id=1)  # asked again, e.g. after a restart
    assert ro.recv_ack(3, old) is None  # acks of the earlier round confirm nothing now
    ro.recv_ack(3, new)
    assert [(s.index, s.context) for s in ro.advance(new)] == [(9, b"a")]
