"""HEADs of a listing's new objects, spread over the cluster's nodes.

Loading a directory from the bucket HEADs every new object for its x-amz-meta-* attributes
(gateway_bucket_load.py). boto3 spends about a millisecond of CPU on each, under the GIL of the one
node that loads, so a directory of thousands of objects waited seconds on one core while the
other nodes idled. The nodes hold the same exports, so any of them can ask.

Rules:
- A batch under FANOUT_MIN keys is HEADed here: a round trip costs more than it saves.
- Otherwise the keys are cut into one share per node: this one and each connected peer. A
  peer HEADs its share (HeadObjects) with its own client of the same export, HEAD_PARALLEL at
  a time, and answers in key order (None: no such object).
- A peer that fails (gone, slow past the deadline, without that export, a store error there)
  costs only time: its share is HEADed here, where a store error surfaces as it would have
  without the fan-out.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import trio

from server.cluster import protocol as p
from server.rpc.codec import message
from server.rpc.frames import RemoteError, RpcError
from server.rpc.plane import RpcPlane
from storage.objstore.base import ObjectInfo, ObjectStore, StoreError

log = logging.getLogger("objcache.bucket")

HEAD_PARALLEL = 16  # HEADs in flight for one batch or share, on one node
FANOUT_MIN = 32  # smaller batches are HEADed where they are asked for
MAX_KEYS = 10_000  # keys in one HeadObjects: a share of one listing page at most
SHARE_TIMEOUT_S = 30.0  # a peer's whole share; past it, the share is HEADed here


@dataclass(frozen=True, slots=True)
class Found:
    size: int
    etag: str
    mtime_ns: int
    metadata: dict[str, str]


@message("bk.heads")
@dataclass(frozen=True, slots=True)
class HeadObjects:
    store: int  # the export id, as in Inode.store
    keys: tuple[str, ...]  # relative to the export's prefix


@message("bk.found")
@dataclass(frozen=True, slots=True)
class HeadsFound:
    found: tuple[Found | None, ...]  # in key order; None: no such object


Head = Callable[[str], Awaitable[ObjectInfo | None]]


async def head_all(head: Head, keys: Sequence[str]) -> list[ObjectInfo | None]:
    """head(key) for every key, HEAD_PARALLEL at a time, in key order. The first error raised
    cancels the rest and propagates."""
    out: list[ObjectInfo | None] = [None] * len(keys)
    limiter = trio.CapacityLimiter(HEAD_PARALLEL)

    async def one(i: int, key: str) -> None:
        async with limiter:
            out[i] = await head(key)

    async with trio.open_nursery() as nursery:
        for i, key in enumerate(keys):
            nursery.start_soon(one, i, key)
    return out


class HeadFanout:
    """One node's side of the fan-out: it serves peers' shares and spreads its own batches."""

    def __init__(self, plane: RpcPlane, stores: Mapping[int, ObjectStore],
                 peers: Callable[[], Sequence[int]]) -> None:
        self.plane = plane
        self.stores = stores
        self.peers = peers  # the other nodes of the cluster now
        self.stats = {"batches": 0, "shares_sent": 0, "shares_failed": 0, "shares_served": 0}

    def serve(self) -> None:
        self.plane.register(HeadObjects, self._on_heads)

    async def _on_heads(self, peer_id: int, msg: HeadObjects) -> HeadsFound:
        store = self.stores.get(msg.store)
        if store is None:
            raise RemoteError(p.UNAVAILABLE, f"no export {msg.store} on this node")
        if len(msg.keys) > MAX_KEYS:
            raise RemoteError(p.UNAVAILABLE, f"{len(msg.keys)} keys in one HeadObjects")
        self.stats["shares_served"] += 1
        try:
            infos = await head_all(store.head, msg.keys)
        except StoreError as e:
            raise RemoteError(p.UNAVAILABLE, f"{store.url}: {type(e).__name__}: {e}") from e
        return HeadsFound(tuple(None if i is None else Found(i.size, i.etag, i.mtime_ns,
                                                             dict(i.metadata))
                                for i in infos))

    async def head_many(self, store_id: int, head: Head, keys: Sequence[str]
                        ) -> list[ObjectInfo | None]:
        """Every key's object (None: none), in key order; `head` is the local HEAD (with the
        caller's error mapping), used for this node's share and for any share a peer failed."""
        peers = [n for n in self.peers() if self.plane.is_connected(n)]
        if len(keys) < FANOUT_MIN or not peers:
            return await head_all(head, keys)
        self.stats["batches"] += 1
        ways = len(peers) + 1
        shares = [list(keys[i::ways]) for i in range(ways)]  # share 0 is this node's
        found: list[list[ObjectInfo | None]] = [[] for _ in shares]

        async def remote(i: int, peer: int) -> None:
            found[i] = await self._ask(peer, store_id, shares[i], head)

        async def local() -> None:
            found[0] = await head_all(head, shares[0])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(local)
            for i, peer in enumerate(peers, start=1):
                nursery.start_soon(remote, i, peer)
        out: list[ObjectInfo | None] = [None] * len(keys)
        for i, share in enumerate(found):
            out[i::ways] = share
        return out

    async def _ask(self, peer: int, store_id: int, keys: list[str], head: Head
                   ) -> list[ObjectInfo | None]:
        self.stats["shares_sent"] += 1
        try:
            reply = await self.plane.call(peer, HeadObjects(store_id, tuple(keys)),
                                          SHARE_TIMEOUT_S)
            if not isinstance(reply, HeadsFound) or len(reply.found) != len(keys):
                raise RemoteError(p.UNAVAILABLE, f"a malformed answer: {type(reply).__name__}")
        except RpcError as e:
            self.stats["shares_failed"] += 1
            log.info("HEADs of %d keys at node %d failed (%s); HEADing them here",
                     len(keys), peer, e)
            return await head_all(head, keys)
        return [None if f is None else ObjectInfo(key, f.size, f.etag, f.mtime_ns, f.metadata)
                for key, f in zip(keys, reply.found, strict=True)]
