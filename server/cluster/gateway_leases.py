"""The gateway's side of leases (a mixin of gateway.py's ClusterBackend): GetInodes, Lookup and
ReadHead of other nodes' groups asked with a lease, their replies held and answered again until the
lease ends or the group's leader revokes it (leases.py has the rules; group_leases.py the
leader's side).

Rules:
- Held by request: ("i", ino) -> the encoded inode (b"": none); ("l", dir, name) -> the
  LookupReply. A Lookup's reply is held under the directory and the child it shows, and
  their inodes under ("i", ...) as well.
- Only replies that came with a lease are held, and only under the ring version they were
  asked under; a lease runs from when its request left (this node's trio clock).
- A Revoke drops every reply that shows one of its inodes, then is acknowledged (RevokeAck,
  one-way, to the node that sent it). A reply to a request sent before any Revoke that came
  in meanwhile is not held (LeaseCache.token).
- This node's own group never grants it leases: its reads are local already.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from server.cluster import protocol as p
from server.cluster.leases import LeaseCache
from server.fs.record_codec import decode as decode_value

if TYPE_CHECKING:
    from server.cluster.gateway import ClusterBackend

    _Base = ClusterBackend
else:
    _Base = object

LEASE_CACHE_LIMIT = 65_536  # replies held at most (least recently used go first)

R = TypeVar("R")
Held = tuple[tuple[Any, ...], Any, tuple[int, ...]]  # (key, value, the inodes it shows)


class LeasedReads(_Base):
    def _init_lease_cache(self) -> None:
        self.leases = LeaseCache(LEASE_CACHE_LIMIT)
        self.lease_stats = {"hits": 0, "misses": 0, "revokes": 0}

    def held(self, key: tuple[Any, ...]) -> Any | None:
        """The reply held for `key` under a running lease, else None."""
        reply = self.leases.get(key, ring_version=self.ring.version, now=trio.current_time())
        self.lease_stats["hits" if reply is not None else "misses"] += 1
        return reply

    async def _ask_leased(self, call: Awaitable[R], shown: Callable[[R], Iterable[Held]]) -> R:
        """Await `call`, a request asked with a lease and not sent yet; if its reply came
        leased, hold what `shown(reply)` names: (key, value, the inodes it shows)."""
        token, ring, sent = self.leases.token(), self.ring.version, trio.current_time()
        reply = await call
        lease_s: float = getattr(reply, "lease_s", 0.0)  # InodesReply, LookupReply, ...
        if lease_s > 0:
            for key, value, inos in shown(reply):
                self.leases.put(key, value, inos, token=token, ring_version=ring,
                                sent_at=sent, lease_s=lease_s)
        return reply

    async def _leased_inodes(self, inos: tuple[int, ...], group: int | None = None
                             ) -> p.InodesReply:
        """GetInodes at `group` (None: where the ring places inos[0], re-planned on a ring
        change), asked with a lease; what came leased is held."""
        request = p.GetInodes(0, inos, lease=True)
        call = self._at_inode(inos[0], request) if group is None else self._call(group, request)
        return await self._ask_leased(call, lambda r: [
            (("i", ino), raw, (ino,)) for ino, raw in zip(inos, r.inodes, strict=True)])

    async def _leased_read_head(self, ino: int, offset: int, count: int) -> p.ReadHeadReply:
        """ReadHead where the ring places `ino`, asked with a lease on the inode."""
        return await self._ask_leased(
            self._at_inode(ino, p.ReadHead(0, ino, offset, count, lease=True)),
            lambda r: [(("i", ino), r.inode, (ino,))])

    async def _leased_lookup(self, dir_ino: int, name: bytes) -> p.LookupReply:
        """Lookup where the ring places `dir_ino`, asked with a lease; held if leased: the
        reply under the directory and the child it shows, their inodes under ("i", ...)."""

        def shown(r: p.LookupReply) -> list[Held]:
            if not r.dir:
                return []
            inodes = [(dir_ino, r.dir)]
            if r.child:
                inodes.append((decode_value(r.child).ino, r.child))
            return [(("l", dir_ino, name), r, tuple(i for i, _ in inodes)),
                    *((("i", i), raw, (i,)) for i, raw in inodes)]

        return await self._ask_leased(
            self._at_inode(dir_ino, p.Lookup(0, dir_ino, name, lease=True)), shown)

    def revoke_held(self, msg: p.Revoke) -> p.RevokeAck:
        """A group's leader takes back what this node holds of `msg.inos`: the ack to send
        it (the node sends it, module rules)."""
        for ino in msg.inos:
            self.leases.revoke(ino)
        self.lease_stats["revokes"] += 1
        return p.RevokeAck(msg.group, msg.change)
