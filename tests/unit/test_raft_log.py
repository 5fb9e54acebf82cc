"""The Raft log: matching, conflicts, fast-backtracking hints, commit rule (paper §5.3-5.4)."""

from __future__ import annotations

import pytest

from raft.log import RaftLog, limit_size
from raft.log_storage import Compacted, Unavailable
from raft.memory_storage import MemoryStorage
from raft.types import ConfState, Entry, HardState


def E(term: int, index: int, data: bytes = b"") -> Entry:
    return Entry(term, index, data=data)


def log_with(terms: list[int], commit: int = 0) -> RaftLog:
    storage = MemoryStorage()
    storage.save_sync(HardState(term=max(terms, default=0), commit=commit),
                      [E(t, i) for i, t in enumerate(terms, start=1)])
    return RaftLog(storage, commit, 0)


def test_find_conflict() -> None:
    log = log_with([1, 1, 2, 3])
    assert log.find_conflict([E(1, 1), E(1, 2)]) == 0
    assert log.find_conflict([E(2, 3), E(3, 4), E(3, 5)]) == 5  # new entry
    assert log.find_conflict([E(1, 2), E(4, 3)]) == 3  # term differs


def test_maybe_append_truncates_a_conflicting_suffix() -> None:
    log = log_with([1, 1, 2, 2], commit=2)
    assert log.maybe_append(1, 1, 3, [E(1, 2), E(3, 3)]) == 3
    assert [log.term(i) for i in range(1, log.last_index() + 1)] == [1, 1, 3]
    assert log.committed == 3
    assert log.maybe_append(3, 2, 3, []) is None  # prev term mismatch


def test_maybe_append_never_truncates_committed_entries() -> None:
    log = log_with([1, 1, 2], commit=3)
    with pytest.raises(AssertionError):
        log.maybe_append(1, 1, 3, [E(3, 2)])


@pytest.mark.parametrize(
    ("index", "term", "expected"),
    [
        (6, 3, (6, 3)),  # matches already
        (6, 2, (3, 2)),  # skip all of term 3 in one step
        (6, 1, (2, 1)),
        (6, 0, (0, 0)),
        (9, 3, (6, 3)),  # beyond the log: start from its end
    ],
)
def test_find_conflict_by_term(index: int, term: int, expected: tuple[int, int]) -> None:
    log = log_with([1, 1, 2, 3, 3, 3])
    assert log.find_conflict_by_term(index, term) == expected


def test_commit_only_entries_of_the_current_term() -> None:
    log = log_with([1, 1, 2])
    assert not log.maybe_commit(3, 3)  # §5.4.2: an old-term entry is not committed by counting
    assert log.maybe_commit(3, 2)
    assert log.committed == 3


def test_up_to_date() -> None:
    log = log_with([1, 2, 2])
    assert log.is_up_to_date(3, 2)
    assert log.is_up_to_date(1, 3)
    assert not log.is_up_to_date(2, 2)
    assert not log.is_up_to_date(9, 1)


def test_unstable_entries_shadow_storage_until_stable() -> None:
    log = log_with([1, 1, 1])
    log.append([E(2, 3), E(2, 4)])  # replaces storage's entry 3
    assert log.term(3) == 2 and log.last_index() == 4
    assert log.persisted_last_index() == 2
    log.storage.save_sync(None, log.unstable.entries)  # type: ignore[attr-defined]
    log.unstable.stable_to(4, 2)
    assert log.unstable.entries == [] and log.term(4) == 2 and log.persisted_last_index() == 4


def test_compaction_and_snapshot_restore() -> None:
    log = log_with([1, 1, 2, 2], commit=4)
    log.storage.create_snapshot(3, ConfState(frozenset({1})))  # type: ignore[attr-defined]
    log.storage.compact_sync(3)  # type: ignore[attr-defined]
    assert log.first_index() == 4 and log.term(3) == 2
    with pytest.raises(Compacted):
        log.term(2)
    with pytest.raises(Unavailable):
        log.term(5)
    with pytest.raises(Compacted):
        log.slice(2, 5, 100)


def test_limit_size_keeps_at_least_one_entry() -> None:
    entries = [E(1, i, b"x" * 10) for i in range(1, 5)]
    assert len(limit_size(entries, 5)) == 1
    assert len(limit_size(entries, 25)) == 2
    assert len(limit_size(entries, 1000)) == 4
