"""The LogStorage protocol: what the Raft core reads from storage and the driver writes.

Raft knows nothing of LevelDB or files; `storage/raftlog.py` implements this protocol.

Rules (Raft paper §5, "Persisted state on all servers"; STYLE.md habit 2):
- The core only *reads* through this protocol, synchronously, from state that is already on disk
  (or cached in memory by the implementation). It never writes.
- The trio driver persists what a Ready hands out — hard state, entries, snapshot — with
  `save()`, which returns only after fsync, and only then sends the messages that depend on it.
- Entries are addressed by index; index 0 is the sentinel before the first entry (term 0).
  After compaction, `first_index()` is the snapshot index + 1 and `term(snapshot index)` still
  answers from the snapshot metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from raft.types import Entry, HardState, SnapshotMeta


class Compacted(Exception):
    """The requested index is below the first retained entry (it lives only in a snapshot)."""


class Unavailable(Exception):
    """The requested index is above the last entry."""


class LogStorage(Protocol):
    def initial_state(self) -> tuple[HardState, SnapshotMeta | None]:
        """Hard state and the latest snapshot's metadata, as persisted."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def term(self, index: int) -> int:
        """Term of the entry at `index`; Compacted / Unavailable outside the retained range."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries in [lo, hi), at least one if lo < hi, then up to max_bytes of payload."""
        ...

    async def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: SnapshotMeta | None = None,
    ) -> None:
        """Persist atomically and durably (fsync) before returning.

        New entries overwrite any existing entries at the same and later indexes (§5.3: a
        conflicting suffix is truncated).
        """
        ...

    async def compact(self, index: int) -> None:
        """Discard entries up to and including `index` (already covered by a snapshot)."""
        ...
