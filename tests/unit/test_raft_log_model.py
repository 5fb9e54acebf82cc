"""RaftLog (unstable entries over storage, truncation, persistence, compaction) against a plain
list of terms, under random operation sequences (paper §5.3 AppendEntries receiver rules)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from raft.log import RaftLog
from raft.memory_storage import MemoryStorage
from raft.types import ConfState, Entry

op = st.one_of(
    # (append, how far back from the end prev_log_index is, entries, term bump, bad prev term)
    st.tuples(
        st.just("append"), st.integers(0, 6), st.integers(0, 4), st.integers(0, 2), st.booleans()
    ),
    st.tuples(st.just("commit"), st.integers(0, 12)),
    st.tuples(st.just("persist")),
    st.tuples(st.just("compact"), st.integers(0, 12)),
)


class Model:
    def __init__(self) -> None:
        self.terms: list[int] = []  # terms[i - 1] is the term of entry i
        self.committed = 0

    def term(self, index: int) -> int:
        return 0 if index == 0 else self.terms[index - 1]

    def append(self, prev: int, prev_term: int, entries: list[Entry]) -> int | None:
        if prev > len(self.terms) or self.term(prev) != prev_term:
            return None
        for e in entries:
            if e.index <= len(self.terms) and self.term(e.index) == e.term:
                continue
            self.terms = self.terms[: e.index - 1] + [x.term for x in entries[e.index - prev - 1 :]]
            break
        return prev + len(entries)


def _conflict_at_or_below_commit(model: Model, prev: int, entries: list[Entry]) -> bool:
    for e in entries:
        if e.index <= len(model.terms) and model.term(e.index) != e.term:
            return e.index <= model.committed
    return False


@settings(max_examples=500, deadline=None)
@given(st.lists(op, max_size=40))
def test_log_matches_a_list_model(ops: list[tuple]) -> None:
    storage = MemoryStorage()
    log, model = RaftLog(storage, 0, 0), Model()
    for o in ops:
        _apply(log, storage, model, o)
        assert log.last_index() == len(model.terms)
        assert log.committed == model.committed
        for i in range(log.first_index() - 1, log.last_index() + 1):
            assert log.term(i) == model.term(i), (i, ops)


def _apply(log: RaftLog, storage: MemoryStorage, model: Model, o: tuple) -> None:
    kind = o[0]
    if kind == "append":
        _, back, count, bump, bad_prev = o
        prev = max(0, len(model.terms) - back)
        prev_term = model.term(prev) + (1 if bad_prev else 0)
        if prev < log.first_index() - 1:
            return  # below the snapshot: a real leader would send the snapshot instead
        base = max(1, prev_term + bump)
        entries = [Entry(base, prev + 1 + k) for k in range(count)]
        if prev < model.committed or _conflict_at_or_below_commit(model, prev, entries):
            return  # a real follower answers from its commit index (follower.py)
        assert log.maybe_append(prev, prev_term, model.committed, entries) == model.append(
            prev, prev_term, entries
        )
    elif kind == "commit":
        target = min(o[1], len(model.terms))
        log.commit_to(target)
        model.committed = max(model.committed, target)
    elif kind == "persist" and log.unstable.entries:
        last = log.unstable.entries[-1]
        storage.save_sync(None, log.unstable.entries)
        log.unstable.stable_to(last.index, last.term)
    elif kind == "compact":
        index = min(o[1], model.committed, log.unstable.offset - 1, storage.last_index())
        if index >= storage.first_index():
            storage.create_snapshot(index, ConfState())
            storage.compact_sync(index)
