"""Shrinking a failing sequence.

- `ddmin`: delta debugging (Zeller and Hildebrandt, "Simplifying and Isolating
  Failure-Inducing Input", 2002) over the op list, for the kernel path. A round tests every
  candidate of one granularity (each chunk, each complement) through a `fails_batch` callable
  that runs them all at once, i.e. in one VM boot, so the cost is bounded in rounds (boots),
  not in candidates. The result is 1-minimal unless the round limit cuts it short: removing
  any single op makes the difference go away.
- `op_lists`: the hypothesis strategy of the libnfs path; there hypothesis's own shrinker finds
  the shortest sequence (fewer ops, and each choice towards its list's first entry).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from model.ops import Op, Picker, gen_op


@dataclass
class Shrunk:
    ops: list[Op]
    rounds: int  # calls of fails_batch (VM boots on the kernel path)
    candidates: int  # sequences tried
    minimal: bool  # 1-minimal (False: stopped by max_rounds)


def _split(ops: list[Op], n: int) -> list[list[Op]]:
    size, extra = divmod(len(ops), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(ops[start:end])
        start = end
    return [c for c in out if c]


def ddmin(ops: Sequence[Op], fails_batch: Callable[[list[list[Op]]], list[bool]],
          max_rounds: int = 12) -> Shrunk:
    """The shortest failing sub-sequence ddmin finds; `ops` itself must fail."""
    ops = list(ops)
    n, rounds, tried = 2, 0, 0
    while len(ops) >= 2:
        if rounds >= max_rounds:
            return Shrunk(ops, rounds, tried, False)
        chunks = _split(ops, n)
        complements = [[op for j, c in enumerate(chunks) if j != i for op in c]
                       for i in range(len(chunks))] if len(chunks) > 2 else []
        candidates = chunks + complements
        verdicts = fails_batch(candidates)
        rounds, tried = rounds + 1, tried + len(candidates)
        failing = [c for c, bad in zip(candidates, verdicts, strict=True) if bad]
        if failing:
            best = min(failing, key=len)
            n = 2 if best in chunks else max(n - 1, 2)
            ops = best
        elif n >= len(ops):
            break
        else:
            n = min(len(ops), 2 * n)
    return Shrunk(ops, rounds, tried, True)


BURST_OPS = 8


def op_lists(clients: int = 1, symlinks: bool = True, max_ops: int = 60):
    """Hypothesis strategy: lists of ops from ops.gen_op, drawn as a list of short bursts and
    flattened. A flat st.lists averages about 6 elements whatever its max_size; bursts give
    sequences several times longer, and still shrink well (hypothesis deletes whole bursts and
    ops inside one)."""
    from hypothesis import strategies as st

    @st.composite
    def one(draw) -> Op:
        return gen_op(Picker(lambda seq: draw(st.sampled_from(seq))), clients, symlinks)

    bursts = st.lists(st.lists(one(), min_size=1, max_size=BURST_OPS), min_size=1,
                      max_size=max(1, max_ops // BURST_OPS * 2))
    return bursts.map(lambda bs: [op for b in bs for op in b][:max_ops])
