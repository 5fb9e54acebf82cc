"""Messages between the coordinator and the participants (sent to a group's leader).

Rules:
- Every message names the group that sent it, so the answer can go to that group's current
  leader: a leader change in either group never strands a transaction.
- Messages may be lost, duplicated or reordered; every handler is idempotent because each one
  ends in a log record whose application is idempotent (txn/state.py).
- These are plain frozen dataclasses of ints, bools, str and bytes: the server registers them
  with its RPC codec (server/rpc/codec.register_type); txn/codec.py gives a CBOR form too.
"""

from __future__ import annotations

from dataclasses import dataclass

from txn.ids import TxnId


@dataclass(frozen=True, slots=True)
class PrepareRequest:
    """Coordinator -> participant: log a TxnPrepare of these ops and vote."""

    txn_id: TxnId
    coordinator_group: int
    participants: tuple[int, ...]
    ops: bytes


@dataclass(frozen=True, slots=True)
class PrepareVote:
    """Participant -> coordinator, after its TxnPrepare was applied."""

    txn_id: TxnId
    group: int
    yes: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DecisionNotice:
    """Coordinator -> participant, after the TxnDecision was applied: finish."""

    txn_id: TxnId
    coordinator_group: int
    commit: bool


@dataclass(frozen=True, slots=True)
class FinishAck:
    """Participant -> coordinator, after its TxnFinish was applied."""

    txn_id: TxnId
    group: int


@dataclass(frozen=True, slots=True)
class OutcomeQuery:
    """A prepared participant that waited too long asks the coordinator (presumed abort)."""

    txn_id: TxnId
    group: int


@dataclass(frozen=True, slots=True)
class OutcomeAnswer:
    """Coordinator -> participant, once a decision is in the coordinator's log."""

    txn_id: TxnId
    coordinator_group: int
    commit: bool


TxnMessage = (
    PrepareRequest | PrepareVote | DecisionNotice | FinishAck | OutcomeQuery | OutcomeAnswer
)
ALL_MESSAGE_TYPES: tuple[type, ...] = (
    PrepareRequest, PrepareVote, DecisionNotice, FinishAck, OutcomeQuery, OutcomeAnswer,
)
