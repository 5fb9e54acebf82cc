"""A seeded simulation of one Raft group serving a key-value store, in one `trio.run` under
`MockClock(autojump_threshold=0)`: virtual time, so seconds of cluster life take milliseconds.

Faults, all drawn from the seed: the network drops, delays (hence reorders) and duplicates
messages and is partitioned at random; members crash and restart. Each member's disk keeps what
a completed `save()` wrote; a crash while a save is in progress (its fsync not yet done) loses
that write, and the in-memory state machine is rebuilt from the last durable snapshot plus the
log. Clients put (through the log) and get (through ReadIndex) at random members; the history
is checked for linearizability, and Raft's safety properties after every step.
"""

from __future__ import annotations

import heapq
import json
import math
import random
from dataclasses import dataclass, field

import trio
from kv_linearizability import Op
from raft_invariants import Checker

from raft.conf_change import ConfChange, ConfChangeType
from raft.config import Config
from raft.errors import ConfChangeRejected, NotLeader, RaftError
from raft.memory_storage import MemoryStorage
from raft.messages import Message
from raft.node import RawNode, bootstrap_log
from raft.ready import Ready
from raft.types import EntryType, SnapshotMeta

ADD_LEARNER, PROMOTE, REMOVE = (
    ConfChangeType.ADD_LEARNER,
    ConfChangeType.PROMOTE,
    ConfChangeType.REMOVE,
)


@dataclass(frozen=True)
class Params:
    members: int = 3
    tick_s: float = 0.020
    election_timeout_ticks: int = 10
    heartbeat_ticks: int = 3
    delay_s: tuple[float, float] = (0.001, 0.012)
    drop_p: float = 0.03
    duplicate_p: float = 0.02
    disk_s: tuple[float, float] = (0.0005, 0.003)
    fault_window_s: float = 2.5
    clients: int = 3
    ops_per_client: int = 14
    keys: tuple[str, ...] = ("a", "b")
    op_timeout_s: float = 1.0
    compact_every: int = 8
    snapshot_chunk_bytes: int = 48
    settle_s: float = 6.0
    # Founding voters; the other members join as learners, are promoted, then one is removed.
    founding: int = 0  # 0: all members found the group

    def founders(self) -> list[int]:
        return list(range(1, (self.founding or self.members) + 1))


class SimDisk:
    """A member's disk: a synced part that survives crashes (the log, hard state and snapshot)
    and an unsynced part: writes issued but not yet fsynced, lost by a crash."""

    def __init__(self) -> None:
        self.storage = MemoryStorage()  # the synced log and hard state; the core reads these
        self.snapshot: tuple[SnapshotMeta, bytes] | None = None  # synced, with the log
        self.unsynced: list[Ready] = []

    def write(self, rd: Ready) -> None:
        self.unsynced.append(rd)

    async def fsync(self, latency_s: float) -> None:
        await trio.sleep(latency_s)  # a crash now loses everything written since the last fsync
        for rd in self.unsynced:
            if rd.snapshot is not None:
                self.snapshot = (rd.snapshot.meta, rd.snapshot.data)
            meta = rd.snapshot.meta if rd.snapshot else None
            self.storage.save_sync(rd.hard_state, rd.entries, meta)
        self.unsynced.clear()

    def crash(self) -> None:
        self.unsynced.clear()


