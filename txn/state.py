"""The transaction part of a group's replicated state machine.

Rules:
- `TxnState.apply(record, view, batch)` is pure and deterministic: it reads only `view`, writes
  only `batch`, and every decision (a lock conflict, a failed check, which decision wins) is made
  here at apply time, so every replica of the group reaches the same state and the same answer.
  It returns an `Applied` result that the leader's coordinator/participant cores consume.
- Tables (under `config.prefix`; the application must keep its keys elsewhere):
    lock/<ino>   -> txn id holding the lock (taken by TxnPrepare, released by TxnFinish)
    prep/<txn>   -> the TxnPrepare kept until its TxnFinish
    dec/<txn>    -> a coordinator's decision until TxnForget (ops stripped)
    done/<txn>   -> the remembered Outcome of a finished txn, bounded by count (FIFO eviction
                    through doneq/<seq>), so a retried request gets its answer, not a rerun
- Locks are taken in inode-id order, all or none: a prepare that meets a lock held by another
  txn, or whose ops fail the application's check, is recorded as a NO vote (and remembered as
  aborted, so a duplicated prepare gets the same vote). No one waits for a lock, so there is no
  deadlock; the client retries a CONFLICT abort with a new attempt id.
- Local and coordinator ops are lock-tested too: a prepared txn's inodes are off limits to
  everyone else until it finishes. The application's `check` may read only state covered by
  `locks_of(ops)`, and every change to locked state must go through this module.
- Idempotent: a record for a txn already finished (or already prepared/decided) changes nothing
  and reports the remembered answer. Records that contradict the state (a commit Finish for a
  txn that voted no) are protocol bugs: TxnStateError.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import cbor2

from txn.codec import from_cbor, to_cbor
from txn.ids import TxnId
from txn.kv import KvBatch, KvView
from txn.records import (
    COMMITTED,
    CONFLICT,
    Outcome,
    TxnDecision,
    TxnFinish,
    TxnForget,
    TxnLocal,
    TxnPrepare,
    TxnRecord,
)

NO_GROUP = -1
_T = TypeVar("_T")


class TxnStateError(Exception):
    """A txn record that contradicts the state: a protocol bug, or corrupt stored values."""


class Application(Protocol):
    """What the txn layer needs from the state machine it makes transactional."""

    def locks_of(self, ops: bytes) -> tuple[int, ...]:
        """The inode ids `ops` reads or writes, sorted ascending."""
        ...

    def check(self, ops: bytes, view: KvView) -> str | None:
        """None if `ops` apply to the current state, else the abort reason (e.g. "EEXIST")."""
        ...

    def apply(self, ops: bytes, view: KvView, batch: KvBatch) -> None:
        """Apply checked ops. Must not fail after a successful check on the same state."""
        ...


@dataclass(frozen=True, slots=True)
class TxnStateConfig:
    prefix: bytes = b"txn/"
    max_outcomes: int = 100_000  # remembered outcomes: must cover a client's retry window
    max_scan: int = 100_000  # prepared txns or decisions read at once on becoming leader


# Results of applying a record, for the leader's cores (txn/coordinator.py, txn/participant.py).
@dataclass(frozen=True, slots=True)
class LocalApplied:
    txn_id: TxnId
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Voted:
    txn_id: TxnId
    coordinator_group: int
    yes: bool
    reason: str = ""
    holding: bool = False  # this group holds the prepared record and its locks


@dataclass(frozen=True, slots=True)
class Decided:
    txn_id: TxnId
    outcome: Outcome
    participants: tuple[int, ...]  # () once forgotten: nothing left to finish


@dataclass(frozen=True, slots=True)
class Finished:
    txn_id: TxnId
    commit: bool
    coordinator_group: int  # NO_GROUP if this group never prepared the txn


@dataclass(frozen=True, slots=True)
class Forgotten:
    txn_id: TxnId


Applied = LocalApplied | Voted | Decided | Finished | Forgotten


class TxnState:
    def __init__(self, app: Application, config: TxnStateConfig | None = None) -> None:
        self.app = app
        self.config = config or TxnStateConfig()
        p = self.config.prefix
        self._lock, self._prep, self._dec = p + b"lock/", p + b"prep/", p + b"dec/"
        self._done, self._doneq = p + b"done/", p + b"doneq/"
        self._head, self._tail = p + b"meta/done-head", p + b"meta/done-tail"
        self._handlers: dict[type, Callable[[object, KvView, KvBatch], Applied]] = {
            TxnLocal: self._local,  # type: ignore[dict-item]
            TxnPrepare: self._prepare,  # type: ignore[dict-item]
            TxnDecision: self._decision,  # type: ignore[dict-item]
            TxnFinish: self._finish,  # type: ignore[dict-item]
            TxnForget: self._forget,  # type: ignore[dict-item]
        }

    def apply(self, record: TxnRecord, view: KvView, batch: KvBatch) -> Applied:
        handler = self._handlers.get(type(record))
        assert handler is not None, f"not a txn record: {type(record).__name__}"
        return handler(record, view, batch)

    # -- queries (for the driver, recovery and tests) ---------------------------------------

    def outcome(self, view: KvView, txn_id: TxnId) -> Outcome | None:
        """The decided outcome of `txn_id` in this group, if any (decision or remembered)."""
        dec = self._decision_of(view, txn_id)
        if dec is not None:
            return Outcome(dec.commit, dec.reason)
        return self._remembered(view, txn_id)

    def prepared(self, view: KvView) -> list[TxnPrepare]:
        """Prepared, unfinished txns: a new leader's participant resumes them."""
        return [_decode(v, TxnPrepare) for _, v in view.scan(self._prep, self.config.max_scan)]

    def decisions(self, view: KvView) -> list[Decided]:
        """Decided, unforgotten txns: a new leader's coordinator resumes them."""
        out = []
        for _, v in view.scan(self._dec, self.config.max_scan):
            d = _decode(v, TxnDecision)
            out.append(Decided(d.txn_id, Outcome(d.commit, d.reason), d.participants))
        return out

    def locks(self, view: KvView) -> dict[int, TxnId]:
        items = view.scan(self._lock, self.config.max_scan)
        return {int.from_bytes(k[len(self._lock):], "big"): v for k, v in items}

    # -- record handlers --------------------------------------------------------------------

    def _local(self, r: TxnLocal, view: KvView, batch: KvBatch) -> Applied:
        known = self._remembered(view, r.txn_id)
        if known is not None:
            return LocalApplied(r.txn_id, known)
        outcome = self._check_and_apply(r.ops, view, batch)
        self._remember(view, batch, r.txn_id, outcome)
        return LocalApplied(r.txn_id, outcome)

    def _prepare(self, r: TxnPrepare, view: KvView, batch: KvBatch) -> Applied:
        if view.get(self._prep + r.txn_id) is not None:
            return Voted(r.txn_id, r.coordinator_group, True, holding=True)
        known = self._remembered(view, r.txn_id)
        if known is not None:
            return Voted(r.txn_id, r.coordinator_group, known.commit, known.reason)
        reason = self._refusal(r.ops, view)
        if reason is not None:
            self._remember(view, batch, r.txn_id, Outcome(False, reason))
            return Voted(r.txn_id, r.coordinator_group, False, reason)
        for ino in self.app.locks_of(r.ops):
            batch.put(self._lock_key(ino), r.txn_id)
        batch.put(self._prep + r.txn_id, to_cbor(r))
        return Voted(r.txn_id, r.coordinator_group, True, holding=True)

    def _decision(self, r: TxnDecision, view: KvView, batch: KvBatch) -> Applied:
        known = self.outcome(view, r.txn_id)
        if known is not None:
            dec = self._decision_of(view, r.txn_id)
            return Decided(r.txn_id, known, dec.participants if dec else ())
        outcome = Outcome(False, r.reason)
        if r.commit:
            outcome = self._check_and_apply(r.ops, view, batch)
        if not r.participants:  # nothing to finish: remember the outcome straight away
            self._remember(view, batch, r.txn_id, outcome)
            return Decided(r.txn_id, outcome, ())
        stored = TxnDecision(r.txn_id, outcome.commit, r.participants, b"", outcome.reason)
        batch.put(self._dec + r.txn_id, to_cbor(stored))
        return Decided(r.txn_id, outcome, r.participants)

    def _finish(self, r: TxnFinish, view: KvView, batch: KvBatch) -> Applied:
        raw = view.get(self._prep + r.txn_id)
        if raw is None:
            return self._finish_unprepared(r, view, batch)
        prep = _decode(raw, TxnPrepare)
        if r.commit:
            self.app.apply(prep.ops, view, batch)
        for ino in self.app.locks_of(prep.ops):
            assert view.get(self._lock_key(ino)) == r.txn_id, "lock lost while prepared"
            batch.delete(self._lock_key(ino))
        batch.delete(self._prep + r.txn_id)
        self._remember(view, batch, r.txn_id, COMMITTED if r.commit else Outcome(False))
        return Finished(r.txn_id, r.commit, prep.coordinator_group)

    def _finish_unprepared(self, r: TxnFinish, view: KvView, batch: KvBatch) -> Applied:
        """Nothing is held here: an abort is a no-op, a commit must already be remembered."""
        known = self._remembered(view, r.txn_id)
        if known is None and not r.commit:
            # An abort that overtook (or replaced) its prepare: remember it, so a late
            # duplicate prepare votes no instead of taking locks for a dead txn.
            self._remember(view, batch, r.txn_id, Outcome(False))
        elif r.commit and not (known == COMMITTED or (known is None and self._evicted(view))):
            # A commit needs this group's yes vote, so it prepared and finished it already
            # (unless its outcome was evicted since: a duplicate from far back).
            raise TxnStateError(f"commit of {r.txn_id.hex()} it never prepared ({known})")
        return Finished(r.txn_id, r.commit, NO_GROUP)

    def _forget(self, r: TxnForget, view: KvView, batch: KvBatch) -> Applied:
        dec = self._decision_of(view, r.txn_id)
        if dec is not None:
            batch.delete(self._dec + r.txn_id)
            self._remember(view, batch, r.txn_id, Outcome(dec.commit, dec.reason))
        return Forgotten(r.txn_id)

    # -- helpers ----------------------------------------------------------------------------

    def _refusal(self, ops: bytes, view: KvView) -> str | None:
        """Why `ops` cannot go ahead now: a held lock (checked in inode-id order) or the
        application's check; None if they can."""
        locks = self.app.locks_of(ops)
        assert list(locks) == sorted(set(locks)), f"locks must be sorted and unique: {locks}"
        for ino in locks:
            if view.get(self._lock_key(ino)) is not None:
                return CONFLICT
        return self.app.check(ops, view)

    def _check_and_apply(self, ops: bytes, view: KvView, batch: KvBatch) -> Outcome:
        if not ops:  # b"" is "no effects here" (a coordinator with nothing of its own)
            return COMMITTED
        reason = self._refusal(ops, view)
        if reason is not None:
            return Outcome(False, reason)
        self.app.apply(ops, view, batch)
        return COMMITTED

    def _lock_key(self, ino: int) -> bytes:
        return self._lock + ino.to_bytes(8, "big")

    def _decision_of(self, view: KvView, txn_id: TxnId) -> TxnDecision | None:
        raw = view.get(self._dec + txn_id)
        return None if raw is None else _decode(raw, TxnDecision)

    def _remembered(self, view: KvView, txn_id: TxnId) -> Outcome | None:
        raw = view.get(self._done + txn_id)
        if raw is None:
            return None
        commit, reason, _seq = cbor2.loads(raw)
        return Outcome(commit, reason)

    def _evicted(self, view: KvView) -> bool:
        return _u64(view.get(self._head)) > 0

    def _remember(self, view: KvView, batch: KvBatch, txn_id: TxnId, outcome: Outcome) -> None:
        """Add to the bounded outcome table, evicting the oldest entry when it is full."""
        head, tail = _u64(view.get(self._head)), _u64(view.get(self._tail))
        batch.put(self._done + txn_id, cbor2.dumps([outcome.commit, outcome.reason, tail]))
        batch.put(self._doneq + tail.to_bytes(8, "big"), txn_id)
        tail += 1
        if tail - head > self.config.max_outcomes:
            old_key = self._doneq + head.to_bytes(8, "big")
            old = view.get(old_key)
            assert old is not None, "outcome queue corrupt"
            batch.delete(self._done + old)
            batch.delete(old_key)
            batch.put(self._head, (head + 1).to_bytes(8, "big"))
        batch.put(self._tail, tail.to_bytes(8, "big"))


def _u64(raw: bytes | None) -> int:
    return 0 if raw is None else int.from_bytes(raw, "big")


def _decode(raw: bytes, cls: type[_T]) -> _T:
    value = from_cbor(raw)
    if not isinstance(value, cls):
        raise TxnStateError(f"stored {type(value).__name__}, expected {cls.__name__}")
    return value
