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

from typing import TYPE_CHECKING, Any

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


class LeasedReads(_Base):
    def _init_lease_cache(self) -> None:
        self.leases = LeaseCache(LEASE_CACHE_LIMIT)
        self.lease_stats = {"hits": 0, "misses": 0, "revokes": 0}

    def held(self, key: tuple[Any, ...]) -> Any | None:
        """The reply held for `key` under a running lease, else None."""
        reply = self.leases.get(key, ring_version=self.ring.version, now=trio.current_time())
        self.lease_stats["hits" if reply is not None else "misses"] += 1
        return reply

    async def _leased_inodes(self, group: int, inos: tuple[int, ...]) -> p.InodesReply:
        """GetInodes at `group`, asked with a lease; what came leased is held."""
        token, ring, sent = self.leases.token(), self.ring.version, trio.current_time()
        reply: p.InodesReply = await self._call(group, p.GetInodes(0, inos, lease=True))
        if reply.lease_s > 0:
            for ino, raw in zip(inos, reply.inodes, strict=True):
                self.leases.put(("i", ino), raw, (ino,), token=token, ring_version=ring,
                                sent_at=sent, lease_s=reply.lease_s)
        return reply

    async def _leased_read_head(self, ino: int, offset: int, count: int) -> p.ReadHeadReply:
        """ReadHead where the ring places `ino`, asked with a lease on the inode."""
        token, ring, sent = self.leases.token(), self.ring.version, trio.current_time()
        reply: p.ReadHeadReply = await self._at_inode(ino, p.ReadHead(0, ino, offset, count,
                                                                      lease=True))
        if reply.lease_s > 0:
            self.leases.put(("i", ino), reply.inode, (ino,), token=token, ring_version=ring,
                            sent_at=sent, lease_s=reply.lease_s)
        return reply

    async def _leased_lookup(self, dir_ino: int, name: bytes) -> p.LookupReply:
        """Lookup where the ring places `dir_ino`, asked with a lease; held if leased."""
        token, ring, sent = self.leases.token(), self.ring.version, trio.current_time()
        reply: p.LookupReply = await self._at_inode(dir_ino, p.Lookup(0, dir_ino, name,
                                                                      lease=True))
        if reply.lease_s > 0 and reply.dir:
            shown = [dir_ino]
            held = {("i", dir_ino): reply.dir}
            if reply.child:
                child = decode_value(reply.child).ino
                shown.append(child)
                held[("i", child)] = reply.child
            for key, value in [(("l", dir_ino, name), reply), *held.items()]:
                self.leases.put(key, value, key[1:2] if key[0] == "i" else shown, token=token,
                                ring_version=ring, sent_at=sent, lease_s=reply.lease_s)
        return reply

    def revoke_held(self, msg: p.Revoke) -> p.RevokeAck:
        """A group's leader takes back what this node holds of `msg.inos`: the ack to send
        it (the node sends it, module rules)."""
        for ino in msg.inos:
            self.leases.revoke(ino)
        self.lease_stats["revokes"] += 1
        return p.RevokeAck(msg.group, msg.change)
