"""sparselog: refusals logged at the 1st, 2nd, 4th, ... event of a key, bounded memory."""

from __future__ import annotations

from nfs_gateway.sparselog import SparseLog


def test_powers_of_two_of_each_key():
    s = SparseLog()
    logged = [n for n in (s.count("a") for _ in range(100)) if n is not None]
    assert logged == [1, 2, 4, 8, 16, 32, 64]
    assert s.count("b") == 1  # another key starts at once


def test_memory_is_bounded_and_starts_again_when_full():
    s = SparseLog(max_keys=3)
    for k in "abc":
        s.count(k)
    s.count("a")
    assert len(s) == 3
    assert s.count("d") == 1 and len(s) == 1  # cleared: "a" is new again
    assert s.count("a") == 1
