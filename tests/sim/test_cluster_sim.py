"""Seeded simulation of the cluster namespace over 3-5 groups (issue 4; tests/sim/cluster_sim.py).

OBJCACHE_SIM_SEEDS=N runs seeds 0..N-1 (default 6, to stay under ~30 s in `make test`);
OBJCACHE_SIM_SEED=N replays one seed. A failure names its seed.
"""

from __future__ import annotations

import os
from collections import Counter

from cluster_sim import run


def _seeds() -> list[int]:
    one = os.environ.get("OBJCACHE_SIM_SEED")
    if one is not None:
        return [int(one)]
    return list(range(int(os.environ.get("OBJCACHE_SIM_SEEDS", "6"))))


def test_cluster_simulation() -> None:
    stats: Counter[str] = Counter()
    results: Counter[str] = Counter()
    for seed in _seeds():
        try:
            world, clients = run(seed)
        except Exception as e:
            raise AssertionError(
                f"cluster simulation seed {seed} failed: {e!r}; replay: OBJCACHE_SIM_SEED={seed}"
            ) from e
        stats.update(world.stats)
        for c in clients:
            results.update(c.results)
    # The workload must reach the interesting paths, not only errors.
    for op in ("_write", "_rename", "_create", "_mkdir", "_truncate"):
        assert results[f"{op} ok"], (op, results)
