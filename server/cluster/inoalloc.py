"""Cluster-unique inode ids, never reused (DESIGN.md "Cluster, groups, placement").

Rules:
- An id is `(node_id << 44) | counter`: node ids are unique in the cluster (at most 2^20, see
  server/config.py), so two gateways never hand out the same id, and no coordination is needed.
- The counter is persisted in blocks: before handing out ids up to N, N is written (synced) to
  the node's own KvStore under `cl.alloc` (node-local: not replicated, not in snapshots). After a
  crash the unused rest of a block is skipped, never reused.
- `alloc(want_group, ring)` skips ids until the ring places the id in `want_group`: files,
  symlinks and nodes take their directory's group (their create is one group's TxnLocal);
  directories take the gateway node's group, or pass None and land wherever the next id
  hashes (cluster.dir_placement; gateway_ns.py). Skipped ids are simply never used (2^44 per
  node).
- Inode 1 is the root; counters start at FIRST_COUNTER so node 0 never hands out 0 or 1.
- A node that joins with an empty data directory may carry the id of a node that left: its
  counter starts above the highest id with its prefix that any group still holds (`floor`).
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from server.cluster.protocol import RingView

KEY = b"cl.alloc"
NODE_SHIFT = 44
MAX_COUNTER = (1 << NODE_SHIFT) - 1
FIRST_COUNTER = 16
BLOCK = 1024  # ids reserved per synced write
MAX_SKIPS = 100_000  # a placement no id reaches within this many tries is a ring bug
_U64 = struct.Struct(">Q")


class AllocStore(Protocol):
    """The part of storage.kv.KvStore the allocator uses."""

    async def get(self, key: bytes) -> bytes | None: ...

    async def write(self, batch: list[tuple[bytes, bytes | None]], *, sync: bool) -> None: ...


class InoAllocator:
    def __init__(self, store: AllocStore, node_id: int, reserved: int, block: int = BLOCK):
        assert 0 <= node_id < (1 << 20), node_id
        self.store = store
        self.node_id = node_id
        self.block = block
        self._next = max(reserved, FIRST_COUNTER)
        self._limit = reserved  # ids below this counter are reserved on disk
        self._lock = trio.Lock()

    @classmethod
    async def open(cls, store: AllocStore, node_id: int, block: int = BLOCK,
                   floor: Callable[[], Awaitable[int]] | None = None) -> InoAllocator:
        """The allocator of this node, continuing after every id reserved before. `floor`:
        asked on a first start (nothing reserved on disk) for the lowest counter the node
        may use (a node id that left the cluster and returns with an empty data directory
        must not hand out its old ids again)."""
        raw = await store.get(KEY)
        reserved = 0 if raw is None else _U64.unpack(raw)[0]
        if raw is None and floor is not None:
            reserved = await floor()
            await store.write([(KEY, _U64.pack(reserved))], sync=True)
        return cls(store, node_id, reserved, block)

    async def alloc(self, want_group: int | None, ring: RingView) -> int:
        """A fresh inode id, placed in `want_group` by `ring` if one is asked for."""
        for _ in range(MAX_SKIPS):
            ino = await self._one()
            if want_group is None or ring.group_of_inode(ino) == want_group:
                return ino
        raise AssertionError(f"no inode id lands in group {want_group} of {ring}")

    async def _one(self) -> int:
        if self._next >= self._limit:
            async with self._lock:
                if self._next >= self._limit:
                    limit = self._next + self.block
                    assert limit <= MAX_COUNTER, "inode ids of this node exhausted"
                    await self.store.write([(KEY, _U64.pack(limit))], sync=True)
                    self._limit = limit
        counter = self._next
        self._next += 1
        return (self.node_id << NODE_SHIFT) | counter