class SimNode:
    def __init__(self, world: World, node_id: int, voters: list[int]) -> None:
        self.world = world
        self.id = node_id
        self.disk = SimDisk()
        self.storage = self.disk.storage
        if node_id in voters:
            hard_state, entries = bootstrap_log(voters)
            self.storage.save_sync(hard_state, entries)
        self.incarnation = 0
        self.up = False
        self.raw: RawNode | None = None
        self.kv: dict[str, str] = {}
        self.inbox: list[tuple[float, int, Message]] = []
        self.wake: trio.Event | None = None
        self.put_waiters: dict[int, trio.Event] = {}
        self.read_waiters: dict[bytes, tuple[str, trio.Event, list[str | None]]] = {}
        self.read_states: list[tuple[int, bytes]] = []
        self.cancel_scope: trio.CancelScope | None = None

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        p, rng = self.world.params, self.world.rng
        self.incarnation += 1
        applied = self.disk.snapshot[0].index if self.disk.snapshot else 0
        config = Config(
            id=self.id,
            election_timeout_ticks=p.election_timeout_ticks,
            heartbeat_ticks=p.heartbeat_ticks,
            max_inflight_msgs=4,
            max_size_per_msg_bytes=256,
            snapshot_chunk_bytes=p.snapshot_chunk_bytes,
            applied=applied,
        )
        self.raw = RawNode(config, self.storage, random.Random(rng.random()))
        self.kv = json.loads(self.disk.snapshot[1]) if self.disk.snapshot else {}
        self.inbox, self.read_states = [], []
        self.put_waiters, self.read_waiters = {}, {}
        self.next_tick = trio.current_time() + rng.uniform(0, p.tick_s)
        self.up = True

    async def run(self) -> None:
        with trio.CancelScope() as scope:
            self.cancel_scope = scope
            self.start()
            await self._loop()

    def crash(self) -> None:
        """Stop now: what the disk has not synced is gone, so is everything in memory."""
        assert self.cancel_scope is not None
        self.cancel_scope.cancel()
        self.disk.crash()
        self.up = False
        self.raw = None
        self.inbox = []

    # -- the driver loop -----------------------------------------------------------------------

    def poke(self) -> None:
        if self.wake is not None:
            self.wake.set()

    async def _wait_for_work(self) -> None:
        deadline = self.next_tick
        if self.inbox:
            deadline = min(deadline, self.inbox[0][0])
        if deadline <= trio.current_time():
            return
        self.wake = trio.Event()
        with trio.move_on_at(deadline):
            await self.wake.wait()
        self.wake = None

    async def _loop(self) -> None:
        check = self.world.checker
        while True:
            await self._wait_for_work()
            raw = self.raw
            assert raw is not None
            now = trio.current_time()
            while self.inbox and self.inbox[0][0] <= now:
                raw.step(heapq.heappop(self.inbox)[2])
                check.observe(raw)
            if now >= self.next_tick:
                self.next_tick += self.world.params.tick_s
                raw.tick()
                check.observe(raw)
            while raw.has_ready():
                await self._handle_ready(raw, raw.ready())

    async def _handle_ready(self, raw: RawNode, rd: Ready) -> None:
        world = self.world
        for m in rd.messages:
            world.send(m)
        if rd.must_sync():
            self.disk.write(rd)
            await self.disk.fsync(world.rng.uniform(*world.params.disk_s))
            self._check_persisted(rd)
        if rd.snapshot is not None:
            self.kv = json.loads(rd.snapshot.data)
        for m in rd.messages_after_persist:
            world.send(m)
        for e in rd.committed_entries:
            world.checker.on_apply(self.id, e)
            if e.type is EntryType.NORMAL:
                self._apply(e.data)
        self.read_states.extend((rs.index, rs.context) for rs in rd.read_states)
        raw.advance(rd)
        world.checker.observe(raw)
        self._serve_reads(raw)
        for req in rd.snapshot_requests:
            self._send_snapshot_piece(raw, req.to, req.index, req.offset)
        self._maybe_compact(raw)

    def _check_persisted(self, rd: Ready) -> None:
        if rd.entries:
            before = self.storage.term(rd.entries[0].index - 1)
            self.world.checker.on_persist(self.id, rd.entries, before)

    def _apply(self, data: bytes) -> None:
        op_id, key, value = json.loads(data)
        self.kv[key] = value
        waiter = self.put_waiters.pop(op_id, None)
        if waiter is not None:
            waiter.set()

    def _serve_reads(self, raw: RawNode) -> None:
        applied = raw.raft.log.applied
        keep = []
        for index, ctx in self.read_states:
            if index > applied:
                keep.append((index, ctx))
                continue
            waiter = self.read_waiters.pop(ctx, None)
            if waiter is not None:
                key, event, result = waiter
                result.append(self.kv.get(key))
                event.set()
        self.read_states = keep

    def _send_snapshot_piece(self, raw: RawNode, to: int, index: int, offset: int) -> None:
        if self.disk.snapshot is None:
            raw.report_snapshot_failure(to)
            return
        meta, data = self.disk.snapshot
        if index not in (0, meta.index):
            offset = 0  # that snapshot is gone: start over with ours
        piece = data[offset : offset + self.world.params.snapshot_chunk_bytes]
        raw.send_snapshot_piece(to, meta, offset, piece, offset + len(piece) >= len(data))

    def _maybe_compact(self, raw: RawNode) -> None:
        applied = raw.raft.log.applied
        if applied - self.storage.first_index() < self.world.params.compact_every:
            return
        meta = raw.snapshot_meta()
        # Taken at the applied index and synced at once (DESIGN: one LevelDB write batch).
        self.disk.snapshot = (meta, json.dumps(self.kv, sort_keys=True).encode())
        self.storage.create_snapshot(meta.index, meta.conf)
        self.storage.compact_sync(meta.index - self.world.rng.randrange(3))

    # -- client entry points -------------------------------------------------------------------

    def propose_put(self, op_id: int, key: str, value: str) -> trio.Event:
        assert self.raw is not None
        self.raw.propose(json.dumps([op_id, key, value]).encode())
        self.world.checker.observe(self.raw)
        event = self.put_waiters[op_id] = trio.Event()
        self.poke()
        return event

    def read(self, ctx: bytes, key: str) -> tuple[trio.Event, list[str | None]]:
        assert self.raw is not None
        self.raw.read_index(ctx)
        event, result = trio.Event(), []
        self.read_waiters[ctx] = (key, event, result)
        self.poke()
        return event, result


