"""Seeded simulation of txns over 3-5 groups (DESIGN.md "Transactions"; tests/sim/txn_sim.py).

OBJCACHE_SIM_SEEDS=N runs seeds 0..N-1 (default 200); OBJCACHE_SIM_SEED=N replays one seed.
A failure names its seed.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
from txn_sim import Params, World, run

# The protocol steps a crash must hit somewhere in a full run (the list: coordinator
# before and after its decision record, participants before and after prepare and finish).
CRASH_POINTS = [
    f"crash {when} {record}"
    for when in ("before", "after")
    for record in ("TxnLocal", "TxnPrepare", "TxnDecision", "TxnFinish", "TxnForget")
]


def _seeds() -> list[int]:
    one = os.environ.get("OBJCACHE_SIM_SEED")
    if one is not None:
        return [int(one)]
    return list(range(int(os.environ.get("OBJCACHE_SIM_SEEDS", "200"))))


def _run_seed(seed: int, params: Params | None = None) -> World:
    try:
        return run(seed, params)
    except Exception as e:
        raise AssertionError(
            f"txn simulation seed {seed} failed: {e!r}; replay: OBJCACHE_SIM_SEED={seed}"
        ) from e


def test_txn_simulation() -> None:
    stats: Counter[str] = Counter()
    seeds = _seeds()
    for seed in seeds:
        stats.update(_run_seed(seed).stats)
    if len(seeds) >= 50:  # enough seeds that every fault should have been injected
        missing = [p for p in CRASH_POINTS if not stats[p]]
        assert not missing, f"crash points never hit: {missing}"
        assert stats["reply presumed-abort"] and stats["reply conflict"], stats


@pytest.mark.parametrize("seed", [0, 1])
def test_txn_simulation_is_deterministic(seed: int) -> None:
    a, b = run(seed), run(seed)
    assert [c.results for c in a.clients] == [c.results for c in b.clients]
    assert a.step == b.step and a.stats == b.stats
