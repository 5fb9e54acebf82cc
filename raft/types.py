"""Values shared by the Raft core, its storage and its driver. All immutable.

Names follow the Raft paper (Ongaro & Ousterhout, 2014) and the dissertation (Ongaro, 2014).
The core may add message types in its own modules; these are the ones storage must know.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class EntryType(enum.IntEnum):
    NORMAL = 0  # application data
    CONF_CHANGE = 1  # one-server membership change (dissertation §4.1)
    NOOP = 2  # appended by a new leader to commit entries of earlier terms (§5.4.2, §8)


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """Persistent state on all servers (paper Figure 2): currentTerm, votedFor, and commitIndex.

    commitIndex is persisted too (as etcd does) so a restart does not re-apply from zero.
    """

    term: int = 0
    vote: int = 0  # 0: voted for nobody this term; node ids are >= 1
    commit: int = 0


@dataclass(frozen=True, slots=True)
class ConfState:
    """Group membership: voters and non-voting learners (dissertation §4.2.1)."""

    voters: frozenset[int] = field(default_factory=frozenset)
    learners: frozenset[int] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """The last entry a snapshot covers, and the membership at that point (paper §7)."""

    index: int
    term: int
    conf: ConfState
