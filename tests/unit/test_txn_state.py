"""The txn state machine (txn/state.py): locks, votes, decisions, finish, exactly once."""

from __future__ import annotations

import pytest
from txn_helpers import Group, ops

from txn.ids import txn_id
from txn.records import (
    COMMITTED,
    CONFLICT,
    PRESUMED_ABORT,
    Outcome,
    TxnDecision,
    TxnFinish,
    TxnForget,
    TxnLocal,
    TxnPrepare,
)
from txn.state import NO_GROUP, Decided, Finished, Forgotten, LocalApplied, TxnStateError, Voted

T1, T2, T3 = txn_id(1, 1), txn_id(1, 2), txn_id(2, 1)


def prepare(t: bytes, o: bytes, coordinator: int = 0) -> TxnPrepare:
    return TxnPrepare(t, coordinator, (1, 2), (), o)


def test_local_commits_once_and_a_retry_gets_the_remembered_outcome() -> None:
    g = Group()
    assert g.apply(TxnLocal(T1, ops(("create", 5, "a")))) == LocalApplied(T1, COMMITTED)
    assert g.get(5) == b"a"
    assert g.apply(TxnLocal(T1, ops(("create", 5, "a")))) == LocalApplied(T1, COMMITTED)
    assert len(g.app.applied) == 1
    assert g.state.outcome(g.kv, T1) == COMMITTED


def test_failed_check_aborts_with_the_application_reason_and_changes_nothing() -> None:
    g = Group()
    g.apply(TxnLocal(T1, ops(("create", 5, "a"))))
    r = g.apply(TxnLocal(T2, ops(("set", 4, "x"), ("create", 5, "b"))))
    assert r == LocalApplied(T2, Outcome(False, "EEXIST"))
    assert g.get(4) is None and g.get(5) == b"a"


def test_prepare_takes_its_locks_in_inode_order_and_keeps_the_ops() -> None:
    g = Group()
    r = g.apply(prepare(T1, ops(("set", 9, "a"), ("set", 3, "b"))))
    assert r == Voted(T1, 0, True, holding=True)
    assert list(g.state.locks(g.kv).items()) == [(3, T1), (9, T1)]
    assert [p.txn_id for p in g.state.prepared(g.kv)] == [T1]
    assert g.get(3) is None  # nothing applied before the decision


def test_duplicate_prepare_is_the_same_yes_vote() -> None:
    g = Group()
    g.apply(prepare(T1, ops(("set", 3, "a"))))
    assert g.apply(prepare(T1, ops(("set", 3, "a")))) == Voted(T1, 0, True, holding=True)
    assert g.state.locks(g.kv) == {3: T1}


def test_conflicting_prepare_votes_no_and_stays_no() -> None:
    g = Group()
    g.apply(prepare(T1, ops(("set", 3, "a"))))
    r = g.apply(prepare(T2, ops(("set", 2, "x"), ("set", 3, "b"))))
    assert r == Voted(T2, 0, False, CONFLICT)
    assert g.state.locks(g.kv) == {3: T1}  # all or none: 2 was not taken either
    g.apply(TxnFinish(T1, True))
    # A duplicate of the refused prepare must not take the now free locks.
    assert g.apply(prepare(T2, ops(("set", 2, "x"), ("set", 3, "b")))).yes is False
    assert g.state.locks(g.kv) == {}


def test_prepare_that_fails_its_check_votes_no_with_the_reason() -> None:
    g = Group()
    g.apply(TxnLocal(T1, ops(("create", 5, "a"))))
    assert g.apply(prepare(T2, ops(("create", 5, "b")))) == Voted(T2, 0, False, "EEXIST")
    assert g.state.locks(g.kv) == {}


def test_local_and_coordinator_ops_respect_prepared_locks() -> None:
    g = Group()
    g.apply(prepare(T1, ops(("set", 3, "a"))))
    assert g.apply(TxnLocal(T2, ops(("set", 3, "b")))).outcome == Outcome(False, CONFLICT)
    d = g.apply(TxnDecision(T3, True, (7,), ops(("set", 3, "c"))))
    assert d == Decided(T3, Outcome(False, CONFLICT), (7,))
    assert g.get(3) is None


