"""An in-memory LogStorage for tests and the simulation. No I/O, so it may live in raft/.

Rules: index 0 (or the snapshot index) is a sentinel entry kept in `_entries[0]`, so
`term(first_index() - 1)` always answers; `save()` truncates a conflicting suffix before
appending, like the LevelDB implementation must.
"""

from __future__ import annotations

from collections.abc import Sequence

from raft.log import limit_size
from raft.log_storage import Compacted, Unavailable
from raft.types import ConfState, Entry, HardState, SnapshotMeta


class MemoryStorage:
    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snapshot: SnapshotMeta | None = None
        self._entries: list[Entry] = [Entry(term=0, index=0)]  # [0] is the sentinel

    def initial_state(self) -> tuple[HardState, SnapshotMeta | None]:
        return self.hard_state, self.snapshot

    def first_index(self) -> int:
        return self._entries[0].index + 1

    def last_index(self) -> int:
        return self._entries[-1].index

    def term(self, index: int) -> int:
        offset = self._entries[0].index
        if index < offset:
            raise Compacted(index)
        if index > self.last_index():
            raise Unavailable(index)
        return self._entries[index - offset].term

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        offset = self._entries[0].index
        if lo <= offset:
            raise Compacted(lo)
        if hi > self.last_index() + 1:
            raise Unavailable(hi)
        return limit_size(self._entries[lo - offset : hi - offset], max_bytes)

    # -- writing (the driver's side) -------------------------------------------------------------

    async def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: SnapshotMeta | None = None,
    ) -> None:
        self.save_sync(hard_state, entries, snapshot)

    def save_sync(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: SnapshotMeta | None = None,
    ) -> None:
        if snapshot is not None:
            self.apply_snapshot(snapshot)
        if entries:
            self._append(entries)
        if hard_state is not None:
            self.hard_state = hard_state

    def apply_snapshot(self, meta: SnapshotMeta) -> None:
        """A snapshot from the leader replaces the whole log."""
        self.snapshot = meta
        self._entries = [Entry(term=meta.term, index=meta.index)]

    def _append(self, entries: Sequence[Entry]) -> None:
        first = entries[0].index
        offset = self._entries[0].index
        assert offset < first <= self.last_index() + 1, (first, offset, self.last_index())
        self._entries = self._entries[: first - offset] + list(entries)

    def create_snapshot(self, index: int, conf: ConfState) -> SnapshotMeta:
        """Record that the application holds a snapshot at `index` (before compact())."""
        self.snapshot = SnapshotMeta(index, self.term(index), conf)
        return self.snapshot

    async def compact(self, index: int) -> None:
        self.compact_sync(index)

    def compact_sync(self, index: int) -> None:
        offset = self._entries[0].index
        if index <= offset:
            return
        assert index <= self.last_index(), (index, self.last_index())
        kept = self._entries[index - offset :]
        self._entries = [Entry(term=kept[0].term, index=index), *kept[1:]]
