"""The coordinator and participant cores (txn/coordinator.py, txn/participant.py), driven step
by step against real txn state machines: every Propose is applied and fed back as LogApplied."""

from __future__ import annotations

from txn_helpers import Group, ops

from txn import coordinator as co
from txn import participant as pa
from txn.actions import Propose, Reply, RetryConfig, Send
from txn.ids import txn_id
from txn.messages import (
    DecisionNotice,
    FinishAck,
    OutcomeAnswer,
    OutcomeQuery,
    PrepareRequest,
    PrepareVote,
)
from txn.records import (
    COMMITTED,
    PRESUMED_ABORT,
    TIMEOUT,
    Outcome,
    TxnDecision,
    TxnForget,
    TxnLocal,
    TxnPrepare,
)

T = txn_id(7, 1)
RETRY = RetryConfig(retry_ticks=2, max_backoff_ticks=8)


class Node:
    """The leader of one group: its cores plus its state machine; Propose applies at once."""

    def __init__(self, gid: int) -> None:
        self.gid = gid
        self.group = Group()
        self.coord = co.Coordinator(gid, co.CoordinatorConfig(RETRY, prepare_timeout_ticks=10))
        self.part = pa.Participant(gid, self.group.app, pa.ParticipantConfig(RETRY, 6))
        self.coord.handle(co.BecameLeader(()))
        self.part.handle(pa.BecameLeader(()))
        self.proposed: list[object] = []

    def run(self, actions: list) -> list:
        """Apply proposals (feeding results back) until only sends and replies remain."""
        out = []
        while actions:
            a = actions.pop(0)
            if isinstance(a, Propose):
                self.proposed.append(a.record)
                result = self.group.apply(a.record)
                actions += self.coord.handle(co.LogApplied(result))
                actions += self.part.handle(pa.LogApplied(result))
            else:
                out.append(a)
        return out

    def coordinator(self, event: object) -> list:
        return self.run(self.coord.handle(event))  # type: ignore[arg-type]

    def participant(self, event: object) -> list:
        return self.run(self.part.handle(event))  # type: ignore[arg-type]


def sends(actions: list, cls: type) -> list[Send]:
    return [a for a in actions if isinstance(a, Send) and isinstance(a.message, cls)]


def test_local_txn_is_one_record() -> None:
    n = Node(0)
    out = n.coordinator(co.Start(T, ((0, ops(("set", 1, "a"))),)))
    assert out == [Reply(T, COMMITTED)]
    assert n.proposed == [TxnLocal(T, ops(("set", 1, "a")))]
    assert n.coord.inflight() == {}


def test_retried_request_with_a_known_outcome_is_answered_not_rerun() -> None:
    n = Node(0)
    assert n.coordinator(co.Start(T, ((0, b""),), known=COMMITTED)) == [Reply(T, COMMITTED)]
    assert n.proposed == []


def test_two_phase_commit_happy_path() -> None:
    c, p1, p2 = Node(0), Node(1), Node(2)
    parts = ((0, ops(("set", 1, "c"))), (1, ops(("set", 2, "p1"))), (2, ops(("set", 3, "p2"))))
    out = c.coordinator(co.Start(T, parts))
    reqs = sends(out, PrepareRequest)
    assert [s.group for s in reqs] == [1, 2]
    assert c.coord.inflight() == {T: co.Phase.PREPARING}
    votes = p1.participant(pa.PrepareReceived(reqs[0].message))  # type: ignore[arg-type]
    votes += p2.participant(pa.PrepareReceived(reqs[1].message))  # type: ignore[arg-type]
    assert [v.message for v in votes] == [PrepareVote(T, 1, True), PrepareVote(T, 2, True)]
    assert p1.part.waiting() == {T: 0}
    out = c.coordinator(co.VoteReceived(votes[0].message))  # type: ignore[arg-type]
    assert out == []
    out = c.coordinator(co.VoteReceived(votes[1].message))  # type: ignore[arg-type]
    assert Reply(T, COMMITTED) in out
    assert c.group.get(1) == b"c"  # the coordinator's ops commit with the decision
    notices = sends(out, DecisionNotice)
    assert [s.group for s in notices] == [1, 2]
    acks = p1.participant(pa.DecisionReceived(notices[0].message))  # type: ignore[arg-type]
    acks += p2.participant(pa.DecisionReceived(notices[1].message))  # type: ignore[arg-type]
    assert [a.message for a in acks] == [FinishAck(T, 1), FinishAck(T, 2)]
    assert (p1.group.get(2), p2.group.get(3)) == (b"p1", b"p2")
    assert p1.group.state.locks(p1.group.kv) == {}
    c.coordinator(co.AckReceived(acks[0].message))  # type: ignore[arg-type]
    c.coordinator(co.AckReceived(acks[1].message))  # type: ignore[arg-type]
    assert c.proposed[-1] == TxnForget(T)
    assert c.coord.inflight() == {} and c.group.state.decisions(c.group.kv) == []


def test_a_no_vote_aborts_and_the_reason_reaches_the_client() -> None:
    c = Node(0)
    c.coordinator(co.Start(T, ((0, b""), (1, b"x"), (2, b"y"))))
    out = c.coordinator(co.VoteReceived(PrepareVote(T, 2, False, "EEXIST")))
    assert Reply(T, Outcome(False, "EEXIST")) in out
    assert [s.group for s in sends(out, DecisionNotice)] == [1, 2]


