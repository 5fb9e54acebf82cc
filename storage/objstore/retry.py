"""The retry loop of the S3 adapter, kept apart from boto3 so that it can be tested alone.

Rules:
- Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And
  Jitter"): before attempt n (n >= 1) sleep uniform(0, min(cap, base * 2**(n-1))).
- At most `max_attempts` attempts; then StoreUnavailable naming the op, the key, the attempts
  and the last error, chained from the last exception.
- A failure that is not retryable (404, 412, 403, a malformed request) ends the loop at once
  with its typed StoreError. An exception nobody classified is a programmer error: re-raised.
- `observe` sees every attempt, the retried ones included.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import trio

from storage.objstore.base import Observe, StoreError, StoreUnavailable

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 8
    base_s: float = 0.05
    cap_s: float = 5.0

    def __post_init__(self) -> None:
        assert self.max_attempts >= 1 and 0 <= self.base_s <= self.cap_s, self

    def backoff_s(self, attempt: int, rng: random.Random) -> float:
        """The sleep before attempt number `attempt` (1 = the first retry)."""
        assert attempt >= 1
        return rng.uniform(0.0, min(self.cap_s, self.base_s * 2 ** min(attempt - 1, 30)))


@dataclass(frozen=True, slots=True)
class Attempt(Generic[T]):
    """What one attempt did: its value or its exception, bytes moved, seconds taken."""

    value: T | None
    error: Exception | None
    nbytes: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Failure:
    """A classified exception: the observe kind, whether to retry, and the error to raise."""

    kind: str
    retryable: bool
    error: StoreError


async def retrying(
    op: str,
    key: str,
    attempt: Callable[[], Awaitable[Attempt[T]]],
    *,
    policy: RetryPolicy,
    rng: random.Random,
    classify: Callable[[Exception], Failure | None],
    observe: Observe | None = None,
) -> T:
    last: tuple[Failure, Exception] | None = None
    for n in range(policy.max_attempts):
        if n:
            await trio.sleep(policy.backoff_s(n, rng))
        result = await attempt()
        if result.error is None:
            if observe is not None:
                observe(op, result.seconds, result.nbytes, None)
            return result.value  # type: ignore[return-value]
        failure = classify(result.error)
        if observe is not None:
            observe(op, result.seconds, 0, failure.kind if failure else "invalid")
        if failure is None:
            raise result.error
        if not failure.retryable:
            raise failure.error from result.error
        last = (failure, result.error)
    assert last is not None
    raise StoreUnavailable(
        f"{op} {key!r}: gave up after {policy.max_attempts} attempts: {last[0].error}"
    ) from last[1]
