"""Linearizable reads without writing to the log: ReadIndex (dissertation §6.4).

Rules:
- The leader records its commit index as the read index, then confirms it is still the leader
  by a heartbeat round carrying the request's context; once a majority of voters answered that
  round (or any later one), the read index is safe to serve once applied.
- A request confirmed by a round also confirms every request registered before it.
- Contexts are chosen by the requester. The leader names each registration by its own
  sequence number, the requester and the context (`b"<seq>:<requester>:" + context` on the
  heartbeats), so members' contexts never collide and an acknowledgement of an earlier round
  never confirms a later request.
- The same (requester, context) registered again replaces the earlier registration, which is
  never answered: the requester asked again (a retry, or a restart that reused a context).
  A requester must still not reuse a context while an answer to it may be in flight (after a
  restart: include an incarnation nonce), or it could take that old, smaller index as current.
- A leader that has not committed an entry of its term yet does not know the commit index
  (§6.4 step 1): requests wait in a bounded queue until its NOOP commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(eq=False)
class ReadIndexStatus:
    index: int
    requester: int  # node that asked: the leader itself, or a follower that forwarded
    context: bytes  # as the requester chose it
    acks: set[int] = field(default_factory=set)


class ReadOnly:
    def __init__(self) -> None:
        self._pending: dict[bytes, ReadIndexStatus] = {}  # insertion order = request order
        self._keys: dict[tuple[int, bytes], bytes] = {}  # (requester, context) -> round key
        self._seq = 0

    def __len__(self) -> int:
        return len(self._pending)

    def add_request(self, index: int, requester: int, context: bytes, self_id: int) -> bytes:
        """Register a read at `index`; returns the context its heartbeat round carries."""
        earlier = self._keys.pop((requester, context), None)
        if earlier is not None:
            del self._pending[earlier]
        self._seq += 1
        key = b"%d:%d:" % (self._seq, requester) + context
        self._keys[(requester, context)] = key
        self._pending[key] = ReadIndexStatus(index, requester, context, {self_id})
        return key

    def recv_ack(self, frm: int, key: bytes) -> set[int] | None:
        status = self._pending.get(key)
        if status is None:
            return None
        status.acks.add(frm)
        return status.acks

    def advance(self, key: bytes) -> list[ReadIndexStatus]:
        """Release the request of heartbeat context `key` and every request before it."""
        if key not in self._pending:
            return []
        released: list[ReadIndexStatus] = []
        for pending_key in list(self._pending):
            status = self._pending.pop(pending_key)
            del self._keys[(status.requester, status.context)]
            released.append(status)
            if pending_key == key:
                break
        return released

    def last_pending_context(self) -> bytes:
        return next(reversed(self._pending)) if self._pending else b""

    def clear(self) -> None:
        self._pending.clear()
        self._keys.clear()
