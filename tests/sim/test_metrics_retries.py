"""objcache_txn_retries_total (server/metrics.py) counts where the gateway tries a transaction
again, in the cluster simulation with its faults (tests/sim/cluster_sim.py): every resend of a
txn id whose answer was lost, and every rebuild after an abort that is not the answer."""

from __future__ import annotations

from cluster_sim import run

from server.metrics import REGISTRY

REASONS = ("aborted", "moving", "resent")


def retries() -> dict[str, float]:
    return {r: REGISTRY.get_sample_value("objcache_txn_retries_total", {"reason": r}) or 0.0
            for r in REASONS}


def test_resends_and_rebuilds_after_aborts_are_counted() -> None:
    seen = {"aborted": 0.0, "resent": 0.0}
    for seed in range(10):
        before = retries()
        _world, clients = run(seed)
        after = retries()
        delta = {r: after[r] - before[r] for r in REASONS}
        aborts = sum(c.fs.stats["aborts"] for c in clients)
        resends = sum(c.fs.stats["resends"] for c in clients)
        assert delta["resent"] == resends, seed
        # ENOTEMPTY is an answer and a change that gave up is not tried again: at most one
        # retry per abort.
        assert delta["aborted"] + delta["moving"] <= aborts, seed
        for r in seen:
            seen[r] += delta[r]
        if all(seen.values()):
            break
    assert all(seen.values()), seen
