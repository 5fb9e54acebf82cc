"""Seeded simulation of txns over 3-5 groups (DESIGN.md "Transactions"; tests/sim/txn_sim.py).

OBJCACHE_SIM_SEEDS=N runs seeds 0..N-1 (default 200); OBJCACHE_SIM_SEED=N replays one seed.
A failure names its seed.
"""

from __future__ import annotations

import os

import pytest
from txn_sim import Params, run


def _seeds() -> list[int]:
    one = os.environ.get("OBJCACHE_SIM_SEED")
    if one is not None:
        return [int(one)]
    return list(range(int(os.environ.get("OBJCACHE_SIM_SEEDS", "200"))))


def _run_seed(seed: int, params: Params | None = None) -> None:
    try:
        run(seed, params)
    except Exception as e:
        raise AssertionError(
            f"txn simulation seed {seed} failed: {e!r}; replay: OBJCACHE_SIM_SEED={seed}"
        ) from e


def test_txn_simulation() -> None:
    for seed in _seeds():
        _run_seed(seed)


@pytest.mark.parametrize("seed", [0, 1])
def test_txn_simulation_is_deterministic(seed: int) -> None:
    a, b = run(seed), run(seed)
    assert [c.results for c in a.clients] == [c.results for c in b.clients]
    assert a.step == b.step