@dataclass
class World:
    seed: int
    params: Params
    rng: random.Random = field(init=False)
    checker: Checker = field(default_factory=Checker)
    nodes: dict[int, SimNode] = field(default_factory=dict)
    history: list[Op] = field(default_factory=list)
    partition: dict[int, int] | None = None  # node id -> side
    faults: bool = True
    next_op: int = 0
    seq: int = 0
    leader_hint: int = 0
    nursery: trio.Nursery | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        ids = list(range(1, self.params.members + 1))
        self.nodes = {i: SimNode(self, i, self.params.founders()) for i in ids}

    def send(self, m: Message) -> None:
        p, rng = self.params, self.rng
        if self.partition and self.partition[m.frm] != self.partition[m.to]:
            return
        copies = 1
        if self.faults:
            if rng.random() < p.drop_p:
                return
            copies += rng.random() < p.duplicate_p
        dest = self.nodes[m.to]
        for _ in range(copies):
            if not dest.up:
                return
            self.seq += 1
            at = trio.current_time() + rng.uniform(*p.delay_s)
            heapq.heappush(dest.inbox, (at, self.seq, m))
        dest.poke()

    def up_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up]

    # -- faults --------------------------------------------------------------------------------

    async def chaos(self) -> None:
        rng, p = self.rng, self.params
        end = trio.current_time() + p.fault_window_s
        while trio.current_time() < end:
            await trio.sleep(rng.expovariate(1 / 0.15))
            action = rng.random()
            if action < 0.35:
                self._crash_restart(rng.choice(list(self.nodes.values())))
            elif action < 0.65 and len(self.nodes) > 1:
                ids = list(self.nodes)
                rng.shuffle(ids)
                cut = rng.randrange(1, len(ids))
                self.partition = {i: int(k < cut) for k, i in enumerate(ids)}
            else:
                self.partition = None
        self.partition = None
        self.faults = False

    def _crash_restart(self, node: SimNode) -> None:
        if not node.up:
            return
        node.crash()
        downtime = self.rng.uniform(0.02, 0.8)
        assert self.nursery is not None
        self.nursery.start_soon(self._restart_later, node, downtime)

    async def _restart_later(self, node: SimNode, downtime: float) -> None:
        await trio.sleep(downtime)
        assert self.nursery is not None
        self.nursery.start_soon(node.run)

    # -- clients -------------------------------------------------------------------------------

    def _pick(self, prefer: int) -> SimNode | None:
        node = self.nodes.get(prefer)
        if node is not None and node.up:
            return node
        up = self.up_nodes()
        return self.rng.choice(up) if up else None

    async def put(self, client: int, key: str) -> None:
        self.next_op += 1
        op_id, value = self.next_op, f"v{self.next_op}"
        call = trio.current_time()
        deadline = call + self.params.op_timeout_s
        while trio.current_time() < deadline:
            node = self._pick(self.leader_hint)
            try:
                assert node is not None
                event = node.propose_put(op_id, key, value)
            except (AssertionError, RaftError) as e:
                hint = e.leader_hint if isinstance(e, NotLeader) else 0
                self.leader_hint = hint or self.rng.choice(list(self.nodes))
                await trio.sleep(0.005)
                continue
            with trio.move_on_at(deadline):
                await event.wait()
                self.history.append(Op(client, "put", key, value, call, trio.current_time()))
                return
            break
        self.history.append(Op(client, "put", key, value, call, math.inf))

    async def get(self, client: int, key: str) -> bool:
        self.next_op += 1
        ctx = f"read-{self.next_op}".encode()
        node = self._pick(self.rng.choice(list(self.nodes)))
        call = trio.current_time()
        try:
            assert node is not None
            event, result = node.read(ctx, key)
        except (AssertionError, RaftError):
            await trio.sleep(0.005)
            return False
        with trio.move_on_after(self.params.op_timeout_s):
            await event.wait()
            self.history.append(Op(client, "get", key, result[0], call, trio.current_time()))
            return True
        return False  # a read with no answer has no effect: leave it out

    async def client(self, client: int) -> None:
        rng = self.rng
        for _ in range(self.params.ops_per_client):
            key = rng.choice(self.params.keys)
            if rng.random() < 0.5:
                await self.put(client, key)
            else:
                await self.get(client, key)
            await trio.sleep(rng.uniform(0, 0.15))

    # -- the run -------------------------------------------------------------------------------

    async def main(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            for node in self.nodes.values():
                nursery.start_soon(node.run)
            async with trio.open_nursery() as clients:
                clients.start_soon(self.chaos)
                for c in range(self.params.clients):
                    clients.start_soon(self.client, c)
                if self.params.founding:
                    clients.start_soon(self.reconfigure)
            await self._settle()
            nursery.cancel_scope.cancel()

    async def _settle(self) -> None:
        """Faults are over: the group must elect a leader, take a write and converge."""
        self.faults = False
        self.partition = None
        with trio.fail_after(self.params.settle_s):
            while not await self.get(-1, "final") or not self._converged():
                await self.put(-1, "final")
                await trio.sleep(0.05)

    def _converged(self) -> bool:
        if len(self.up_nodes()) != len(self.nodes):
            return False
        latest = max(self.up_nodes(), key=lambda n: n.raw.raft.log.applied)  # type: ignore[union-attr]
        conf = latest.raw.conf_state  # type: ignore[union-attr]
        states = {
            (n.raw.raft.log.applied, json.dumps(n.kv, sort_keys=True))  # type: ignore[union-attr]
            for n in self.nodes.values()
            if n.id in conf.voters | conf.learners
        }
        return len(states) == 1

    # -- membership (dissertation §4) ----------------------------------------------------------

    async def reconfigure(self) -> None:
        founders = self.params.founders()
        joiners = [i for i in self.nodes if i not in founders]
        plan = [ConfChange(t, j) for j in joiners for t in (ADD_LEARNER, PROMOTE)]
        plan.append(ConfChange(REMOVE, self.rng.choice(founders)))
        for cc in plan:
            await trio.sleep(self.rng.uniform(0, 0.3))
            await self._change(cc)

    async def _change(self, cc: ConfChange) -> None:
        deadline = trio.current_time() + 2.0
        while trio.current_time() < deadline:
            node = self._pick(self.leader_hint)
            try:
                assert node is not None and node.raw is not None
                node.raw.propose_conf_change(cc)
                node.poke()
            except ConfChangeRejected:
                return  # an earlier attempt took effect already
            except (AssertionError, RaftError) as e:
                hint = e.leader_hint if isinstance(e, NotLeader) else 0
                self.leader_hint = hint or self.rng.choice(list(self.nodes))
            await trio.sleep(0.05)


def params_for(seed: int) -> Params:
    """Even seeds: 3 members; odd: 5; one seed in four starts 5 as 3 and reconfigures."""
    if seed % 2 == 0:
        return Params(members=3)
    return Params(members=5, founding=3 if seed % 4 == 3 else 0)


def run(seed: int, params: Params | None = None) -> World:
    """Run one seed to the end; raises on any violation. Returns the world for inspection."""
    from trio.testing import MockClock

    params = params or params_for(seed)
    world = World(seed, params)
    trio._core._run._r.seed(seed)  # trio's own scheduling tie-breaks, for exact replay
    trio.run(world.main, clock=MockClock(autojump_threshold=0))
    return world
