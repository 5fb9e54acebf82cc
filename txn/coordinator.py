"""The coordinator core: drives one group's transactions to a decision and to the end.

Rules:
- Sans-I/O: `handle(event) -> list[Action]`. No clock (time is `Tick`), no I/O, no randomness.
  Every state change that matters is a proposed record; in-memory state is only a cache of what
  is in flight, so losing it (a leader change) loses no decision: `BecameLeader` carries the
  decided-but-unforgotten txns read from the state machine, and the coordinator drives them on.
- Phases of one txn: LOCAL (one TxnLocal in flight) or PREPARING (PrepareRequests out, votes
  coming in) -> DECIDING (TxnDecision proposed) -> FINISHING (DecisionNotices out until every
  participant acknowledged) -> FORGETTING (TxnForget proposed). The client gets its Reply as soon
  as the decision is applied: that is the commit point.
- The applied result decides, never the proposal: the first TxnDecision applied for a txn wins
  (a presumed abort may beat our commit), and a commit whose own ops conflict applies as abort.
- Presumed abort: an OutcomeQuery for a txn without a decision makes us log an abort first, so
  the answer can never change. A txn already forgotten is answered "abort" (drop): every
  participant had finished it, so whoever asks holds only a stale duplicate prepare.
- Limits: at most `max_inflight` txns; retries are tick-driven with capped exponential backoff;
  a prepare phase lasts at most `prepare_timeout_ticks`, then the txn aborts (TIMEOUT).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from txn.actions import (
    Action,
    Backoff,
    LogApplied,
    LostLeadership,
    Propose,
    Reply,
    RetryConfig,
    Send,
    Tick,
)
from txn.ids import TxnId
from txn.messages import (
    DecisionNotice,
    FinishAck,
    OutcomeAnswer,
    OutcomeQuery,
    PrepareRequest,
    PrepareVote,
)
from txn.records import PRESUMED_ABORT, TIMEOUT, Outcome, TxnDecision, TxnForget, TxnLocal
from txn.state import Decided, Forgotten, LocalApplied


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    retry: RetryConfig = field(default_factory=RetryConfig)
    prepare_timeout_ticks: int = 40
    max_inflight: int = 1024
    max_pending_queries: int = 4096


# -- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """A client request. `parts` maps each group to its ops (this group's own included).
    `known` is the outcome the state machine already holds for txn_id (the driver reads it
    with TxnState.outcome after applying its log): a retried request is answered, not rerun."""

    txn_id: TxnId
    parts: tuple[tuple[int, bytes], ...]
    known: Outcome | None = None


@dataclass(frozen=True, slots=True)
class VoteReceived:
    vote: PrepareVote


@dataclass(frozen=True, slots=True)
class AckReceived:
    ack: FinishAck


@dataclass(frozen=True, slots=True)
class QueryReceived:
    query: OutcomeQuery




@dataclass(frozen=True, slots=True)
class BecameLeader:
    decisions: tuple[Decided, ...]  # TxnState.decisions(view) after applying the whole log



CoordinatorEvent = (
    Start | VoteReceived | AckReceived | QueryReceived | LogApplied | Tick | BecameLeader
    | LostLeadership
)


class Phase(enum.Enum):
    LOCAL = "local"
    PREPARING = "preparing"
    DECIDING = "deciding"
    FINISHING = "finishing"
    FORGETTING = "forgetting"


@dataclass(slots=True)
class _Txn:
    txn_id: TxnId
    phase: Phase
    retry: Backoff
    own_ops: bytes = b""
    ops: dict[int, bytes] = field(default_factory=dict)  # participant group -> its ops
    participants: tuple[int, ...] = ()
    yes: set[int] = field(default_factory=set)
    acked: set[int] = field(default_factory=set)
    client_waiting: bool = False
    decision: TxnDecision | None = None  # what we proposed (re-proposed on retry)
    outcome: Outcome | None = None


class Coordinator:
    def __init__(self, group: int, config: CoordinatorConfig | None = None) -> None:
        self.group = group
        self.config = config or CoordinatorConfig()
        self.leader = False
        self._txns: dict[TxnId, _Txn] = {}
        self._queries: dict[TxnId, set[int]] = {}  # groups waiting for an OutcomeAnswer
        self._handlers: dict[type, Callable[[object], list[Action]]] = {
            Start: self._start,  # type: ignore[dict-item]
            VoteReceived: self._vote,  # type: ignore[dict-item]
            AckReceived: self._ack,  # type: ignore[dict-item]
            QueryReceived: self._query,  # type: ignore[dict-item]
            LogApplied: self._applied,  # type: ignore[dict-item]
            Tick: self._tick,  # type: ignore[dict-item]
            BecameLeader: self._became_leader,  # type: ignore[dict-item]
            LostLeadership: self._lost_leadership,  # type: ignore[dict-item]
        }
        self._on_result: dict[type, Callable[[_Txn | None, object], list[Action]]] = {
            LocalApplied: self._local_applied,  # type: ignore[dict-item]
            Decided: self._decided,  # type: ignore[dict-item]
            Forgotten: self._forgotten,  # type: ignore[dict-item]
        }

    def handle(self, event: CoordinatorEvent) -> list[Action]:
        return self._handlers[type(event)](event)

    def inflight(self) -> dict[TxnId, Phase]:
        """Txn id -> phase, for tests, traces and metrics."""
        return {t: txn.phase for t, txn in self._txns.items()}

    # -- client --------------------------------------------------------------------------

    def _start(self, e: Start) -> list[Action]:
        if e.known is not None:
            return [Reply(e.txn_id, e.known)]
        txn = self._txns.get(e.txn_id)
        if txn is not None:  # a retried request: answer when decided
            if txn.outcome is not None:
                return [Reply(e.txn_id, txn.outcome)]
            txn.client_waiting = True
            return []
        if not self.leader or len(self._txns) >= self.config.max_inflight:
            return [Reply(e.txn_id, None)]
        parts = {g: ops for g, ops in e.parts if ops}  # a group with no ops takes no part
        own = parts.pop(self.group, b"")
        if not parts:
            return self._start_local(e.txn_id, own)
        return self._start_prepare(e.txn_id, own, parts)

    def _start_local(self, txn_id: TxnId, ops: bytes) -> list[Action]:
        txn = _Txn(txn_id, Phase.LOCAL, self._backoff(), own_ops=ops, client_waiting=True)
        self._txns[txn_id] = txn
        return [Propose(TxnLocal(txn_id, ops))]

    def _start_prepare(self, txn_id: TxnId, own: bytes, parts: dict[int, bytes]) -> list[Action]:
        txn = _Txn(txn_id, Phase.PREPARING, self._backoff(), own_ops=own, ops=parts,
                   participants=tuple(sorted(parts)), client_waiting=True)
        self._txns[txn_id] = txn
        return self._send_prepares(txn)

    def _send_prepares(self, txn: _Txn) -> list[Action]:
        return [
            Send(g, PrepareRequest(txn.txn_id, self.group, txn.participants, txn.ops[g]))
            for g in txn.participants
            if g not in txn.yes
        ]

    # -- participants --------------------------------------------------------------------

    def _vote(self, e: VoteReceived) -> list[Action]:
        v = e.vote
        txn = self._txns.get(v.txn_id)
        if txn is None or txn.phase is not Phase.PREPARING or v.group not in txn.participants:
            return []  # late or duplicate: the decision is already on its way
        if not v.yes:
            return self._decide(txn, TxnDecision(v.txn_id, False, txn.participants, b"", v.reason))
        txn.yes.add(v.group)
        if txn.yes != set(txn.participants):
            return []
        return self._decide(txn, TxnDecision(v.txn_id, True, txn.participants, txn.own_ops))

    def _decide(self, txn: _Txn, decision: TxnDecision) -> list[Action]:
        txn.phase, txn.decision = Phase.DECIDING, decision
        txn.retry.reset()
        return [Propose(decision)]

    def _ack(self, e: AckReceived) -> list[Action]:
        txn = self._txns.get(e.ack.txn_id)
        if txn is None or txn.phase is not Phase.FINISHING:
            return []
        txn.acked.add(e.ack.group)
        return self._forget_if_done(txn)

    def _forget_if_done(self, txn: _Txn) -> list[Action]:
        if not txn.acked.issuperset(txn.participants):
            return []
        txn.phase = Phase.FORGETTING
        txn.retry.reset()
        return [Propose(TxnForget(txn.txn_id))]

    def _query(self, e: QueryReceived) -> list[Action]:
        q = e.query
        txn = self._txns.get(q.txn_id)
        if txn is not None and txn.outcome is not None:
            # A group that already acknowledged holds only a stale duplicate prepare: drop it.
            commit = txn.outcome.commit and q.group not in txn.acked
            return [Send(q.group, OutcomeAnswer(q.txn_id, self.group, commit))]
        if not self.leader or (txn is not None and txn.phase is Phase.LOCAL):
            return []  # a local txn has no participants: the query is bogus
        waiting = self._queries.get(q.txn_id)
        if waiting is None and len(self._queries) >= self.config.max_pending_queries:
            return []  # the participant asks again later
        if waiting is not None and q.group not in waiting:
            waiting.add(q.group)  # the abort proposed for the first asker answers this one too
            return []
        # First ask, or an asker asking again (our proposal may have been lost): propose.
        self._queries.setdefault(q.txn_id, set()).add(q.group)
        participants = txn.participants if txn is not None else (q.group,)
        # Presumed abort: log the abort before answering, so the answer can never change.
        return [Propose(TxnDecision(q.txn_id, False, participants, b"", PRESUMED_ABORT))]

    # -- own log -------------------------------------------------------------------------

    def _applied(self, e: LogApplied) -> list[Action]:
        handler = self._on_result.get(type(e.result))
        if handler is None:
            return []  # a participant's result: not ours
        return handler(self._txns.get(e.result.txn_id), e.result)

    def _local_applied(self, txn: _Txn | None, r: LocalApplied) -> list[Action]:
        if txn is None or txn.phase is not Phase.LOCAL:
            return []
        del self._txns[r.txn_id]
        return [Reply(r.txn_id, r.outcome)]

    def _decided(self, txn: _Txn | None, r: Decided) -> list[Action]:
        out = self._answer_queries(r)
        if txn is not None and txn.outcome is not None:
            return out  # a duplicate (a retried proposal applied twice)
        if txn is None and (not self.leader or not r.participants):
            return out
        if txn is None:
            txn = _Txn(r.txn_id, Phase.FINISHING, self._backoff(), participants=r.participants)
            self._txns[r.txn_id] = txn
        if txn.outcome is None and txn.client_waiting:
            out.append(Reply(r.txn_id, r.outcome))
        txn.outcome, txn.phase = r.outcome, Phase.FINISHING
        # A presumed abort logged on a query names only the asker: tell every participant we
        # know of, so none has to wait for its own timeout to learn it.
        txn.participants = tuple(sorted(set(r.participants) | set(txn.participants)))
        txn.retry.reset()
        if not r.participants:  # already forgotten: nothing left to finish
            del self._txns[r.txn_id]
            return out
        return out + self._send_notices(txn)

    def _answer_queries(self, r: Decided) -> list[Action]:
        # Forgotten (no participants left): whoever asks holds a stale duplicate: drop it.
        commit = r.outcome.commit and bool(r.participants)
        groups = self._queries.pop(r.txn_id, set())
        return [Send(g, OutcomeAnswer(r.txn_id, self.group, commit)) for g in sorted(groups)]

    def _send_notices(self, txn: _Txn) -> list[Action]:
        assert txn.outcome is not None
        notice = DecisionNotice(txn.txn_id, self.group, txn.outcome.commit)
        return [Send(g, notice) for g in txn.participants if g not in txn.acked]

    def _forgotten(self, txn: _Txn | None, r: Forgotten) -> list[Action]:
        if txn is not None and txn.phase is Phase.FORGETTING:
            del self._txns[r.txn_id]
        return []

    # -- time and leadership -------------------------------------------------------------

    def _tick(self, _e: Tick) -> list[Action]:
        out: list[Action] = []
        for txn in list(self._txns.values()):
            due = txn.retry.tick()
            if txn.phase is Phase.PREPARING and txn.retry.age >= self.config.prepare_timeout_ticks:
                decision = TxnDecision(txn.txn_id, False, txn.participants, b"", TIMEOUT)
                out += self._decide(txn, decision)
            elif due:
                out += _RETRY[txn.phase](self, txn)
        return out

    def _became_leader(self, e: BecameLeader) -> list[Action]:
        self._lost_leadership(LostLeadership())
        self.leader = True
        out: list[Action] = []
        for d in e.decisions:
            out += self._decided(None, d)
        return out

    def _lost_leadership(self, _e: LostLeadership) -> list[Action]:
        # Clients waiting here must retry at the new leader (same txn id: exactly once).
        out: list[Action] = [Reply(t, None) for t, txn in self._txns.items()
                             if txn.client_waiting and txn.outcome is None]
        self.leader = False
        self._txns.clear()
        self._queries.clear()
        return out

    def _backoff(self) -> Backoff:
        return Backoff(self.config.retry)


def _retry_local(c: Coordinator, txn: _Txn) -> list[Action]:
    return [Propose(TxnLocal(txn.txn_id, txn.own_ops))]


def _retry_decision(c: Coordinator, txn: _Txn) -> list[Action]:
    assert txn.decision is not None
    return [Propose(txn.decision)]


def _retry_forget(c: Coordinator, txn: _Txn) -> list[Action]:
    return [Propose(TxnForget(txn.txn_id))]


# What a due retry resends, per phase: a lost proposal is proposed again (applying a txn record
# twice is harmless), a lost message is sent again.
_RETRY: dict[Phase, Callable[[Coordinator, _Txn], list[Action]]] = {
    Phase.LOCAL: _retry_local,
    Phase.PREPARING: lambda c, txn: c._send_prepares(txn),
    Phase.DECIDING: _retry_decision,
    Phase.FINISHING: lambda c, txn: c._send_notices(txn) or c._forget_if_done(txn),
    Phase.FORGETTING: _retry_forget,
}
