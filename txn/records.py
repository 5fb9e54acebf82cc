"""Transaction log records: what each step of a transaction writes into a group's Raft log.

Rules:
- Every step of a transaction is one of these records, proposed to the group whose state it
  changes; nothing about a transaction lives only in memory (DESIGN.md, "Transactions").
- `ops` are opaque bytes: the application's own encoding of its records for this group (for the
  file system, an encoded `Multi`). The txn layer never interprets them; it asks the
  `Application` (txn/state.py) for their locks, checks them and applies them.
- Flow of a transaction whose effects span groups (two-phase commit, presumed abort):
    participant group  TxnPrepare  (locks taken, ops kept, vote decided at apply time)
    coordinator group  TxnDecision (THE commit point; applies the coordinator's own ops)
    participant group  TxnFinish   (applies or drops the kept ops, releases the locks)
    coordinator group  TxnForget   (all participants acknowledged: keep only the outcome)
  When every effect lives in one group, one TxnLocal commits everything.
- Applying any of these twice, or out of its happy order, is safe and decided by the state
  (txn/state.py): duplicates are normal (retries, leader changes), so every record is idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass

from txn.ids import TxnId

# Abort reasons the txn layer itself produces; applications add their own (e.g. "EEXIST").
CONFLICT = "conflict"  # a lock was held by another transaction: retry with a new attempt
PRESUMED_ABORT = "presumed-abort"  # the coordinator had no commit record when asked
TIMEOUT = "timeout"  # a participant did not vote in time


@dataclass(frozen=True, slots=True)
class Outcome:
    """The final answer of a transaction. `reason` says why it aborted ("" when committed)."""

    commit: bool
    reason: str = ""


COMMITTED = Outcome(True)


@dataclass(frozen=True, slots=True)
class TxnLocal:
    """Every effect is in this group: check, lock-test and apply `ops` in one record."""

    txn_id: TxnId
    ops: bytes


@dataclass(frozen=True, slots=True)
class TxnPrepare:
    """A participant's vote: if its locks are free and `ops` check, hold the locks and keep ops."""

    txn_id: TxnId
    coordinator_group: int
    participants: tuple[int, ...]
    locks: tuple[int, ...]  # sorted inode ids (Application.locks_of(ops)), for the trace
    ops: bytes


@dataclass(frozen=True, slots=True)
class TxnDecision:
    """The commit point, in the coordinator's log. The first decision applied for a txn wins;
    a commit whose own `ops` conflict or fail their check is recorded as an abort."""

    txn_id: TxnId
    commit: bool
    participants: tuple[int, ...]
    ops: bytes = b""  # the coordinator group's own effects (commit only)
    reason: str = ""  # why, when aborting


@dataclass(frozen=True, slots=True)
class TxnFinish:
    """A participant learned the decision: apply or drop the prepared ops, release the locks."""

    txn_id: TxnId
    commit: bool


@dataclass(frozen=True, slots=True)
class TxnForget:
    """The coordinator's participants all finished: drop the decision, keep the outcome."""

    txn_id: TxnId


TxnRecord = TxnLocal | TxnPrepare | TxnDecision | TxnFinish | TxnForget
