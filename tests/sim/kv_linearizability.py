"""A linearizability checker for a key-value register history (Wing & Gong's search with
Lowe's memoization, as in Porcupine), partitioned per key: a history of independent registers is
linearizable iff each key's sub-history is (locality, Herlihy & Wing 1990).

An operation whose outcome is unknown (a put that timed out) has return time infinity: it may
take effect at any point after its call, including never observably (placed last).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Op:
    client: int
    kind: str  # "put" | "get"
    key: str
    value: str | None  # put: the value written; get: the value read (None: absent)
    call: float
    ret: float  # math.inf: outcome unknown


def _step(state: str | None, op: Op) -> tuple[bool, str | None]:
    if op.kind == "put":
        return True, op.value
    return op.value == state, state


def check_key(ops: list[Op], max_states: int = 200_000) -> bool:
    """Whether one key's history is linearizable (starting from the key being absent)."""
    ops = sorted(ops, key=lambda o: o.call)
    n = len(ops)
    seen: set[tuple[int, str | None]] = set()
    stack: list[tuple[int, str | None]] = [(0, None)]
    full = (1 << n) - 1
    while stack:
        done, state = stack.pop()
        if done == full:
            return True
        if (done, state) in seen:
            continue
        seen.add((done, state))
        assert len(seen) <= max_states, "linearizability search too large"
        # Candidates: pending ops that were called before every pending op returned.
        first_ret = min(ops[i].ret for i in range(n) if not done >> i & 1)
        for i in range(n):
            if done >> i & 1 or ops[i].call > first_ret:
                continue
            ok, new_state = _step(state, ops[i])
            if ok:
                stack.append((done | 1 << i, new_state))
    return False


def check_history(history: list[Op]) -> str | None:
    """None if linearizable, else the key whose history is not."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in history:
        by_key[op.key].append(op)
    for key, ops in sorted(by_key.items()):
        if not check_key(ops):
            return key
    return None


UNKNOWN = math.inf
