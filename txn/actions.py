"""What the coordinator and participant cores ask their driver to do.

Rules:
- The driver performs actions in order. `Propose` goes to this node's own Raft group (the
  driver feeds the applied result back as a `LogApplied` event); `Send` goes to the current
  leader of `group` (best effort: the cores retry on ticks); `Reply` answers the client that
  started `txn_id` on this node.
- A Reply with outcome None means "not decided here; retry the same request" (leadership lost,
  too many txns in flight): a retry with the same txn id is applied at most once.
"""

from __future__ import annotations

from dataclasses import dataclass

from txn.ids import TxnId
from txn.messages import TxnMessage
from txn.records import Outcome, TxnRecord
from txn.state import Applied


@dataclass(frozen=True, slots=True)
class Propose:
    record: TxnRecord


@dataclass(frozen=True, slots=True)
class Send:
    group: int
    message: TxnMessage


@dataclass(frozen=True, slots=True)
class Reply:
    txn_id: TxnId
    outcome: Outcome | None


Action = Propose | Send | Reply


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Tick-driven retries: resend after `retry_ticks`, doubling up to `max_backoff_ticks`."""

    retry_ticks: int = 4
    max_backoff_ticks: int = 64


class Backoff:
    """When the next retry is due, counted in ticks."""

    __slots__ = ("_config", "_interval", "age", "due")

    def __init__(self, config: RetryConfig, first_due: int | None = None) -> None:
        self._config = config
        self._interval = config.retry_ticks
        self.age = 0
        self.due = config.retry_ticks if first_due is None else first_due

    def tick(self) -> bool:
        """Advance one tick; True when a retry is due (and schedule the next one)."""
        self.age += 1
        if self.age < self.due:
            return False
        self._interval = min(self._interval * 2, self._config.max_backoff_ticks)
        self.due = self.age + self._interval
        return True

    def reset(self) -> None:
        self._interval = self._config.retry_ticks
        self.due = self.age + self._interval


# Events both cores take, in the same form.
@dataclass(frozen=True, slots=True)
class LogApplied:
    """The result of applying a txn record in this group's log (TxnState.apply)."""

    result: Applied


@dataclass(frozen=True, slots=True)
class Tick:
    pass


@dataclass(frozen=True, slots=True)
class LostLeadership:
    pass
