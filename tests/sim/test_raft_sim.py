"""Seeded simulation of 3- and 5-member Raft groups (TESTING.md tier 3).

OBJCACHE_SIM_SEEDS=N runs seeds 0..N-1 (default 500; even seeds 3 members, odd seeds 5);
OBJCACHE_SIM_SEED=N replays exactly one seed. A failure names its seed.
"""

from __future__ import annotations

import os

import hypothesis  # noqa: F401 - makes trio's scheduler deterministic (its hypothesis plugin)
import pytest
from kv_linearizability import check_history
from raft_kv_sim import Params, run


def _seeds() -> list[int]:
    one = os.environ.get("OBJCACHE_SIM_SEED")
    if one is not None:
        return [int(one)]
    return list(range(int(os.environ.get("OBJCACHE_SIM_SEEDS", "500"))))


def _run_seed(seed: int, params: Params | None = None) -> None:
    try:
        world = run(seed, params)
    except Exception as e:
        raise AssertionError(
            f"simulation seed {seed} failed: {e!r}; replay: OBJCACHE_SIM_SEED={seed}"
        ) from e
    bad_key = check_history(world.history)
    assert bad_key is None, (
        f"seed {seed}: history of key {bad_key!r} is not linearizable; "
        f"replay: OBJCACHE_SIM_SEED={seed}"
    )


def test_raft_simulation() -> None:
    for seed in _seeds():
        _run_seed(seed)


def test_raft_simulation_single_member() -> None:
    """A group of one: commits on its own fsync, survives crashes (DESIGN.md: 1-5 members)."""
    for seed in _seeds()[:20]:
        _run_seed(seed, Params(members=1))


@pytest.mark.parametrize("seed", [0, 1])
def test_raft_simulation_is_deterministic(seed: int) -> None:
    a, b = run(seed), run(seed)
    assert a.history == b.history
