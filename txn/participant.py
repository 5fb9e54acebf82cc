"""The participant core: prepares, votes, waits for the decision, finishes.

Rules:
- Sans-I/O: `handle(event) -> list[Action]`; time is `Tick`. Every step is a proposed record and
  every answer is sent only after its record was applied (persist before you promise): a vote
  after TxnPrepare, a FinishAck after TxnFinish.
- In memory we keep only the txns this group holds prepared (to ask about them) and whom to
  acknowledge; both are rebuilt from the state machine (`BecameLeader`) after a leader change.
- A prepared txn whose decision has not arrived after `outcome_timeout_ticks` makes us ask the
  coordinator group (OutcomeQuery), then again with capped exponential backoff: we hold locks
  until we know, so we never stop asking, but the rate is bounded.
- Duplicates of every message are expected; handling one twice proposes a record twice, which
  the state machine applies idempotently.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from txn.actions import (
    Action,
    Backoff,
    LogApplied,
    LostLeadership,
    Propose,
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
from txn.records import TxnFinish, TxnPrepare
from txn.state import NO_GROUP, Finished, Voted


@dataclass(frozen=True, slots=True)
class ParticipantConfig:
    retry: RetryConfig = field(default_factory=RetryConfig)
    outcome_timeout_ticks: int = 80  # longer than the coordinator's prepare timeout
    max_pending_acks: int = 4096


class LocksOf(Protocol):
    """The part of the Application the participant needs (to fill TxnPrepare.locks)."""

    def locks_of(self, ops: bytes) -> tuple[int, ...]: ...


# -- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrepareReceived:
    request: PrepareRequest


@dataclass(frozen=True, slots=True)
class DecisionReceived:
    """A DecisionNotice or an OutcomeAnswer: either way, finish the txn."""

    message: DecisionNotice | OutcomeAnswer




@dataclass(frozen=True, slots=True)
class BecameLeader:
    prepared: tuple[TxnPrepare, ...]  # TxnState.prepared(view) after applying the whole log



ParticipantEvent = (
    PrepareReceived | DecisionReceived | LogApplied | Tick | BecameLeader | LostLeadership
)


class Participant:
    def __init__(self, group: int, app: LocksOf, config: ParticipantConfig | None = None) -> None:
        self.group = group
        self.app = app
        self.config = config or ParticipantConfig()
        self.leader = False
        self._waiting: dict[TxnId, tuple[int, Backoff]] = {}  # prepared: coordinator, timer
        self._ack_to: OrderedDict[TxnId, int] = OrderedDict()  # finish proposed: ack whom
        self._handlers: dict[type, Callable[[object], list[Action]]] = {
            PrepareReceived: self._prepare,  # type: ignore[dict-item]
            DecisionReceived: self._decision,  # type: ignore[dict-item]
            LogApplied: self._applied,  # type: ignore[dict-item]
            Tick: self._tick,  # type: ignore[dict-item]
            BecameLeader: self._became_leader,  # type: ignore[dict-item]
            LostLeadership: self._lost_leadership,  # type: ignore[dict-item]
        }
        self._on_result: dict[type, Callable[[object], list[Action]]] = {
            Voted: self._voted,  # type: ignore[dict-item]
            Finished: self._finished,  # type: ignore[dict-item]
        }

    def handle(self, event: ParticipantEvent) -> list[Action]:
        return self._handlers[type(event)](event)

    def waiting(self) -> dict[TxnId, int]:
        """Prepared txns awaiting a decision -> their coordinator group (tests, metrics)."""
        return {t: g for t, (g, _) in self._waiting.items()}

    def _prepare(self, e: PrepareReceived) -> list[Action]:
        if not self.leader:
            return []
        r = e.request
        locks = self.app.locks_of(r.ops)
        return [Propose(TxnPrepare(r.txn_id, r.coordinator_group, r.participants, locks, r.ops))]

    def _decision(self, e: DecisionReceived) -> list[Action]:
        if not self.leader:
            return []
        m = e.message
        self._ack_to[m.txn_id] = m.coordinator_group
        self._ack_to.move_to_end(m.txn_id)
        if len(self._ack_to) > self.config.max_pending_acks:
            self._ack_to.popitem(last=False)  # the coordinator resends its notice
        return [Propose(TxnFinish(m.txn_id, m.commit))]

    def _applied(self, e: LogApplied) -> list[Action]:
        handler = self._on_result.get(type(e.result))
        return [] if handler is None else handler(e.result)  # None: a coordinator's result

    def _voted(self, r: Voted) -> list[Action]:
        if not self.leader:
            return []
        if r.holding and r.txn_id not in self._waiting:
            self._waiting[r.txn_id] = (r.coordinator_group, self._timer())
        vote = PrepareVote(r.txn_id, self.group, r.yes, r.reason)
        return [Send(r.coordinator_group, vote)]

    def _finished(self, r: Finished) -> list[Action]:
        self._waiting.pop(r.txn_id, None)
        to = self._ack_to.pop(r.txn_id, NO_GROUP)
        to = r.coordinator_group if r.coordinator_group != NO_GROUP else to
        if not self.leader or to == NO_GROUP:
            return []
        return [Send(to, FinishAck(r.txn_id, self.group))]

    def _tick(self, _e: Tick) -> list[Action]:
        return [
            Send(coordinator, OutcomeQuery(txn_id, self.group))
            for txn_id, (coordinator, timer) in self._waiting.items()
            if timer.tick()
        ]

    def _became_leader(self, e: BecameLeader) -> list[Action]:
        self._lost_leadership(LostLeadership())
        self.leader = True
        for p in e.prepared:
            self._waiting[p.txn_id] = (p.coordinator_group, self._timer())
        return []

    def _lost_leadership(self, _e: LostLeadership) -> list[Action]:
        self.leader = False
        self._waiting.clear()
        self._ack_to.clear()
        return []

    def _timer(self) -> Backoff:
        return Backoff(self.config.retry, first_due=self.config.outcome_timeout_ticks)
