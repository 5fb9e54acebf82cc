"""InoAllocator: node-unique, never reused inode ids by group (server/cluster/inoalloc.py)."""

from __future__ import annotations

import trio

from server.cluster.inoalloc import FIRST_COUNTER, KEY, NODE_SHIFT, InoAllocator
from storage.kv import KvStore


class Ring:
    version = 1

    def group_of_inode(self, ino: int) -> int:
        return 1 + ino % 3

    def group_of_chunk(self, ino: int, index: int) -> int:
        return 1 + (ino + index) % 3


async def test_ids_carry_the_node_and_survive_a_restart_without_reuse(tmp_path) -> None:
    kv = await KvStore.open(tmp_path / "kv")
    try:
        alloc = await InoAllocator.open(kv, 5, block=8)
        first = [await alloc.alloc(None, Ring()) for _ in range(10)]
        assert all(i >> NODE_SHIFT == 5 for i in first)
        assert first[0] & ((1 << NODE_SHIFT) - 1) == FIRST_COUNTER
        assert first == sorted(set(first))
        assert await kv.get(KEY) is not None
        again = await InoAllocator.open(kv, 5, block=8)  # a crash: the rest of the block goes
        more = [await again.alloc(None, Ring()) for _ in range(10)]
        assert min(more) > max(first)
    finally:
        await kv.close()


async def test_alloc_lands_in_the_wanted_group(tmp_path) -> None:
    kv = await KvStore.open(tmp_path / "kv")
    try:
        alloc = await InoAllocator.open(kv, 0, block=4)
        ring = Ring()
        got = [await alloc.alloc(2, ring) for _ in range(20)]
        assert {ring.group_of_inode(i) for i in got} == {2}
        assert len(set(got)) == 20 and min(got) > 1  # never the root, never 0
    finally:
        await kv.close()


async def test_concurrent_allocs_are_unique(tmp_path) -> None:
    kv = await KvStore.open(tmp_path / "kv")
    try:
        alloc = await InoAllocator.open(kv, 1, block=3)
        out: list[int] = []

        async def take() -> None:
            for _ in range(10):
                out.append(await alloc.alloc(None, Ring()))

        async with trio.open_nursery() as n:
            for _ in range(4):
                n.start_soon(take)
        assert len(set(out)) == 40
    finally:
        await kv.close()


async def test_a_first_start_with_a_floor_begins_above_it_and_asks_only_once(tmp_path) -> None:
    kv = await KvStore.open(tmp_path / "kv")
    asked = []

    async def floor() -> int:
        asked.append(1)
        return 5000

    try:
        alloc = await InoAllocator.open(kv, 3, block=8, floor=floor)
        ino = await alloc.alloc(None, Ring())
        assert ino == (3 << NODE_SHIFT) | 5000
        again = await InoAllocator.open(kv, 3, block=8, floor=floor)  # a restart: on disk
        assert await again.alloc(None, Ring()) > ino
        assert asked == [1]
    finally:
        await kv.close()
