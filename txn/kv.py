"""The key-value protocols the txn state machine reads and writes through, and an in-memory
implementation for tests and the simulation.

Rules:
- `KvView.get` must see every write already made to the batch of the same apply call
  (read-your-writes), so several records in one Raft batch compose. The server backs both with
  the same LevelDB write batch as the file-system state, so the txn tables, the application's
  effects and the applied index change atomically.
- `scan` returns at most `limit` items in key order; callers pass a limit (STYLE.md habit 7).
"""

from __future__ import annotations

import bisect
from typing import Protocol


class KvView(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, prefix: bytes, limit: int) -> list[tuple[bytes, bytes]]: ...


class KvBatch(Protocol):
    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...


class MemKv:
    """A sorted in-memory store: the state machine of one simulated group."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def scan(self, prefix: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        i = bisect.bisect_left(self._keys, prefix)
        while i < len(self._keys) and len(out) < limit and self._keys[i].startswith(prefix):
            out.append((self._keys[i], self._data[self._keys[i]]))
            i += 1
        return out

    def put(self, key: bytes, value: bytes) -> None:
        if key not in self._data:
            bisect.insort(self._keys, key)
        self._data[key] = value

    def delete(self, key: bytes) -> None:
        if self._data.pop(key, None) is not None:
            self._keys.pop(bisect.bisect_left(self._keys, key))

    def items(self) -> list[tuple[bytes, bytes]]:
        return [(k, self._data[k]) for k in self._keys]


class Overlay:
    """A write batch over a base view that reads its own writes; `commit()` applies it to a
    MemKv base (the server writes `writes` to LevelDB itself)."""

    def __init__(self, base: KvView) -> None:
        self.base = base
        self.writes: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        if key in self.writes:
            return self.writes[key]
        return self.base.get(key)

    def scan(self, prefix: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        merged = dict(self.base.scan(prefix, limit + len(self.writes)))
        for k, v in self.writes.items():
            if k.startswith(prefix):
                if v is None:
                    merged.pop(k, None)
                else:
                    merged[k] = v
        return sorted(merged.items())[:limit]

    def put(self, key: bytes, value: bytes) -> None:
        self.writes[key] = value

    def delete(self, key: bytes) -> None:
        self.writes[key] = None

    def commit(self) -> None:
        assert isinstance(self.base, MemKv), "commit() applies to a MemKv base"
        for k, v in self.writes.items():
            if v is None:
                self.base.delete(k)
            else:
                self.base.put(k, v)
        self.writes.clear()
