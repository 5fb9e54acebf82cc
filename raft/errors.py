"""Operating errors the core raises to its caller (STYLE.md habit 6). All typed, none silent."""

from __future__ import annotations


class RaftError(Exception):
    """Base of every error the core raises to its driver."""


class NotLeader(RaftError):
    """This member is not the leader; `leader_hint` is the leader it knows of (0: none)."""

    def __init__(self, leader_hint: int) -> None:
        super().__init__(f"not the leader (leader hint: {leader_hint or 'unknown'})")
        self.leader_hint = leader_hint


class ProposalDropped(RaftError):
    """The leader cannot take the proposal now (leadership transfer, pending change...)."""


class ConfChangeRejected(RaftError):
    """A membership change that is invalid against the current configuration."""


class ReadIndexDropped(RaftError):
    """Too many ReadIndex requests are waiting; retry later."""
