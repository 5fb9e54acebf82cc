"""Raft's safety properties (paper Figure 3), checked incrementally after every step.

- Election Safety: at most one leader per term.
- Log Matching: if two logs hold an entry with the same index and term, the logs are identical
  up to it. Checked inductively: every persisted (index, term) maps to one payload and one term
  at index - 1.
- Leader Completeness: a leader holds every entry committed in an earlier term. An entry is
  known committed when some member applies it; its commit happened in a term no later than the
  highest term any member had reached at that moment.
- State Machine Safety: no two members apply different entries at the same index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from raft.log_storage import Compacted
from raft.node import RawNode
from raft.ready import Role
from raft.types import Entry


class InvariantViolation(AssertionError):
    pass


@dataclass
class Checker:
    leaders: dict[int, int] = field(default_factory=dict)  # term -> leader id
    checked_leaders: set[tuple[int, int]] = field(default_factory=set)
    persisted: dict[tuple[int, int], tuple[object, int]] = field(default_factory=dict)
    committed: dict[int, tuple[Entry, int]] = field(default_factory=dict)  # index -> (e, bound)
    max_term: int = 0

    def fail(self, what: str) -> None:
        raise InvariantViolation(what)

    def observe(self, node: RawNode) -> None:
        """After every step, tick or proposal of `node`."""
        r = node.raft
        self.max_term = max(self.max_term, r.term)
        if r.role is not Role.LEADER:
            return
        holder = self.leaders.setdefault(r.term, r.id)
        if holder != r.id:
            self.fail(f"election safety: {holder} and {r.id} both lead term {r.term}")
        if (r.term, r.id) not in self.checked_leaders:
            self.checked_leaders.add((r.term, r.id))
            self._leader_completeness(node)

    def _leader_completeness(self, node: RawNode) -> None:
        r = node.raft
        for index, (entry, bound) in self.committed.items():
            if bound >= r.term:
                continue
            try:
                term = r.log.term(index)
            except Compacted:
                continue  # inside its snapshot, which holds only committed entries
            except Exception:  # Unavailable: the log is too short
                term = -1
            if term != entry.term:
                self.fail(
                    f"leader completeness: leader {r.id} of term {r.term} lacks committed "
                    f"entry {entry.term}/{index} (has term {term})"
                )

    def on_persist(self, node_id: int, entries: Sequence[Entry], term_before: int) -> None:
        """`entries` were saved by `node_id`; `term_before` is its term at entries[0].index-1."""
        prev = term_before
        for e in entries:
            got = ((e.type, e.data), prev)
            known = self.persisted.setdefault((e.index, e.term), got)
            if known != got:
                self.fail(f"log matching: node {node_id} entry {e.term}/{e.index} differs")
            prev = e.term

    def on_apply(self, node_id: int, e: Entry) -> None:
        known = self.committed.get(e.index)
        if known is None:
            self.committed[e.index] = (e, self.max_term)
        elif known[0] != e:
            self.fail(
                f"state machine safety: node {node_id} applied {e.term}/{e.index} "
                f"where {known[0].term}/{e.index} was applied before"
            )