def test_silent_participants_get_prepares_again_then_the_txn_times_out() -> None:
    c = Node(0)
    c.coordinator(co.Start(T, ((0, b""), (1, b"x"), (2, b"y"))))
    c.coordinator(co.VoteReceived(PrepareVote(T, 1, True)))
    resent = []
    for _ in range(9):
        resent += sends(c.coordinator(co.Tick()), PrepareRequest)
    assert resent and {s.group for s in resent} == {2}
    out = c.coordinator(co.Tick())
    assert c.proposed[-1] == TxnDecision(T, False, (1, 2), b"", TIMEOUT)
    assert Reply(T, Outcome(False, TIMEOUT)) in out


def test_query_for_an_unknown_txn_logs_an_abort_before_answering() -> None:
    c = Node(0)
    out = c.coordinator(co.QueryReceived(OutcomeQuery(T, 3)))
    assert c.proposed == [TxnDecision(T, False, (3,), b"", PRESUMED_ABORT)]
    assert sends(out, OutcomeAnswer)[0] == Send(3, OutcomeAnswer(T, 0, False))
    # The client's request that arrives later gets the abort; a late commit cannot change it.
    out = c.coordinator(co.Start(T, ((0, b""), (3, b"x"))))
    assert out == [Reply(T, Outcome(False, PRESUMED_ABORT))]
    assert c.group.apply(TxnDecision(T, True, (3,), b"")).outcome.commit is False  # type: ignore[union-attr]


def test_query_for_a_forgotten_txn_is_told_to_drop_its_stale_prepare() -> None:
    c = Node(0)
    c.group.apply(TxnDecision(T, True, (1,), b""))
    c.group.apply(TxnForget(T))
    out = c.coordinator(co.QueryReceived(OutcomeQuery(T, 1)))
    assert sends(out, OutcomeAnswer)[0].message == OutcomeAnswer(T, 0, False)


def test_new_leader_resumes_decided_txns_and_old_clients_retry() -> None:
    c = Node(0)
    c.coordinator(co.Start(T, ((0, b""), (1, b"x"))))
    assert c.coord.handle(co.LostLeadership()) == [Reply(T, None)]
    c.group.apply(TxnDecision(T, True, (1,), b""))
    fresh = co.Coordinator(0)
    out = fresh.handle(co.BecameLeader(tuple(c.group.state.decisions(c.group.kv))))
    assert out == [Send(1, DecisionNotice(T, 0, True))]
    assert fresh.inflight() == {T: co.Phase.FINISHING}


def test_participant_asks_the_coordinator_after_its_timeout_with_backoff() -> None:
    p = Node(1)
    p.participant(pa.PrepareReceived(PrepareRequest(T, 0, (1,), ops(("set", 5, "v")))))
    assert p.proposed == [TxnPrepare(T, 0, (1,), (5,), ops(("set", 5, "v")))]
    asked = [i for i in range(1, 40) if sends(p.participant(pa.Tick()), OutcomeQuery)]
    assert asked[:4] == [6, 10, 18, 26]  # timeout, then doubling up to the cap of 8 ticks
    out = p.participant(pa.DecisionReceived(OutcomeAnswer(T, 0, False)))
    assert out == [Send(0, FinishAck(T, 1))]
    assert p.part.waiting() == {} and p.group.get(5) is None


def test_participant_new_leader_resumes_prepared_txns() -> None:
    p = Node(1)
    p.participant(pa.PrepareReceived(PrepareRequest(T, 0, (1,), ops(("set", 5, "v")))))
    fresh = pa.Participant(1, p.group.app, pa.ParticipantConfig(RETRY, 3))
    fresh.handle(pa.BecameLeader(tuple(p.group.state.prepared(p.group.kv))))
    queries = [a for _ in range(3) for a in fresh.handle(pa.Tick())]
    assert queries == [Send(0, OutcomeQuery(T, 1))]


def test_followers_ignore_requests() -> None:
    p = Node(1)
    p.part.handle(pa.LostLeadership())
    assert p.participant(pa.PrepareReceived(PrepareRequest(T, 0, (1,), b""))) == []
    c = Node(0)
    c.coord.handle(co.LostLeadership())
    assert c.coordinator(co.Start(T, ((0, b""),))) == [Reply(T, None)]


def test_query_from_a_group_that_already_acknowledged_is_told_to_drop() -> None:
    c = Node(0)
    c.coordinator(co.Start(T, ((0, b""), (1, b"x"), (2, b"y"))))
    c.coordinator(co.VoteReceived(PrepareVote(T, 1, True)))
    c.coordinator(co.VoteReceived(PrepareVote(T, 2, True)))
    c.coordinator(co.AckReceived(FinishAck(T, 1)))
    answers = c.coordinator(co.QueryReceived(OutcomeQuery(T, 1)))
    answers += c.coordinator(co.QueryReceived(OutcomeQuery(T, 2)))
    assert [a.message for a in answers] == [OutcomeAnswer(T, 0, False), OutcomeAnswer(T, 0, True)]


def test_groups_without_ops_take_no_part() -> None:
    n = Node(0)
    out = n.coordinator(co.Start(T, ((0, ops(("set", 1, "a"))), (1, b""))))
    assert out == [Reply(T, COMMITTED)] and n.proposed == [TxnLocal(T, ops(("set", 1, "a")))]
