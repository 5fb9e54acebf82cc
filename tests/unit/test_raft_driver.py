"""raft/driver.py over MemoryStorage and an in-memory network, under pytest-trio's autojump
MockClock (the `autojump_clock` fixture): no real time passes."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
import trio

from raft.config import Config
from raft.driver import DriverConfig, RaftDriver
from raft.errors import NotLeader
from raft.memory_storage import MemoryStorage
from raft.messages import Message
from raft.node import RawNode, bootstrap_log
from raft.types import Entry, EntryType


class Network:
    """Delivers every message to the addressee's driver, unless that node is cut off."""

    def __init__(self) -> None:
        self.drivers: dict[int, RaftDriver] = {}
        self.down: set[int] = set()

    def transport(self, frm: int) -> Transport:
        return Transport(self, frm)


class Transport:
    def __init__(self, net: Network, frm: int):
        self.net, self.frm = net, frm

    def send(self, to: int, message: Message) -> bool:
        if to in self.net.down or self.frm in self.net.down or to not in self.net.drivers:
            return False
        self.net.drivers[to].step(message)
        return True


class KV:
    def __init__(self) -> None:
        self.applied: list[bytes] = []

    async def apply(self, entries: Sequence[Entry]) -> None:
        self.applied.extend(e.data for e in entries if e.type is EntryType.NORMAL)


async def start_group(nursery: trio.Nursery, ids: list[int], seed: int = 1):
    net = Network()
    kvs = {}
    for i in ids:
        storage = MemoryStorage()
        storage.save_sync(*bootstrap_log(ids))
        node = RawNode(Config(id=i), storage, random.Random(seed * 100 + i))
        kvs[i] = KV()
        driver = RaftDriver(node, storage, net.transport(i), kvs[i].apply,
                            config=DriverConfig(tick_interval_s=0.05))
        net.drivers[i] = driver
        await nursery.start(driver.run)
    return net, kvs


async def wait_leader(net: Network, exclude: set[int] = frozenset()) -> int:
    with trio.fail_after(10):
        while True:
            leaders = [i for i, d in net.drivers.items() if d.is_leader() and i not in exclude]
            if leaders:
                return leaders[0]
            await trio.sleep(0.05)


async def test_three_members_replicate_and_apply(nursery, autojump_clock):
    net, kvs = await start_group(nursery, [1, 2, 3])
    leader = await wait_leader(net)
    indexes = [await net.drivers[leader].propose(f"v{i}".encode()) for i in range(20)]
    assert indexes == sorted(indexes)
    with trio.fail_after(5):
        while any(len(kv.applied) < 20 for kv in kvs.values()):
            await trio.sleep(0.05)
    assert all(kv.applied == [f"v{i}".encode() for i in range(20)] for kv in kvs.values())


async def test_follower_refuses_with_a_leader_hint(nursery, autojump_clock):
    net, _ = await start_group(nursery, [1, 2, 3])
    leader = await wait_leader(net)
    follower = next(i for i in net.drivers if i != leader)
    with trio.fail_after(5):
        while net.drivers[follower].leader_id() != leader:
            await trio.sleep(0.05)
    with pytest.raises(NotLeader) as info:
        await net.drivers[follower].propose(b"x")
    assert info.value.leader_hint == leader


async def test_concurrent_proposals_all_apply_once(nursery, autojump_clock):
    net, kvs = await start_group(nursery, [1, 2, 3])
    leader = await wait_leader(net)
    async with trio.open_nursery() as inner:
        for i in range(100):
            inner.start_soon(net.drivers[leader].propose, f"p{i}".encode())
    assert sorted(kvs[leader].applied) == sorted(f"p{i}".encode() for i in range(100))


async def test_read_index_on_leader_and_follower(nursery, autojump_clock):
    net, kvs = await start_group(nursery, [1, 2, 3])
    leader = await wait_leader(net)
    index = await net.drivers[leader].propose(b"w")
    assert await net.drivers[leader].read_index() >= index
    follower = next(i for i in net.drivers if i != leader)
    assert await net.drivers[follower].read_index() >= index
    assert b"w" in kvs[follower].applied  # read after write, at a follower


async def test_new_leader_after_the_leader_is_cut_off(nursery, autojump_clock):
    net, kvs = await start_group(nursery, [1, 2, 3])
    old = await wait_leader(net)
    await net.drivers[old].propose(b"before")
    net.down.add(old)
    new = await wait_leader(net, exclude={old})
    await net.drivers[new].propose(b"after")
    assert kvs[new].applied[-2:] == [b"before", b"after"]


async def test_one_member_group_commits_alone(nursery, autojump_clock):
    net, kvs = await start_group(nursery, [1])
    await wait_leader(net)
    assert await net.drivers[1].propose(b"solo") >= 1
    assert kvs[1].applied == [b"solo"]


async def test_proposal_overwritten_by_a_new_leader_is_reported_lost(nursery, autojump_clock):
    # §5.3/§5.4: an entry the old leader appended but never committed is replaced by the new
    # leader's; the driver sees another term at that index and raises NotLeader (retry).
    net, kvs = await start_group(nursery, [1, 2, 3])
    old = await wait_leader(net)
    await net.drivers[old].propose(b"committed")
    net.down.add(old)
    outcome: list[BaseException | int] = []

    async def doomed() -> None:
        try:
            outcome.append(await net.drivers[old].propose(b"lost"))
        except NotLeader as exc:
            outcome.append(exc)

    nursery.start_soon(doomed)
    new = await wait_leader(net, exclude={old})
    await net.drivers[new].propose(b"winner")
    net.down.discard(old)
    with trio.fail_after(10):
        while not outcome:
            await trio.sleep(0.05)
    assert isinstance(outcome[0], NotLeader)
    with trio.fail_after(10):
        while kvs[old].applied[-1:] != [b"winner"]:
            await trio.sleep(0.05)
    assert b"lost" not in kvs[old].applied
