"""The leader's side of leases (server/cluster/group_leases.py) on a stand-in group: what it
grants, whom it revokes, what it waits for before proposing a change. trio's autojump clock;
the plane is a recorder; the node-process tests are tests/integration/test_cluster_leases.py."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import trio

from server.cluster import protocol as p
from server.cluster.group_leases import GroupLeases
from txn.ids import txn_id
from txn.records import TxnDecision, TxnFinish, TxnLocal, TxnPrepare

ME = 1
LEASE_S = 1.0


@dataclass
class Plane:
    reachable: set[int] = field(default_factory=lambda: {2, 3})
    sent: list[tuple[int, Any]] = field(default_factory=list)

    def register(self, *_: Any) -> None:
        pass

    def send(self, node: int, msg: Any) -> bool:
        if node not in self.reachable:
            return False
        self.sent.append((node, msg))
        return True


@dataclass
class Config:
    lease_s: float = LEASE_S


@dataclass
class Sm:
    lease_horizon_ns: int
    freeze: Any = None
    app: Any = None


class App:
    def locks_of(self, ops: bytes) -> tuple[int, ...]:
        return tuple(ops)  # a stand-in encoding: each byte an inode


class Group(GroupLeases):
    def __init__(self, nursery: trio.Nursery) -> None:
        self.node_id, self.group = ME, 7
        self.plane, self.config = Plane(), Config()
        self.sm = Sm(time.time_ns() + 3600 * 10**9, app=App())
        self.nursery = nursery
        self.proposed: list[bytes] = []
        self._init_leases()
        self._leases_at_leadership()  # the horizon is ahead: quiet for one lease
        self.leases.started -= 10  # ...long ago

    def _serving(self) -> bool:
        return True

    def _spawn(self, fn: Any, *args: Any) -> None:
        self.nursery.start_soon(fn, *args)

    async def _propose(self, data: bytes) -> None:
        self.proposed.append(data)


def get(ino: int) -> tuple[p.GetInodes, p.InodesReply]:
    return p.GetInodes(0, (ino,), lease=True), p.InodesReply((b"inode %d" % ino,))


async def test_grants_go_to_other_nodes_that_asked_and_changes_take_them_back_first(
        autojump_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        g = Group(nursery)
        request, reply = get(10)
        assert g._lease_reply(2, request, reply).lease_s == LEASE_S
        assert g._lease_reply(3, request, reply).lease_s == LEASE_S
        assert g._lease_reply(ME, request, reply).lease_s == 0  # its own reads are local
        asked_without = p.GetInodes(0, (10,))
        assert g._lease_reply(2, asked_without, reply).lease_s == 0

        start = trio.current_time()
        nursery.start_soon(g._propose_change, TxnLocal(txn_id(b"t", 1), bytes([10])), b"rec")
        await trio.sleep(0.01)
        assert sorted(n for n, _ in g.plane.sent) == [2, 3] and g.proposed == []
        assert g._lease_reply(2, request, reply).lease_s == 0  # no grant during the change
        revokes = {n: m for n, m in g.plane.sent}
        await g._on_revoke_ack(2, p.RevokeAck(g.group, revokes[2].change))
        await g._on_revoke_ack(3, p.RevokeAck(g.group, revokes[2].change + 99))  # a stray
        await trio.sleep(0.01)
        assert g.proposed == []  # node 3 has not acknowledged
        await g._on_revoke_ack(3, p.RevokeAck(g.group, revokes[3].change))
        await trio.sleep(0.001)
        assert g.proposed == [b"rec"]
        assert trio.current_time() - start < 0.1  # the acks, not the leases' end
        assert g.leases.holders(10, trio.current_time()) == {}
        # Taken back: not leased again until it went a lease without changes.
        assert g._lease_reply(2, request, reply).lease_s == 0
        await trio.sleep(LEASE_S)
        assert g._lease_reply(2, request, reply).lease_s == LEASE_S


async def test_an_unreachable_holder_is_waited_out_and_records_that_change_nothing_pass(
        autojump_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        g = Group(nursery)
        request, reply = get(10)
        granted = trio.current_time()
        assert g._lease_reply(2, request, reply).lease_s == LEASE_S
        g.plane.reachable.clear()  # node 2 went away
        await g._propose_change(TxnPrepare(txn_id(b"t", 2), 9, (7, 9), (10,), b"x"), b"prep")
        waited = trio.current_time() - granted
        assert LEASE_S < waited < LEASE_S + 0.2 and g.proposed == [b"prep"]
        for record in (TxnFinish(txn_id(b"t", 2), True),
                       TxnDecision(txn_id(b"t", 3), False, (9,))):  # no ops of this group
            before = trio.current_time()
            await g._propose_change(record, b"plain")
            assert trio.current_time() == before


async def test_a_new_leader_is_quiet_for_one_lease_only_if_the_horizon_is_ahead(
        autojump_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        g = Group(nursery)
        g._leases_at_leadership()  # the predecessor's horizon is ahead
        start = trio.current_time()
        await g._propose_change(TxnLocal(txn_id(b"t", 4), bytes([11])), b"a")
        assert trio.current_time() - start > LEASE_S  # its leases may still run somewhere
        g.sm.lease_horizon_ns = time.time_ns() - 1  # no lease out any more
        g._leases_at_leadership()
        start = trio.current_time()
        await g._propose_change(TxnLocal(txn_id(b"t", 5), bytes([11])), b"b")
        assert trio.current_time() == start


async def test_no_grant_without_a_horizon_covering_it_and_one_is_proposed(
        autojump_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        g = Group(nursery)
        extended: list[int] = []

        class Driver:
            async def propose(self, data: bytes) -> int:
                extended.append(len(data))
                g.sm.lease_horizon_ns = time.time_ns() + 60 * 10**9
                return 1

        g.driver = Driver()
        g.sm.lease_horizon_ns = 0
        request, reply = get(12)
        assert g._lease_reply(2, request, reply).lease_s == 0
        await trio.sleep(0.01)
        assert len(extended) == 1  # the horizon entry, proposed once
        assert g._lease_reply(2, request, reply).lease_s == LEASE_S
