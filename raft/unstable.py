"""Entries (and at most one snapshot) that the core has accepted but the driver has not yet
reported durable. They shadow storage: for any index >= `offset` the unstable view is the truth,
and storage will be overwritten there when the driver saves them.
"""

from __future__ import annotations

from raft.types import Entry, SnapshotMeta


class Unstable:
    def __init__(self, offset: int) -> None:
        self.offset = offset  # index of entries[0]
        self.entries: list[Entry] = []
        self.snapshot: SnapshotMeta | None = None

    def maybe_first_index(self) -> int | None:
        return self.snapshot.index + 1 if self.snapshot else None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        return self.snapshot.index if self.snapshot else None

    def maybe_term(self, index: int) -> int | None:
        if index < self.offset:
            if self.snapshot and self.snapshot.index == index:
                return self.snapshot.term
            return None
        last = self.maybe_last_index()
        if last is None or index > last:
            return None
        return self.entries[index - self.offset].term

    def truncate_and_append(self, entries: list[Entry]) -> None:
        """Append, first dropping any entries at or after entries[0].index (§5.3 conflict)."""
        after = entries[0].index
        if after == self.offset + len(self.entries):
            self.entries.extend(entries)
        elif after <= self.offset:
            # Replaces everything unstable, and storage's suffix from `after` on.
            self.offset = after
            self.entries = list(entries)
        else:
            self.entries = self.entries[: after - self.offset] + list(entries)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        assert self.offset <= lo <= hi <= self.offset + len(self.entries), (lo, hi, self.offset)
        return self.entries[lo - self.offset : hi - self.offset]

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to `index` are durable, if the one there still has `term`."""
        if self.maybe_term(index) != term or index < self.offset:
            return  # replaced meanwhile: the newer entries are in a later Ready
        self.entries = self.entries[index + 1 - self.offset :]
        self.offset = index + 1

    def stable_snapshot_to(self, index: int) -> None:
        if self.snapshot and self.snapshot.index == index:
            self.snapshot = None

    def restore(self, meta: SnapshotMeta) -> None:
        self.offset = meta.index + 1
        self.entries = []
        self.snapshot = meta
