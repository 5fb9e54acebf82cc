"""The Raft log as the core sees it: durable entries through LogStorage, then unstable entries
the driver has yet to persist (paper §5.3, §7).

Rules:
- Index 0 is the sentinel before the first entry (term 0); after compaction the entry just
  before `first_index()` is known by term only.
- `committed` never decreases and never points past `last_index()`; entries at or below it are
  never truncated (Log Matching + Leader Completeness make a conflict there a bug: assert).
- `applied` <= `committed`; the driver moves it by applying what a Ready hands out.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from raft.log_storage import Compacted, LogStorage, Unavailable
from raft.types import Entry, SnapshotMeta
from raft.unstable import Unstable


def entries_size(entries: Sequence[Entry]) -> int:
    return sum(len(e.data) for e in entries)


def limit_size(entries: list[Entry], max_bytes: int) -> list[Entry]:
    """The longest prefix within `max_bytes`, but at least one entry."""
    total = 0
    for i, e in enumerate(entries):
        total += len(e.data)
        if i > 0 and total > max_bytes:
            return entries[:i]
    return entries


class RaftLog:
    def __init__(self, storage: LogStorage, committed: int, applied: int) -> None:
        self.storage = storage
        self.unstable = Unstable(storage.last_index() + 1)
        first = storage.first_index()
        self.applied = max(applied, first - 1)
        # Only committed entries are applied: a commit index saved without fsync (storage may
        # skip it for commit-only saves) can lag the applied index after a crash.
        self.committed = max(committed, self.applied)
        assert self.committed <= self.last_index(), (applied, committed, self.last_index())

    # -- reading -------------------------------------------------------------------------------

    def first_index(self) -> int:
        first = self.unstable.maybe_first_index()
        return first if first is not None else self.storage.first_index()

    def last_index(self) -> int:
        last = self.unstable.maybe_last_index()
        return last if last is not None else self.storage.last_index()

    def last_term(self) -> int:
        return self.term(self.last_index())

    def term(self, index: int) -> int:
        """Raise Compacted below the snapshot index, Unavailable past the last index."""
        if index < self.first_index() - 1:
            raise Compacted(index)
        if index > self.last_index():
            raise Unavailable(index)
        term = self.unstable.maybe_term(index)
        return term if term is not None else self.storage.term(index)

    def term_or_zero(self, index: int) -> int:
        try:
            return self.term(index)
        except (Compacted, Unavailable):
            return 0

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (Compacted, Unavailable):
            return False

    def slice(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries in [lo, hi): at least one if lo < hi, then up to max_bytes; may raise
        Compacted."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise Compacted(lo)
        assert hi <= self.last_index() + 1, (hi, self.last_index())
        offset = self.unstable.offset
        out: list[Entry] = []
        if lo < offset:
            out = self.storage.entries(lo, min(hi, offset), max_bytes)
            if len(out) < min(hi, offset) - lo:
                return out  # hit the size limit inside storage
        if hi > offset:
            out = out + self.unstable.slice(max(lo, offset), hi)
        return limit_size(out, max_bytes)

    def scan(self, lo: int, hi: int, page_bytes: int = 8 << 20) -> Iterator[Entry]:
        """Entries in [lo, hi), read a page at a time so memory stays bounded."""
        while lo < hi:
            page = self.slice(lo, hi, page_bytes)
            yield from page
            lo = page[-1].index + 1

    def entries_from(self, lo: int, max_bytes: int) -> list[Entry]:
        return self.slice(lo, self.last_index() + 1, max_bytes)

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Paper §5.4.1: the candidate's log is at least as up-to-date as ours."""
        our_term = self.last_term()
        return last_term > our_term or (last_term == our_term and last_index >= self.last_index())

    # -- conflicts (§5.3) ----------------------------------------------------------------------

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry that is new or differs in term from ours; 0 if none."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The last index <= `index` whose term is <= `term`, and that term.

        A follower answers a rejected AppendEntries with it, and the leader uses it to jump over
        a whole term of conflicting entries (fast backtracking)."""
        while index > 0:
            try:
                our = self.term(index)
            except Compacted:
                return index, 0
            except Unavailable:
                index = self.last_index()
                continue
            if our <= term:
                return index, our
            index -= 1
        return 0, 0

    # -- writing -------------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> int:
        if entries:
            assert entries[0].index > self.committed, "never overwrite committed entries"
            self.unstable.truncate_and_append(list(entries))
        return self.last_index()

    def maybe_append(
        self, prev_index: int, prev_term: int, leader_commit: int, entries: Sequence[Entry]
    ) -> int | None:
        """Follower side of AppendEntries; the index of the last new entry, or None on a
        log mismatch at prev_index."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            assert conflict > self.committed, f"conflict at committed index {conflict}"
            self.append(entries[conflict - prev_index - 1 :])
        self.commit_to(min(leader_commit, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            assert index <= self.last_index(), f"commit {index} past last {self.last_index()}"
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Leader: commit `index` if it is from `term` (paper §5.4.2)."""
        if index > self.committed and self.term_or_zero(index) == term:
            self.commit_to(index)
            return True
        return False

    def restore(self, meta: SnapshotMeta) -> None:
        self.committed = meta.index
        self.unstable.restore(meta)

    # -- handing out and taking back ------------------------------------------------------------

    def next_committed_entries(self, max_bytes: int) -> list[Entry]:
        lo = max(self.applied + 1, self.first_index())
        return self.slice(lo, self.committed + 1, max_bytes)

    def has_next_committed_entries(self) -> bool:
        return self.committed >= max(self.applied + 1, self.first_index())

    def applied_to(self, index: int) -> None:
        assert self.applied <= index <= self.committed, (self.applied, index, self.committed)
        self.applied = index

    def persisted_last_index(self) -> int:
        """Last index whose entry is durable and still part of our log."""
        if self.unstable.snapshot is not None:
            return 0
        if self.unstable.entries:
            return min(self.storage.last_index(), self.unstable.offset - 1)
        return self.last_index()
