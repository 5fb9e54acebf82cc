"""A seeded simulation of transactions across 3-5 groups in one process (TESTING.md tier 3).

Each group is modelled as an atomic replicated log: proposals queue up and are applied in order
to the group's state (a MemKv holding the txn tables and the application's data). A leader change
("crash") loses the leader's in-memory coordinator and participant state and an unreplicated
suffix of its proposals, keeps everything applied, and after a while a new leader rebuilds its
cores from the state machine (BecameLeader). Crashes are also injected at each step of the
protocol: just before a txn record is proposed and just after one is applied (before the leader
acts on it), for every record type. The network drops, duplicates and reorders messages,
including client requests and replies; clients retry the same txn id on silence (exactly once)
and retry transient aborts (conflict, timeout, presumed abort) with a new attempt.

After the faulty phase the network heals and the world runs to quiescence; then `check()`:
every txn all-or-nothing across its groups and agreeing with its decision and with every reply a
client saw; no lock, prepared record or open decision left; racing creates of one name give
exactly one success and one EEXIST; money is conserved; every name points at a live inode and
every inode has exactly one name.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from txn_sim_app import (
    ACCOUNT_BASE,
    DIR_BASE,
    INODE_BASE,
    START_BALANCE,
    SimApp,
    dirent_key,
    encode_ops,
    inode_key,
    mark_key,
    total_balance,
)

from txn import coordinator as co
from txn import participant as pa
from txn.actions import Action, Propose, Reply, RetryConfig, Send
from txn.ids import TxnId, txn_id
from txn.kv import MemKv, Overlay
from txn.messages import (
    DecisionNotice,
    FinishAck,
    OutcomeAnswer,
    OutcomeQuery,
    PrepareRequest,
    PrepareVote,
)
from txn.records import CONFLICT, PRESUMED_ABORT, TIMEOUT, Outcome, TxnRecord
from txn.state import TxnState, TxnStateConfig

TRANSIENT = {CONFLICT, TIMEOUT, PRESUMED_ABORT}


@dataclass(frozen=True)
class Params:
    groups: int = 3
    clients: int = 5
    ops_per_client: int = 8
    accounts: int = 6
    dirs: int = 4
    fault_steps: int = 3000
    check_every: int = 7  # steps between runs of the safety checker
    max_steps: int = 40_000
    drop: float = 0.08
    dup: float = 0.05
    leader_change: float = 0.002
    partition: float = 0.001  # per step: cut one group off for a while (its leader stays)
    crash_at_step: float = 0.02  # before a proposal / after an apply, per txn record
    tick_every: int = 3
    client_timeout_ticks: int = 60
    max_attempts: int = 200
    max_outcomes: int = 100_000  # remembered outcomes per group (exactly-once window)


@dataclass
class SimGroup:
    gid: int
    kv: MemKv
    state: TxnState
    coord: co.Coordinator
    part: pa.Participant
    pending: list[TxnRecord] = field(default_factory=list)
    leader: bool = True
    down_until: int = 0
    cut_until: int = 0  # partitioned: messages to and from this group are lost


@dataclass
class Client:
    cid: int
    plan: list[str]  # kinds of logical ops still to do
    race: tuple[int, str, int] | None = None  # (dir, name, ino) of a racing create
    req_id: int = 0
    attempt: int = 0
    txn: TxnId | None = None
    parts: dict[int, list[tuple]] = field(default_factory=dict)
    coordinator: int = 0
    wait: int = 0  # ticks since the request went out
    backoff: int = 0  # ticks before the next attempt
    results: list[tuple[str, str]] = field(default_factory=list)  # (kind, "commit"|reason)
    kind: str = ""


class World:
    def __init__(self, seed: int, params: Params | None = None) -> None:
        self.seed = seed
        self.p = params or Params(groups=3 + seed % 3)
        self.rng = random.Random(seed)
        self.app = SimApp()
        # Short timeouts in some seeds: presumed aborts race with commits, retries pile up.
        retry = RetryConfig(self.rng.choice([1, 2, 4]), self.rng.choice([8, 32, 64]))
        self.co_config = co.CoordinatorConfig(retry, self.rng.choice([6, 15, 40]))
        self.pa_config = pa.ParticipantConfig(retry, self.rng.choice([3, 12, 80]))
        self.groups = [self._new_group(g) for g in range(self.p.groups)]
        self.net: list[tuple[str, int, object]] = []
        self.step = 0
        self.next_ino = INODE_BASE
        self.txn_groups: dict[TxnId, set[int]] = {}  # every txn started -> its groups
        self.txn_coord: dict[TxnId, int] = {}
        self.client_of: dict[TxnId, int] = {}
        self.seen: dict[TxnId, Outcome] = {}  # outcomes clients received
        self.stats: dict[str, int] = {}
        self.clients = self._new_clients()

    # -- setup ---------------------------------------------------------------------------

    def _new_group(self, gid: int) -> SimGroup:
        state = TxnState(self.app, TxnStateConfig(max_outcomes=self.p.max_outcomes))
        g = SimGroup(gid, MemKv(), state, *self._cores(gid))
        g.coord.handle(co.BecameLeader(()))
        g.part.handle(pa.BecameLeader(()))
        return g

    def _new_clients(self) -> list[Client]:
        kinds = ["transfer", "create", "rename"]
        clients = [
            Client(c, [self.rng.choice(kinds) for _ in range(self.p.ops_per_client)])
            for c in range(self.p.clients)
        ]
        race_dir = DIR_BASE + self.rng.randrange(self.p.dirs)
        for c in clients[:2]:  # two clients race to create the same name first
            c.race = (race_dir, "race", self._fresh_ino())
            c.plan.insert(0, "race")
        return clients

    def _cores(self, gid: int) -> tuple[co.Coordinator, pa.Participant]:
        return co.Coordinator(gid, self.co_config), pa.Participant(gid, self.app, self.pa_config)

    def _fresh_ino(self) -> int:
        self.next_ino += 1
        return self.next_ino

    def owner(self, obj: int) -> int:
        return (obj * 7 + obj // 3) % self.p.groups

    # -- the main loop -------------------------------------------------------------------

    def run(self) -> World:
        for c in self.clients:
            self._next_op(c)
        while self.step < self.p.max_steps:
            self.step += 1
            self._one_step()
            if self.step % self.p.check_every == 0:
                self.check_safety()
            if self.step > self.p.fault_steps and self._quiescent():
                return self
        raise AssertionError(f"no quiescence after {self.step} steps: {self._stuck()}")

    @property
    def faulty(self) -> bool:
        return self.step <= self.p.fault_steps

    def _one_step(self) -> None:
        if self.step % self.p.tick_every == 0:
            self._tick()
        for g in self.groups:
            if not g.leader and self.step >= g.down_until:
                self._elect(g)
        r = self.rng.random()
        busy = [g for g in self.groups if g.pending]
        if busy and (r < 0.4 or not self.net):
            self._apply_one(self.rng.choice(busy))
        elif self.net:
            self._deliver()
        if self.faulty and self.rng.random() < self.p.leader_change:
            self._crash(self.rng.choice(self.groups))
        if self.faulty and self.rng.random() < self.p.partition:
            self.rng.choice(self.groups).cut_until = self.step + self.rng.randint(20, 300)
            self._count("partition")

    def _cut(self, g: SimGroup) -> bool:
        return self.step < g.cut_until

    def _quiescent(self) -> bool:
        return (
            not self.net
            and all(not c.plan and c.txn is None for c in self.clients)
            and all(g.leader and not g.pending for g in self.groups)
            and all(not g.coord.inflight() and not g.part.waiting() for g in self.groups)
        )

    def _stuck(self) -> str:
        return repr({
            "clients": [(c.cid, c.kind, c.attempt, c.plan) for c in self.clients if c.txn],
            "coord": {g.gid: list(g.coord.inflight().values()) for g in self.groups},
            "waiting": {g.gid: len(g.part.waiting()) for g in self.groups},
            "net": len(self.net),
        })

    # -- groups --------------------------------------------------------------------------

    def _tick(self) -> None:
        for g in self.groups:
            if g.leader:
                self._perform(g, g.coord.handle(co.Tick()) + g.part.handle(pa.Tick()))
        for c in self.clients:
            self._client_tick(c)

    def _apply_one(self, g: SimGroup) -> None:
        """Apply the next 1-3 committed records in one batch (read-your-writes across
        records), then let the leader act on each result."""
        records = g.pending[: self.rng.randint(1, 3)]
        del g.pending[: len(records)]
        batch = Overlay(g.kv)
        results = [g.state.apply(record, batch, batch) for record in records]
        batch.commit()
        for record, result in zip(records, results, strict=True):
            if not g.leader:
                return
            if self.faulty and self.rng.random() < self.p.crash_at_step:
                # After the record is durable, before the leader acts on it.
                self._crash(g, f"after {type(record).__name__}")
                return
            event = co.LogApplied(result)
            self._perform(g, g.coord.handle(event) + g.part.handle(pa.LogApplied(result)))

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def _crash(self, g: SimGroup, where: str = "random") -> None:
        if not g.leader:
            return
        self._count(f"crash {where}")
        lost = g.coord.handle(co.LostLeadership()) + g.part.handle(pa.LostLeadership())
        g.leader = False
        self._perform(g, [a for a in lost if isinstance(a, Reply)])
        keep = self.rng.randint(0, len(g.pending))  # a replicated prefix survives
        survivors, g.pending = g.pending[:keep], []
        for record in survivors:
            batch = Overlay(g.kv)
            g.state.apply(record, batch, batch)
            batch.commit()
        g.down_until = self.step + self.rng.randint(5, 60)

    def _elect(self, g: SimGroup) -> None:
        g.coord, g.part = self._cores(g.gid)
        g.leader = True
        actions = g.coord.handle(co.BecameLeader(tuple(g.state.decisions(g.kv))))
        actions += g.part.handle(pa.BecameLeader(tuple(g.state.prepared(g.kv))))
        self._perform(g, actions)

    def _perform(self, g: SimGroup, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Propose):
                if not g.leader:
                    return
                if self.faulty and self.rng.random() < self.p.crash_at_step:
                    self._crash(g, f"before {type(a.record).__name__}")  # not in the log
                    return
                g.pending.append(a.record)
            elif isinstance(a, Send):
                if not self._cut(g):
                    self.net.append(("g", a.group, a.message))
            else:
                assert isinstance(a, Reply)
                self.net.append(("c", self.client_of[a.txn_id], a))

    # -- network -------------------------------------------------------------------------

    def _deliver(self) -> None:
        i = self.rng.randrange(len(self.net))  # any in-flight message: reordering
        item = self.net[i]
        if self.faulty and self.rng.random() < self.p.dup:
            pass  # duplicated: leave a copy in flight
        else:
            self.net[i] = self.net[-1]
            self.net.pop()
        if self.faulty and self.rng.random() < self.p.drop:
            return
        kind, dest, msg = item
        if kind == "c":
            self._client_reply(self.clients[dest], msg)  # type: ignore[arg-type]
            return
        g = self.groups[dest]
        if g.leader and not self._cut(g):
            self._perform(g, self._route(g, msg))

    def _route(self, g: SimGroup, msg: object) -> list[Action]:
        if isinstance(msg, co.Start):
            known = g.state.outcome(g.kv, msg.txn_id)
            return g.coord.handle(co.Start(msg.txn_id, msg.parts, known))
        to_coord = _TO_COORDINATOR.get(type(msg))
        if to_coord is not None:
            return g.coord.handle(to_coord(msg))
        to_part = _TO_PARTICIPANT[type(msg)]
        return g.part.handle(to_part(msg))

    # -- clients -------------------------------------------------------------------------

    def _next_op(self, c: Client) -> None:
        c.txn = None
        if not c.plan:
            return
        c.kind = c.plan.pop(0)
        c.req_id += 1
        c.attempt = 0
        self._new_attempt(c)

    def _new_attempt(self, c: Client) -> None:
        c.txn = txn_id(c.cid, c.req_id, c.attempt)
        primary, parts = self._build(c)
        c.coordinator = self.owner(primary)
        parts.setdefault(c.coordinator, [])
        for ops in parts.values():
            ops.append(("mark", c.txn))
        c.parts = parts
        self.txn_groups[c.txn] = set(parts)
        self.txn_coord[c.txn] = c.coordinator
        self.client_of[c.txn] = c.cid
        self._send_start(c)

    def _send_start(self, c: Client) -> None:
        assert c.txn is not None
        parts = tuple((g, encode_ops(ops)) for g, ops in sorted(c.parts.items()))
        self.net.append(("g", c.coordinator, co.Start(c.txn, parts)))
        c.wait = 0

    def _build(self, c: Client) -> tuple[int, dict[int, list[tuple]]]:
        parts: dict[int, list[tuple]] = {}

        def add(obj: int, op: tuple) -> None:
            parts.setdefault(self.owner(obj), []).append(op)

        rng = self.rng
        if c.kind == "race":
            assert c.race is not None
            d, name, ino = c.race
            add(d, ("mkname", d, name, ino))
            add(ino, ("mkinode", ino))
            return d, parts
        if c.kind == "transfer":
            a, b = rng.sample(range(ACCOUNT_BASE, ACCOUNT_BASE + self.p.accounts), 2)
            amount = rng.randint(1, 80)
            add(a, ("add", a, -amount))
            add(b, ("add", b, amount))
            return a, parts
        d = DIR_BASE + rng.randrange(self.p.dirs)
        name = f"n{rng.randrange(6)}"
        if c.kind == "create":
            ino = self._fresh_ino()
            add(d, ("mkname", d, name, ino))
            add(ino, ("mkinode", ino))
            return d, parts
        src, src_name, ino = self._some_name()
        add(src, ("rmname", src, src_name, ino))
        add(d, ("mkname", d, name, ino))
        return src, parts

    def _some_name(self) -> tuple[int, str, int]:
        """An existing name (read from a group's state; it may be gone by the time the txn
        runs, which then fails with ENOENT), or a missing one if there is none."""
        src = DIR_BASE + self.rng.randrange(self.p.dirs)
        prefix = dirent_key(src, "")
        entries = self.groups[self.owner(src)].kv.scan(prefix, 100)
        entries = [e for e in entries if not e[0].endswith(b"/race")]  # the race stays put
        if not entries:
            return src, "n0", 0
        key, raw = self.rng.choice(entries)
        return src, key[len(prefix):].decode(), int(raw)

    def _client_tick(self, c: Client) -> None:
        if c.txn is None:
            return
        if c.backoff > 0:
            c.backoff -= 1
            if c.backoff == 0:
                self._new_attempt(c)
            return
        c.wait += 1
        if c.wait >= self.p.client_timeout_ticks:
            self._send_start(c)  # same txn id: the groups apply it at most once

    def _client_reply(self, c: Client, reply: Reply) -> None:
        outcome = reply.outcome
        if outcome is not None:
            seen = self.seen.setdefault(reply.txn_id, outcome)
            assert seen == outcome, f"txn {reply.txn_id.hex()}: replies {seen} then {outcome}"
        if reply.txn_id != c.txn or c.backoff > 0:
            return  # a stale or duplicated reply
        self._count("reply none" if outcome is None else f"reply {outcome.reason or 'commit'}")
        if outcome is None:
            c.wait = max(c.wait, self.p.client_timeout_ticks - 5)  # retry soon, same id
        elif outcome.commit or outcome.reason not in TRANSIENT:
            c.results.append((c.kind, "commit" if outcome.commit else outcome.reason))
            self._next_op(c)
        else:
            c.attempt += 1
            assert c.attempt < self.p.max_attempts, f"client {c.cid} gave up on {c.kind}"
            c.backoff = self.rng.randint(1, 10 + 5 * min(c.attempt, 8))

    # -- the checkers --------------------------------------------------------------------

    def check_safety(self) -> None:
        """After any step: locks belong to prepared txns, and a txn's effects appear only once
        its coordinator's log says commit (so an abort can never leave half of it behind)."""
        for g in self.groups:
            held = set(g.state.locks(g.kv).values())
            prepared = {p.txn_id for p in g.state.prepared(g.kv)}
            assert held <= prepared, f"group {g.gid}: locks of unprepared txns"
        for t, groups in self.txn_groups.items():
            if any(self.groups[g].kv.get(mark_key(t)) is not None for g in groups):
                coord = self.groups[self.txn_coord[t]]
                outcome = coord.state.outcome(coord.kv, t)
                assert outcome is not None and outcome.commit, f"txn {t.hex()}: early effects"

    def check(self) -> None:
        for g in self.groups:
            assert not g.state.locks(g.kv), f"group {g.gid}: locks held {g.state.locks(g.kv)}"
            assert not g.state.prepared(g.kv), f"group {g.gid}: prepared left"
            assert not g.state.decisions(g.kv), f"group {g.gid}: decisions not forgotten"
        for t, groups in self.txn_groups.items():
            self._check_txn(t, groups)
        self._check_races()
        accounts = list(range(ACCOUNT_BASE, ACCOUNT_BASE + self.p.accounts))
        total = total_balance([g.kv for g in self.groups], accounts)
        assert total == START_BALANCE * len(accounts), f"money: {total}"
        self._check_namespace()

    def _check_txn(self, t: TxnId, groups: set[int]) -> None:
        applied = {g for g in groups if self.groups[g].kv.get(mark_key(t)) is not None}
        assert applied in (set(), groups), f"txn {t.hex()}: applied in {applied} of {groups}"
        coord = self.groups[self.txn_coord[t]]
        outcome = coord.state.outcome(coord.kv, t)
        committed = outcome is not None and outcome.commit
        assert committed == bool(applied), f"txn {t.hex()}: {outcome} but applied in {applied}"
        seen = self.seen.get(t)
        assert seen is None or seen.commit == committed, f"txn {t.hex()}: told {seen}"

    def _check_races(self) -> None:
        racers = [c for c in self.clients if c.race is not None]
        results = sorted(next(r for k, r in c.results if k == "race") for c in racers)
        assert results == ["EEXIST", "commit"], f"racing creates: {results}"

    def _check_namespace(self) -> None:
        names: list[int] = []
        inodes: set[int] = set()
        for g in self.groups:
            for k, v in g.kv.items():
                if k.startswith(b"app/d/"):
                    names.append(int(v))
                elif k.startswith(b"app/i/"):
                    inodes.add(int(k[len(b"app/i/"):]))
        assert sorted(names) == sorted(inodes), f"names {sorted(names)} inodes {sorted(inodes)}"
        assert all(self.groups[self.owner(i)].kv.get(inode_key(i)) for i in inodes)


_TO_COORDINATOR = {
    PrepareVote: co.VoteReceived,
    FinishAck: co.AckReceived,
    OutcomeQuery: co.QueryReceived,
}
_TO_PARTICIPANT = {
    PrepareRequest: pa.PrepareReceived,
    DecisionNotice: pa.DecisionReceived,
    OutcomeAnswer: pa.DecisionReceived,
}


def run(seed: int, params: Params | None = None) -> World:
    world = World(seed, params).run()
    world.check()
    return world
