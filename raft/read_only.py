"""Linearizable reads without writing to the log: ReadIndex (dissertation §6.4).

Rules:
- The leader records its commit index as the read index, then confirms it is still the leader
  by a heartbeat round carrying the request's context; once a majority of voters answered that
  round (or any later one), the read index is safe to serve once applied.
- A request confirmed by a round also confirms every request registered before it.
- Contexts are chosen by the caller and must be unique among outstanding requests.
- A leader that has not committed an entry of its term yet does not know the commit index
  (§6.4 step 1): requests wait in a bounded queue until its NOOP commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(eq=False)
class ReadIndexStatus:
    index: int
    requester: int  # node that asked: the leader itself, or a follower that forwarded
    context: bytes
    acks: set[int] = field(default_factory=set)


class ReadOnly:
    def __init__(self) -> None:
        self._pending: dict[bytes, ReadIndexStatus] = {}  # insertion order = request order

    def __len__(self) -> int:
        return len(self._pending)

    def add_request(self, index: int, requester: int, context: bytes, self_id: int) -> bool:
        """False if a request with this context is already outstanding."""
        if context in self._pending:
            return False
        self._pending[context] = ReadIndexStatus(index, requester, context, {self_id})
        return True

    def recv_ack(self, frm: int, context: bytes) -> set[int] | None:
        status = self._pending.get(context)
        if status is None:
            return None
        status.acks.add(frm)
        return status.acks

    def advance(self, context: bytes) -> list[ReadIndexStatus]:
        """Release the request for `context` and every request before it."""
        if context not in self._pending:
            return []
        released: list[ReadIndexStatus] = []
        for ctx in list(self._pending):
            released.append(self._pending.pop(ctx))
            if ctx == context:
                break
        return released

    def last_pending_context(self) -> bytes:
        return next(reversed(self._pending)) if self._pending else b""

    def clear(self) -> None:
        self._pending.clear()
