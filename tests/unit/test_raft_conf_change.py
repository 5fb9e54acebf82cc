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
    assert ro.add_request(5, 1, b"a", self_id=1)
    assert ro.add_request(6, 2, b"b", self_id=1)
    assert not ro.add_request(6, 2, b"b", self_id=1)  # duplicate context
    assert ro.last_pending_context() == b"b"
    assert ro.recv_ack(2, b"b") == {1, 2}
    released = ro.advance(b"b")
    assert [(s.index, s.context) for s in released] == [(5, b"a"), (6, b"b")]
    assert len(ro) == 0
