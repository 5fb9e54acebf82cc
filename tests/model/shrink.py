"""Shrinking a failing sequence.

- `ddmin`: delta debugging (Zeller and Hildebrandt, "Simplifying and Isolating
  Failure-Inducing Input", 2002) over the op list, for the kernel path. A round tests its
  candidates (chunks and complements, at several granularities) through a `fails_batch`
  callable that runs them all at once, i.e. in one VM boot, so the cost is bounded in rounds
  (boots), not in candidates. The result is 1-minimal unless the round limit cuts it short:
  removing any single op makes the difference go away.
- `op_lists`: the hypothesis strategy of the libnfs path; there hypothesis's own shrinker finds
  the shortest sequence (fewer ops, and each choice towards its list's first entry).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from model.ops import Op, Picker, Result, gen_op


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


def _candidates(ops: list[Op], n: int, round_ops: int) -> tuple[list[list[Op]], int]:
    """One round's candidates: the n chunks, then the complements at granularity n, 2n, 4n
    ... (up to one op per chunk) while they fit in `round_ops` ops; and the finest granularity
    reached."""
    out = list(_split(ops, n)) if n > 2 else []
    g, finest, total = n, 0, 0  # the complements at n are always in
    while True:
        chunks = _split(ops, g)
        comps = [[op for j, c in enumerate(chunks) if j != i for op in c]
                 for i in range(len(chunks))]
        cost = sum(map(len, comps))
        if total and total + cost > round_ops:
            break
        out += comps
        total, finest = total + cost, len(chunks)
        if len(chunks) >= len(ops):
            break
        g = min(len(ops), 2 * g)
    return out, finest


def ddmin(ops: Sequence[Op], fails_batch: Callable[[list[list[Op]]], list[bool]],
          max_rounds: int = 12, round_ops: int = 3000,
          hints: Sequence[list[Op]] = ()) -> Shrunk:
    """The shortest failing sub-sequence found; `ops` itself must fail.

    Unlike textbook ddmin, which tries one granularity at a time, a round tries several
    (_candidates), since a round costs a VM boot and a candidate only guest time: a round
    that finds nothing at coarse grain may still remove single ops. The result is 1-minimal
    when a round that removed each single op in turn found nothing failing. `hints` are
    more candidates for the first round (see prefix_and_hints)."""
    ops = list(ops)
    n, rounds, tried = 2, 0, 0
    while len(ops) >= 2:
        if rounds >= max_rounds:
            return Shrunk(ops, rounds, tried, False)
        candidates, finest = _candidates(ops, n, round_ops)
        if rounds == 0:
            candidates = [list(h) for h in hints if 0 < len(h) < len(ops)] + candidates
        verdicts = fails_batch(candidates)
        rounds, tried = rounds + 1, tried + len(candidates)
        failing = [c for c, bad in zip(candidates, verdicts, strict=True) if bad]
        if failing:
            best = min(failing, key=len)
            n = max(2, min(n, len(best)))
            ops = best
        elif finest >= len(ops):
            break
        else:
            n = min(len(ops), 2 * finest)
    return Shrunk(ops, rounds, tried, True)


def prefix_and_hints(ops: Sequence[Op], diff: str, local: Sequence[Result]
                     ) -> tuple[list[Op], list[list[Op]]]:
    """Free steps before ddmin. A difference in op i's result depends only on ops 0..i, so
    the ops after it go without a test. The hint: the sequence without the ops that failed
    (on both sides, as the first difference is later); a failed op rarely changes anything,
    so this candidate often halves the sequence in the first round."""
    m = re.match(r"op (\d+) ", diff)
    if m:
        ops = list(ops[:int(m.group(1)) + 1])
    kept = [op for i, op in enumerate(ops) if local[i][0] == "ok" or i == len(ops) - 1]
    return list(ops), [kept]


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