def test_finish_commit_applies_the_prepared_ops_and_releases_the_locks() -> None:
    g = Group()
    g.apply(prepare(T1, ops(("set", 3, "a"), ("set", 4, "b"))))
    assert g.apply(TxnFinish(T1, True)) == Finished(T1, True, 0)
    assert (g.get(3), g.get(4)) == (b"a", b"b")
    assert g.state.locks(g.kv) == {} and g.state.prepared(g.kv) == []
    assert g.apply(TxnFinish(T1, True)) == Finished(T1, True, NO_GROUP)  # duplicate: no-op
    assert len(g.app.applied) == 1


def test_finish_abort_drops_the_ops_and_releases_the_locks() -> None:
    g = Group()
    g.apply(prepare(T1, ops(("set", 3, "a"))))
    assert g.apply(TxnFinish(T1, False)) == Finished(T1, False, 0)
    assert g.get(3) is None and g.state.locks(g.kv) == {}
    assert g.state.outcome(g.kv, T1) == Outcome(False)


def test_abort_that_overtakes_its_prepare_makes_the_late_prepare_vote_no() -> None:
    g = Group()
    assert g.apply(TxnFinish(T1, False)) == Finished(T1, False, NO_GROUP)
    assert g.apply(prepare(T1, ops(("set", 3, "a")))).yes is False
    assert g.state.locks(g.kv) == {}


def test_commit_of_a_txn_never_prepared_here_is_a_protocol_bug() -> None:
    g = Group()
    with pytest.raises(TxnStateError):
        g.apply(TxnFinish(T1, True))
    g.apply(prepare(T2, ops(("set", 3, "a"))))
    g.apply(TxnFinish(T2, False))
    with pytest.raises(TxnStateError):
        g.apply(TxnFinish(T2, True))


def test_first_decision_wins_presumed_abort_beats_a_late_commit() -> None:
    g = Group()
    abort = TxnDecision(T1, False, (2,), b"", PRESUMED_ABORT)
    assert g.apply(abort) == Decided(T1, Outcome(False, PRESUMED_ABORT), (2,))
    late = g.apply(TxnDecision(T1, True, (2, 3), ops(("set", 3, "a"))))
    assert late == Decided(T1, Outcome(False, PRESUMED_ABORT), (2,))
    assert g.get(3) is None


def test_commit_decision_applies_the_coordinators_ops() -> None:
    g = Group()
    d = g.apply(TxnDecision(T1, True, (2, 3), ops(("set", 3, "a"))))
    assert d == Decided(T1, COMMITTED, (2, 3))
    assert g.get(3) == b"a"
    assert g.state.decisions(g.kv) == [d]


def test_forget_keeps_only_the_outcome() -> None:
    g = Group()
    g.apply(TxnDecision(T1, True, (2,), ops(("set", 3, "a"))))
    assert g.apply(TxnForget(T1)) == Forgotten(T1)
    assert g.state.decisions(g.kv) == []
    assert g.state.outcome(g.kv, T1) == COMMITTED
    # A decision re-proposed after the forget reports the outcome and nothing to finish.
    assert g.apply(TxnDecision(T1, True, (2,), ops(("set", 3, "b")))) == Decided(
        T1, COMMITTED, ())
    assert g.get(3) == b"a"
    assert g.apply(TxnForget(T1)) == Forgotten(T1)  # duplicate: no-op


def test_remembered_outcomes_are_bounded_oldest_first() -> None:
    g = Group(max_outcomes=3)
    ids = [txn_id(9, i) for i in range(5)]
    for i, t in enumerate(ids):
        g.apply(TxnLocal(t, ops(("set", i, "v"))))
    assert [g.state.outcome(g.kv, t) for t in ids] == [None, None] + [COMMITTED] * 3
    assert len(g.kv.scan(b"txn/done/", 100)) == 3
    assert len(g.kv.scan(b"txn/doneq/", 100)) == 3


def test_unsorted_locks_are_a_programmer_error() -> None:
    g = Group()
    g.app.locks_of = lambda raw: (5, 3)  # type: ignore[method-assign]
    with pytest.raises(AssertionError):
        g.apply(prepare(T1, ops(("set", 3, "a"))))


def test_decision_without_participants_is_remembered_not_kept_open() -> None:
    g = Group()
    assert g.apply(TxnDecision(T1, False, ())) == Decided(T1, Outcome(False), ())
    assert g.state.decisions(g.kv) == [] and g.state.outcome(g.kv, T1) == Outcome(False)
