"""Logging refusals without flooding the log: the 1st, 2nd, 4th, 8th, ... event of one key.

A flood of N refusals of one client logs about log2(N) lines, each with the count so far, so
the log still says who was refused, why and how often; every refusal is counted in full
elsewhere (metrics). No clock is needed. The memory of keys is bounded: when it is full it is
cleared, and a key is then logged again from its first event.
"""

from __future__ import annotations

from collections.abc import Hashable

DEFAULT_MAX_KEYS = 4096


class SparseLog:
    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        assert max_keys > 0
        self.max_keys = max_keys
        self._counts: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def count(self, key: Hashable) -> int | None:
        """Count one more event of `key`: its count so far if this one is to be logged."""
        if key not in self._counts and len(self._counts) >= self.max_keys:
            self._counts.clear()
        n = self._counts[key] = self._counts.get(key, 0) + 1
        return n if n & (n - 1) == 0 else None
