"""raft/driver.py over MemoryStorage and an in-memory network, under pytest-trio's autojump
MockClock (the `autojump_clock` fixture): no real time passes."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
import trio

from raft.config import Config
from raft.driver import DriverConfig, RaftDriver, ReadIndexTimeout
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


async def test_read_index_of_a_cut_off_leader_times_out(nursery, autojump_clock):
    """A leader that cannot reach a quorum cannot confirm a read: the caller gets
    ReadIndexTimeout (a NotLeader) after the timeout instead of waiting forever."""
    net, _kvs = await start_group(nursery, [1, 2, 3])
    leader = await wait_leader(net)
    await net.drivers[leader].propose(b"w")
    net.down.add(leader)
    start = trio.current_time()
    with pytest.raises(ReadIndexTimeout):
        await net.drivers[leader].read_index(timeout_s=2.0)
    assert trio.current_time() - start >= 2.0
    with pytest.raises(NotLeader):  # the same failure to callers that retry on NotLeader
        await net.drivers[leader].read_index(timeout_s=0.5)


async def test_new_leader_after_the_leader_is_cut_off(nursery, autojump_clock):
    net, kvs = await start_group(nursery, [1, 2, 3])
    old = await wait_leader(net)
    await net.drivers[old].propose(b"before")
    net.down.add(old)
    new = await wait_leader(net, exclude={old})
    await net.drivers[new].propose(b"after")
    assert kvs[new].applied[-2:] == [b"before", b"after"]


async def test_leader_changes_are_counted_by_every_member(nursery, autojump_clock):
    """`leader_changes` (a metric): one per new leader a member learns of, as etcd counts."""
    net, _ = await start_group(nursery, [1, 2, 3])
    old = await wait_leader(net)
    with trio.fail_after(5):
        while any(d.leader_id() != old for d in net.drivers.values()):
            await trio.sleep(0.05)
    assert [d.leader_changes for d in net.drivers.values()] == [1, 1, 1]
    net.down.add(old)
    new = await wait_leader(net, exclude={old})
    with trio.fail_after(5):
        while any(d.leader_id() != new for i, d in net.drivers.items() if i != old):
            await trio.sleep(0.05)
    assert {i: d.leader_changes for i, d in net.drivers.items()} == {
        i: 1 if i == old else 2 for i in net.drivers}
    net.down.clear()  # the old leader hears of the new one
    with trio.fail_after(5):
        while net.drivers[old].leader_id() != new:
            await trio.sleep(0.05)
    assert net.drivers[old].leader_changes == 2


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


class GatedStorage(MemoryStorage):
    """Saving an entry whose data has a gate waits until the gate is set."""

    def __init__(self, gates: dict[bytes, trio.Event]) -> None:
        super().__init__()
        self.gates = gates
        self.waiting: bytes | None = None

    async def save(self, hard_state, entries, snapshot=None):  # type: ignore[no-untyped-def]
        for e in entries:
            if e.data in self.gates:
                self.waiting = e.data
                await self.gates[e.data].wait()
                self.waiting = None
        await super().save(hard_state, entries, snapshot)


async def test_committed_entries_apply_while_the_next_entries_are_saved(nursery, autojump_clock):
    # The driver overlaps persisting a Ready's new entries with applying its committed ones
    # (already durable): a proposer is answered although the next save has not returned.
    gates = {b"A": trio.Event(), b"B": trio.Event()}
    storage = GatedStorage(gates)
    storage.save_sync(*bootstrap_log([1]))
    kv = KV()
    driver = RaftDriver(RawNode(Config(id=1), storage, random.Random(1)), storage,
                        Network().transport(1), kv.apply)
    await nursery.start(driver.run)
    with trio.fail_after(10):
        while not driver.is_leader():
            await trio.sleep(0.05)
    done: list[bytes] = []

    async def propose(data: bytes) -> None:
        await driver.propose(data)
        done.append(data)

    nursery.start_soon(propose, b"A")
    with trio.fail_after(5):
        while storage.waiting != b"A":
            await trio.sleep(0.01)
    nursery.start_soon(propose, b"B")  # joins the next Ready, with A committed
    await trio.sleep(0.01)
    gates[b"A"].set()
    with trio.fail_after(5):
        while done != [b"A"]:
            await trio.sleep(0.01)
    assert storage.waiting == b"B" and kv.applied == [b"A"]
    gates[b"B"].set()
    with trio.fail_after(5):
        while done != [b"A", b"B"]:
            await trio.sleep(0.01)
    assert kv.applied == [b"A", b"B"]


async def test_a_lone_voter_applies_an_entry_only_after_saving_it(nursery, autojump_clock):
    # A one-voter group commits an entry as it appends it (raft/replication.py), so one Ready
    # holds it to save and to apply: the driver must not apply it (nor answer its proposer)
    # before the save returns.
    gates = {b"A": trio.Event()}
    storage = GatedStorage(gates)
    storage.save_sync(*bootstrap_log([1]))
    kv = KV()
    node = RawNode(Config(id=1), storage, random.Random(1))
    driver = RaftDriver(node, storage, Network().transport(1), kv.apply)
    await nursery.start(driver.run)
    with trio.fail_after(10):
        while not driver.is_leader():
            await trio.sleep(0.05)
    done: list[int] = []

    async def propose() -> None:
        done.append(await driver.propose(b"A"))

    nursery.start_soon(propose)
    with trio.fail_after(5):
        while storage.waiting != b"A":
            await trio.sleep(0.01)
    await trio.sleep(1)  # time for a wrong driver to apply early
    assert node.status().commit >= storage.last_index() + 1  # committed already (in memory)
    assert kv.applied == [] and done == []
    gates[b"A"].set()
    with trio.fail_after(5):
        while not done:
            await trio.sleep(0.01)
    assert kv.applied == [b"A"] and storage.last_index() == done[0]
