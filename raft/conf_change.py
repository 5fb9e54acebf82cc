"""One-server membership changes (dissertation §4.1, §4.2.1) and their entry encoding.

Rules:
- A new server joins as a non-voting learner, catches up, then is promoted to voter.
- Only one change may be pending (uncommitted or unapplied) at a time; a new leader accepts one
  only after its first entry (the NOOP) is applied (the fix to the single-server bug, §4.1).
- A change takes effect when it is applied, so every member holds the same configuration at the
  same log index; applying the same change twice is harmless (each sets one server's role).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from raft.errors import ConfChangeRejected
from raft.types import ConfState

_FORMAT = ">BQ"  # version-free: kind, node id


class ConfChangeType(enum.IntEnum):
    ADD_LEARNER = 1
    PROMOTE = 2
    REMOVE = 3


@dataclass(frozen=True, slots=True)
class ConfChange:
    type: ConfChangeType
    node_id: int

    def encode(self) -> bytes:
        return struct.pack(_FORMAT, int(self.type), self.node_id)

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        kind, node_id = struct.unpack(_FORMAT, data)
        return cls(ConfChangeType(kind), node_id)


def validate(conf: ConfState, cc: ConfChange) -> None:
    """Raise ConfChangeRejected if `cc` makes no sense against `conf`."""
    members = conf.voters | conf.learners
    if cc.node_id < 1:
        raise ConfChangeRejected(f"invalid node id {cc.node_id}")
    if cc.type is ConfChangeType.ADD_LEARNER and cc.node_id in members:
        raise ConfChangeRejected(f"{cc.node_id} is already a member")
    if cc.type is ConfChangeType.PROMOTE and cc.node_id not in conf.learners:
        raise ConfChangeRejected(f"{cc.node_id} is not a learner")
    if cc.type is ConfChangeType.REMOVE:
        if cc.node_id not in members:
            raise ConfChangeRejected(f"{cc.node_id} is not a member")
        if conf.voters == {cc.node_id}:
            raise ConfChangeRejected("cannot remove the last voter")


def apply(conf: ConfState, cc: ConfChange) -> ConfState:
    """The configuration after `cc`. Total: applying an already applied change is a no-op."""
    voters = set(conf.voters) - {cc.node_id}
    learners = set(conf.learners) - {cc.node_id}
    if cc.type is ConfChangeType.ADD_LEARNER:
        if cc.node_id in conf.voters:
            voters.add(cc.node_id)  # replayed after a promote: keep the later role
        else:
            learners.add(cc.node_id)
    elif cc.type is ConfChangeType.PROMOTE:
        voters.add(cc.node_id)
    return ConfState(frozenset(voters), frozenset(learners))
