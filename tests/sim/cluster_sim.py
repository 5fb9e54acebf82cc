"""A seeded simulation of the cluster's namespace over 3-5 groups in one trio.run (TESTING.md
tier 3; the pattern of tests/sim/txn_sim.py).

Each group is an atomic replicated log over a MemKv: the real TxnState + fsops.FsApplication,
the real Coordinator and Participant cores, queries.answer for reads, and an in-memory chunk
store. A fake Router hands the gateways' requests to the groups (waiting while a group has no
leader), and several real ClusterBackend clients run random mixes of namespace operations,
writes, truncates and reads.

Faults while the clients run: leader crashes at every protocol step (before a txn record is
proposed, after it is applied and before the leader acts, and between a batch's data effects
and its state write), random leader changes (in-memory core state lost, an unreplicated suffix
of proposals lost, a new leader rebuilt with BecameLeader), partitions (a group cut off for a
while: its messages lost, gateways wait), txn messages dropped, duplicated and reordered,
RunTxn replies lost (the gateway resends the same txn id), and calls answered STALE_RING (the
gateway re-plans).

Then the network heals, the world runs to quiescence and `check()` runs: no lock, prepared
record or open decision left; the fs invariants of server/fs/fsck.py over the union of the
groups (entries point at live inodes, link counts, one name per directory, `..`); every inode
reachable from the root and placed in its ring group; no orphan chunk and no chunk byte past
EOF; each client's private files read back exactly as its model says (also during the run);
of racing EXCLUSIVE creates of one name exactly one succeeds. Every transaction being
all-or-nothing shows in these: a half-applied create, remove, rename or write breaks one.
"""

from __future__ import annotations

import bisect
import random
import tempfile
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing

from nfs_gateway.backend import (
    CreateMode,
    Cred,
    Exists,
    FileId,
    FileType,
    FsError,
    Jukebox,
    SetAttrs,
    StableHow,
)
from server.cluster import fsops, queries
from server.cluster import protocol as p
from server.cluster.gateway import ClusterBackend
from server.cluster.inoalloc import InoAllocator
from server.fs import fsck as fs_fsck
from server.fs import keys
from server.fs.config import FsConfig
from server.fs.record_codec import decode
from server.fs.records import Dirent, Inode
from server.rpc.frames import RemoteError
from storage.chunkio import spans
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
from txn.records import TxnLocal, TxnRecord
from txn.state import TxnState

ROOT = Cred(0, 0)
NAMES = [b"n%d" % i for i in range(6)]
STEP_S = 0.001  # virtual time per world step
CALL_TIMEOUT_S = 30.0  # a router call waits this long for a leader, then Unavailable
TXN_WAIT_S = 1.0  # RunTxn answers "undecided" after this


@dataclass(frozen=True)
class Params:
    groups: int = 3
    clients: int = 5
    ops_per_client: int = 60
    chunk_size: int = 4096
    inline_max_bytes: int = 1024
    drop: float = 0.05
    dup: float = 0.05
    lose_reply: float = 0.03
    leader_change: float = 0.002
    partition: float = 0.001  # per step: cut one group off for a while (its leader stays)
    ring_changed: float = 0.01  # per gateway call: answered STALE_RING
    crash_at_step: float = 0.02
    tick_every: int = 3
    check_every: int = 11
    max_steps: int = 400_000


class SimRing:
    """Placement over groups 1..n by a fixed integer mix (not uhashring: only determinism
    and spread matter here)."""

    def __init__(self, n: int) -> None:
        self.groups = tuple(range(1, n + 1))
        self.version = 1

    def _place(self, key: int) -> int:
        x = (key * 0x9E3779B97F4A7C15) & ((1 << 64) - 1)
        x ^= x >> 31
        return self.groups[x % len(self.groups)]

    def group_of_inode(self, ino: int) -> int:
        return self._place(ino)

    def group_of_chunk(self, ino: int, index: int) -> int:
        return self._place(ino) if index == 0 else self._place(ino * 1_000_003 + index)


class MemChunks:
    """The part of storage.chunks.ChunkStore that fsops and queries use, in memory."""

    def __init__(self) -> None:
        self.root = tempfile.gettempdir()  # FSSTAT's statvfs
        self.data: dict[tuple[int, int], bytearray] = {}

    def pwrite_sync(self, ino: int, chunk_size: int, offset: int, data: memoryview) -> list[int]:
        pos = 0
        for index, inner, n in spans(offset, len(data), chunk_size):
            buf = self.data.setdefault((ino, index), bytearray())
            if len(buf) < inner + n:
                buf.extend(bytes(inner + n - len(buf)))
            buf[inner:inner + n] = data[pos:pos + n]
            pos += n
        return []

    def pread_sync(self, ino: int, chunk_size: int, offset: int, count: int) -> bytes:
        out = bytearray()
        for index, inner, n in spans(offset, count, chunk_size):
            piece = bytes(self.data.get((ino, index), b"")[inner:inner + n])
            out += piece + bytes(n - len(piece))
        return bytes(out)

    def truncate_sync(self, ino: int, chunk_size: int, size: int) -> None:
        keep, inner = divmod(size, chunk_size)
        for key in [k for k in self.data if k[0] == ino]:
            if key[1] > keep or (key[1] == keep and inner == 0):
                del self.data[key]
            elif key[1] == keep:
                del self.data[key][inner:]

    def fsync_sync(self, ino: int) -> None:
        """Memory is as durable as the simulated node: nothing to do."""

    def delete_sync(self, ino: int) -> None:
        for key in [k for k in self.data if k[0] == ino]:
            del self.data[key]


class SimView:
    """A txn KvView over a MemKv with the range scan READDIR resumes with."""

    def __init__(self, kv: MemKv) -> None:
        self._kv = kv

    def get(self, key: bytes) -> bytes | None:
        return self._kv.get(key)

    def scan(self, prefix: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        return self._kv.scan(prefix, limit)

    def scan_from(self, prefix: bytes, start: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        ks = self._kv._keys
        i = bisect.bisect_left(ks, start)
        out = []
        while i < len(ks) and len(out) < limit and ks[i].startswith(prefix):
            out.append((ks[i], self._kv.get(ks[i])))
            i += 1
        return out  # type: ignore[return-value]


@dataclass
class SimGroup:
    gid: int
    kv: MemKv
    app: fsops.FsApplication
    state: TxnState
    coord: co.Coordinator
    part: pa.Participant
    chunks: MemChunks = field(default_factory=MemChunks)
    pending: list[TxnRecord] = field(default_factory=list)
    leader: bool = True
    down_until: int = 0
    cut_until: int = 0  # partitioned: messages to and from it are lost, gateways wait
    waiters: dict[TxnId, list[tuple[trio.Event, list[Any]]]] = field(default_factory=dict)


class MemAllocStore:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    async def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    async def write(self, batch: list[tuple[bytes, bytes | None]], *, sync: bool) -> None:
        for k, v in batch:
            if v is not None:
                self.data[k] = v


class SimRouter:
    """protocol.Router over the simulated groups."""

    def __init__(self, world: World) -> None:
        self.world = world

    @property
    def ring(self) -> SimRing:
        return self.world.ring

    async def call(self, group: int, request: Any) -> Any:
        w = self.world
        g = w.groups[group]
        await trio.sleep(0)
        if w.faulty and w.rng.random() < w.p.ring_changed:
            # STALE_RING is answered before anything runs: the gateway re-plans (here against
            # the same placement, which is what a ring change that moved nothing of it is).
            w.count("ring changed")
            raise p.RingChanged("simulated")
        with trio.move_on_after(CALL_TIMEOUT_S):
            while True:
                while not g.leader or w.cut(g):
                    await w.pause(5)
                if isinstance(request, p.RunTxn):
                    return await w.run_txn(g, request)
                try:
                    return queries.answer(request, SimView(g.kv), g.chunks, group)  # type: ignore[arg-type]
                except RemoteError as e:  # held by a prepared txn: as router.py, retry soon
                    assert e.code == p.UNAVAILABLE, e
                    w.count("read waits for a lock")
                    await w.pause(5)
        raise p.Unavailable(f"group {group} has no leader")


class World:
    def __init__(self, seed: int, params: Params | None = None) -> None:
        self.seed = seed
        self.p = params or Params(groups=3 + seed % 3)
        self.rng = random.Random(seed)
        self.ring = SimRing(self.p.groups)
        retry = RetryConfig(self.rng.choice([1, 2, 4]), self.rng.choice([8, 32]))
        self.co_config = co.CoordinatorConfig(retry, self.rng.choice([15, 40]))
        self.pa_config = pa.ParticipantConfig(retry, self.rng.choice([12, 80]))
        self.groups = {g: self._new_group(g) for g in self.ring.groups}
        self.config = FsConfig(chunk_size=self.p.chunk_size,
                               inline_max_bytes=self.p.inline_max_bytes)
        self.net: list[tuple[int, object]] = []
        self.step = 0
        self.faulty = True
        self.stats: dict[str, int] = {}
        self.clock_ns = 1_700_000_000 * 10**9
        self.txns: dict[TxnId, tuple[int, tuple[int, ...]]] = {}  # -> coordinator, participants
        self.told: dict[TxnId, bool] = {}  # what a gateway was told: committed?

    # -- groups ----------------------------------------------------------------------------

    def _new_group(self, gid: int) -> SimGroup:
        app = fsops.FsApplication()
        g = SimGroup(gid, MemKv(), app, TxnState(app), *self._cores(gid, app))
        g.coord.handle(co.BecameLeader(()))
        g.part.handle(pa.BecameLeader(()))
        return g

    def _cores(self, gid: int, app: fsops.FsApplication) -> tuple[co.Coordinator, pa.Participant]:
        return co.Coordinator(gid, self.co_config), pa.Participant(gid, app, self.pa_config)

    def count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    async def pause(self, steps: int) -> None:
        """Sleep about `steps` world steps. Jittered: trio breaks ties between equal deadlines
        by object identity, which would make a seed's run depend on memory addresses."""
        await trio.sleep(STEP_S * steps * (1 + self.rng.random()))

    def now_ns(self) -> int:
        self.clock_ns += 1000
        return self.clock_ns

    def make_root(self) -> None:
        g = self.groups[self.ring.group_of_inode(1)]
        ops = fsops.root_ops(3, self.now_ns(), 0o777, 0, 0)
        g.pending.append(TxnLocal(txn_id(b"root", 0), ops))
        self._apply_batch(g, allow_crash=False)

    async def run_txn(self, g: SimGroup, req: p.RunTxn) -> p.TxnReply:
        parts = tuple(sorted(x for x, ops in req.parts if ops and x != g.gid))
        assert self.txns.setdefault(req.txn_id, (g.gid, parts)) == (g.gid, parts), "txn id reused"
        known = g.state.outcome(g.kv, req.txn_id) if req.retry else None
        done, box = trio.Event(), []
        g.waiters.setdefault(req.txn_id, []).append((done, box))
        try:
            self._perform(g, g.coord.handle(co.Start(req.txn_id, req.parts, known)))
            with trio.move_on_after(TXN_WAIT_S * (1 + self.rng.random())):
                await done.wait()
        finally:
            waiters = g.waiters.get(req.txn_id, [])
            if (done, box) in waiters:
                waiters.remove((done, box))
                if not waiters:
                    del g.waiters[req.txn_id]
        outcome = box[0] if box else None
        if outcome is None:
            return p.TxnReply(False, False, "")
        told = self.told.setdefault(req.txn_id, outcome.commit)
        assert told == outcome.commit, f"txn {req.txn_id.hex()}: told {told}, now {outcome}"
        if self.faulty and self.rng.random() < self.p.lose_reply:
            self.count("reply lost")
            raise p.Unavailable("reply lost")  # decided, but the gateway does not know
        return p.TxnReply(True, outcome.commit, outcome.reason)

    def one_step(self) -> None:
        self.step += 1
        if self.step % self.p.tick_every == 0:
            for g in self.groups.values():
                if g.leader:
                    self._perform(g, g.coord.handle(co.Tick()) + g.part.handle(pa.Tick()))
        for g in self.groups.values():
            if not g.leader and self.step >= g.down_until:
                self._elect(g)
        # Work scales with the load (unlike txn_sim's one event per step): every busy group may
        # apply a batch, and a share of the messages in flight arrive, in random order.
        for g in list(self.groups.values()):
            if g.pending and self.rng.random() < 0.7:
                self._apply_batch(g)
        for _ in range(self.rng.randint(0, 1 + len(self.net) // 2)):
            if self.net:
                self._deliver()
        if self.faulty and self.rng.random() < self.p.leader_change:
            self._crash(self.rng.choice(list(self.groups.values())))
        if self.faulty and self.rng.random() < self.p.partition:
            self.rng.choice(list(self.groups.values())).cut_until = (
                self.step + self.rng.randint(20, 300))
            self.count("partition")

    def cut(self, g: SimGroup) -> bool:
        return self.step < g.cut_until

    def _apply_batch(self, g: SimGroup, allow_crash: bool = True) -> None:
        records = g.pending[: self.rng.randint(1, 3)]
        del g.pending[: len(records)]
        batch = Overlay(g.kv)
        results = [g.state.apply(r, batch, batch) for r in records]
        fsops.perform_effects_sync(g.app.take_effects(), g.chunks)  # type: ignore[arg-type]
        if allow_crash and self.faulty and self.rng.random() < self.p.crash_at_step / 3:
            # Effects made, state not written: the log replays the batch (idempotent).
            self._crash(g, "between effects and state", replay=records)
            return
        batch.commit()
        for record, result in zip(records, results, strict=True):
            if not g.leader:
                return
            if allow_crash and self.faulty and self.rng.random() < self.p.crash_at_step:
                self._crash(g, f"after {type(record).__name__}")
                return
            self._perform(g, g.coord.handle(co.LogApplied(result))
                          + g.part.handle(pa.LogApplied(result)))

    def _crash(self, g: SimGroup, where: str = "random", replay: list[TxnRecord] = ()) -> None:  # type: ignore[assignment]
        if not g.leader:
            return
        self.count(f"crash {where}")
        lost = g.coord.handle(co.LostLeadership()) + g.part.handle(pa.LostLeadership())
        g.leader = False
        self._perform(g, [a for a in lost if isinstance(a, Reply)])
        keep = self.rng.randint(0, len(g.pending))  # a replicated prefix survives
        survivors, g.pending = list(replay) + g.pending[:keep], []
        g.app.take_effects()
        for record in survivors:  # the new leader applies the committed log
            batch = Overlay(g.kv)
            g.state.apply(record, batch, batch)
            fsops.perform_effects_sync(g.app.take_effects(), g.chunks)  # type: ignore[arg-type]
            batch.commit()
        g.down_until = self.step + self.rng.randint(5, 60)

    def _elect(self, g: SimGroup) -> None:
        g.coord, g.part = self._cores(g.gid, g.app)
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
                    self._crash(g, f"before {type(a.record).__name__}")
                    return
                g.pending.append(a.record)
            elif isinstance(a, Send):
                if not self.cut(g):
                    self.net.append((a.group, a.message))
            else:
                assert isinstance(a, Reply)
                for done, box in g.waiters.get(a.txn_id, []):
                    box.append(a.outcome)
                    done.set()

    def _deliver(self) -> None:
        i = self.rng.randrange(len(self.net))  # any message in flight: reordering
        item = self.net[i]
        if not (self.faulty and self.rng.random() < self.p.dup):
            self.net[i] = self.net[-1]
            self.net.pop()
        if self.faulty and self.rng.random() < self.p.drop:
            return
        dest, msg = item
        g = self.groups[dest]
        if not g.leader or self.cut(g):
            return
        to_coord = _TO_COORDINATOR.get(type(msg))
        if to_coord is not None:
            self._perform(g, g.coord.handle(to_coord(msg)))
        else:
            self._perform(g, g.part.handle(_TO_PARTICIPANT[type(msg)](msg)))

    def quiescent(self) -> bool:
        return (not self.net
                and all(g.leader and not self.cut(g) and not g.pending and not g.coord.inflight()
                        and not g.part.waiting() for g in self.groups.values()))

    # -- checks ----------------------------------------------------------------------------

    def check_safety(self) -> None:
        for g in self.groups.values():
            held = set(g.state.locks(g.kv).values())
            prepared = {x.txn_id for x in g.state.prepared(g.kv)}
            assert held <= prepared, f"group {g.gid}: locks of unprepared txns"

    def check(self) -> None:
        merged: list[tuple[bytes, bytes]] = []
        inodes: dict[int, Inode] = {}
        for g in self.groups.values():
            assert not g.state.locks(g.kv), f"group {g.gid}: locks left"
            assert not g.state.prepared(g.kv), f"group {g.gid}: prepared left"
            assert not g.state.decisions(g.kv), f"group {g.gid}: decisions left"
            count = 0
            for k, v in g.kv.items():
                if k.startswith(keys.INODE):
                    ino = keys.parse_inode_key(k)
                    assert self.ring.group_of_inode(ino) == g.gid, f"inode {ino} misplaced"
                    inodes[ino] = decode(v)
                    count += 1
                if k.startswith(b"fs.") and not k.startswith(keys.META):
                    merged.append((k, v))
            got = keys.decode_u64(g.kv.get(keys.INODE_COUNT))
            assert got == count, f"group {g.gid}: inode count {got}, holds {count}"
        merged += [(keys.NEXT_INO, keys.u64(max(inodes) + 1)),
                   (keys.INODE_COUNT, keys.u64(len(inodes)))]
        self._check_all_or_nothing()
        problems = fs_fsck.check(merged)
        assert not problems, problems[:10]
        self._check_reachable(merged, inodes)
        self._check_chunks(inodes)

    def _check_all_or_nothing(self) -> None:
        """Each txn's outcome in its coordinator's group and in every participant's agree,
        and agree with what any gateway was told."""
        for t, (coord, parts) in self.txns.items():
            c = self.groups[coord]
            outcome = c.state.outcome(c.kv, t)
            committed = outcome is not None and outcome.commit
            assert self.told.get(t, committed) == committed, f"txn {t.hex()}: told otherwise"
            for gid in parts:
                g = self.groups[gid]
                there = g.state.outcome(g.kv, t)
                assert (there is not None and there.commit) == committed, (
                    f"txn {t.hex()}: {outcome} at coordinator {coord}, {there} at {gid}")

    def _check_reachable(self, items: list[tuple[bytes, bytes]], inodes: dict[int, Inode]) -> None:
        children: dict[int, list[int]] = {}
        for k, v in items:
            if k.startswith(keys.DIRENT):
                d, _ = keys.parse_dirent_key(k)
                ent: Dirent = decode(v)
                children.setdefault(d, []).append(ent.ino)
        seen, todo = {1}, [1]
        while todo:
            for c in children.get(todo.pop(), []):
                if c not in seen:
                    seen.add(c)
                    todo.append(c)
        assert seen == set(inodes), f"unreachable inodes: {sorted(set(inodes) - seen)[:10]}"

    def _check_chunks(self, inodes: dict[int, Inode]) -> None:
        for g in self.groups.values():
            for (ino, index), buf in g.chunks.data.items():
                inode = inodes.get(ino)
                assert inode is not None, f"group {g.gid}: chunk {index} of gone inode {ino}"
                assert not inode.inline, f"group {g.gid}: chunk of inline inode {ino}"
                assert self.ring.group_of_chunk(ino, index) == g.gid, f"chunk {ino}/{index}"
                past = len(buf) - max(0, inode.size - index * inode.chunk_size)
                assert past <= 0 or not any(buf[len(buf) - past:]), (
                    f"group {g.gid}: bytes past EOF in chunk {index} of {ino}")


_TO_COORDINATOR = {PrepareVote: co.VoteReceived, FinishAck: co.AckReceived,
                   OutcomeQuery: co.QueryReceived}
_TO_PARTICIPANT = {PrepareRequest: pa.PrepareReceived, DecisionNotice: pa.DecisionReceived,
                   OutcomeAnswer: pa.DecisionReceived}


# -- clients ---------------------------------------------------------------------------------


@dataclass
class Shared:
    dirs: list[FileId]
    files: list[FileId]
    race_dir: FileId
    race: list[str] = field(default_factory=list)


class Client:
    def __init__(self, world: World, cid: int, shared: Shared) -> None:
        self.w = world
        self.cid = cid
        self.rng = random.Random(world.seed * 1000 + cid)
        alloc = InoAllocator(MemAllocStore(), cid, 0, block=64)
        self.fs = ClusterBackend(SimRouter(world), alloc, world.config, 1, cid, world.now_ns,
                                 incarnation=b"inc%05d" % cid, rng=random.Random(cid + world.seed))
        self.shared = shared
        self.private: dict[FileId, bytearray] = {}
        self.results: dict[str, int] = {}

    async def retry(self, fn: Any, *args: Any) -> Any:
        """An idempotent operation, retried on JUKEBOX as an NFS client would."""
        why = ""
        for _ in range(100):
            try:
                return await fn(*args)
            except Jukebox as e:
                self.w.count("jukebox")
                why = f"{e} (last abort: {self.fs.last_abort})"
        raise AssertionError(f"client {self.cid}: {fn.__name__}{args[1:]}: jukebox forever: {why}")

    async def run(self) -> None:
        fs = self.fs
        root = await self.retry(fs.export_root, "/")
        await self._race()
        mine = await self.retry(self._mkdir_once, root, b"priv%d" % self.cid)
        for i in range(2):
            made = await self.retry(fs.create, ROOT, mine.fid, b"f%d" % i, CreateMode.UNCHECKED,
                                    SetAttrs(mode=0o644), None)
            self.private[made.fid] = bytearray()
        ops = [self._write, self._truncate, self._read, self._create, self._mkdir,
               self._symlink, self._mknod, self._link, self._remove, self._rmdir, self._rename,
               self._rename, self._write_shared, self._dir_under_itself]
        for _ in range(self.w.p.ops_per_client):
            op = self.rng.choice(ops)
            try:
                await op()
                kind = "ok"
            except FsError as e:
                kind = type(e).__name__
            self.results[f"{op.__name__} {kind}"] = self.results.get(f"{op.__name__} {kind}", 0) + 1
        for fid, model in self.private.items():
            await self._verify(fid, model)

    async def _mkdir_once(self, d: FileId, name: bytes) -> Any:
        """MKDIR retried after JUKEBOX: the first try may have made it (NFS's non-idempotent
        retry problem; a client's DRC only covers retransmissions of one XID)."""
        try:
            return await self.fs.mkdir(ROOT, d, name, SetAttrs(mode=0o755))
        except Exists:
            return await self.fs.lookup(ROOT, d, name)

    async def _race(self) -> None:
        verf = b"race%04d" % self.cid
        try:
            await self.retry(self.fs.create, ROOT, self.shared.race_dir, b"race",
                             CreateMode.EXCLUSIVE, SetAttrs(), verf)
            self.shared.race.append("ok")
        except Exists:
            self.shared.race.append("EEXIST")

    def _dir(self) -> FileId:
        return self.rng.choice(self.shared.dirs)

    def _name(self) -> bytes:
        return self.rng.choice(NAMES)

    async def _write(self) -> None:
        fid, model = self.rng.choice(list(self.private.items()))
        cs = self.w.p.chunk_size
        offset = self.rng.randrange(0, 3 * cs)
        data = bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(1, 2 * cs)))
        await self.retry(self.fs.write, ROOT, fid, offset, memoryview(data), StableHow.UNSTABLE)
        end = offset + len(data)
        if len(model) < end:
            model.extend(bytes(end - len(model)))
        model[offset:end] = data

    async def _truncate(self) -> None:
        fid, model = self.rng.choice(list(self.private.items()))
        size = self.rng.choice([0, self.rng.randrange(0, 4 * self.w.p.chunk_size)])
        await self.retry(self.fs.setattr, ROOT, fid, SetAttrs(size=size), None)
        if len(model) < size:
            model.extend(bytes(size - len(model)))
        del model[size:]

    async def _read(self) -> None:
        fid, model = self.rng.choice(list(self.private.items()))
        await self._verify(fid, model, self.rng.randrange(0, 3 * self.w.p.chunk_size),
                           self.rng.randint(1, 2 * self.w.p.chunk_size))

    async def _verify(self, fid: FileId, model: bytearray, offset: int = 0,
                      count: int = 1 << 20) -> None:
        got = await self.retry(self.fs.read, ROOT, fid, offset, count)
        want = bytes(model[offset:offset + count])
        data = bytes(got.data)
        first = next((i for i, (a, b) in enumerate(zip(data, want, strict=False)) if a != b), None)
        assert data == want, (
            f"client {self.cid}: read {len(data)} bytes at {offset} of {fid}, model has "
            f"{len(want)} (size {len(model)}); first difference at {first}")
        assert got.eof == (offset + len(want) >= len(model))
        attr = await self.retry(self.fs.getattr, fid)
        assert attr.size == len(model), (attr.size, len(model))

    async def _create(self) -> None:
        how = self.rng.choice([CreateMode.GUARDED, CreateMode.UNCHECKED])
        made = await self.fs.create(ROOT, self._dir(), self._name(), how, SetAttrs(mode=0o644),
                                    None)
        self.shared.files.append(made.fid)

    async def _mkdir(self) -> None:
        made = await self.fs.mkdir(ROOT, self._dir(), self._name(), SetAttrs(mode=0o755))
        self.shared.dirs.append(made.fid)

    async def _symlink(self) -> None:
        await self.fs.symlink(ROOT, self._dir(), self._name(), b"/some/where", SetAttrs())

    async def _mknod(self) -> None:
        await self.fs.mknod(ROOT, self._dir(), self._name(), FileType.FIFO, SetAttrs(), (0, 0))

    async def _link(self) -> None:
        if self.shared.files:
            await self.fs.link(ROOT, self.rng.choice(self.shared.files), self._dir(), self._name())

    async def _remove(self) -> None:
        await self.fs.remove(ROOT, self._dir(), self._name())

    async def _rmdir(self) -> None:
        await self.fs.rmdir(ROOT, self._dir(), self._name())

    async def _rename(self) -> None:
        await self.fs.rename(ROOT, self._dir(), self._name(), self._dir(), self._name())

    async def _write_shared(self) -> None:
        if self.shared.files:
            fid = self.rng.choice(self.shared.files)
            offset = self.rng.randrange(0, 2 * self.w.p.chunk_size)
            data = bytes([self.cid]) * self.rng.randint(1, self.w.p.chunk_size)
            await self.fs.write(ROOT, fid, offset, memoryview(data), StableHow.UNSTABLE)

    async def _dir_under_itself(self) -> None:
        """Move a directory into one of its own subdirectories (must be refused)."""
        parent = self._dir()
        name = self._name()
        found = await self.fs.lookup(ROOT, parent, name)
        if found.attr.type != FileType.DIR:
            return
        target = found.fid
        for _ in range(self.rng.randint(0, 2)):
            page = await self.fs.readdir(ROOT, target, 0, bytes(8), 10, True)
            subdirs = [e.fid for e in page.entries if e.attr is not None
                       and e.attr.type == FileType.DIR and e.name not in (b".", b"..")]
            if not subdirs:
                break
            target = self.rng.choice(subdirs)
        await self.fs.rename(ROOT, parent, name, target, self._name())


async def _setup(world: World) -> Shared:
    world.make_root()
    admin = Client(world, 0, Shared([], [], FileId(0, 0)))
    root = await admin.retry(admin.fs.export_root, "/")
    dirs = [root]
    for i in range(3):
        made = await admin.retry(admin.fs.mkdir, ROOT, root, b"d%d" % i, SetAttrs(mode=0o777))
        dirs.append(made.fid)
        sub = await admin.retry(admin.fs.mkdir, ROOT, made.fid, b"s", SetAttrs(mode=0o777))
        dirs.append(sub.fid)
    return Shared(dirs, [], world.rng.choice(dirs))


async def _main(world: World) -> list[Client]:
    clients: list[Client] = []

    async def driver(stop: trio.Event) -> None:
        while True:
            world.one_step()
            if world.step % world.p.check_every == 0:
                world.check_safety()
            if stop.is_set() and world.quiescent():
                return
            assert world.step < world.p.max_steps, f"no quiescence after {world.step} steps"
            await trio.sleep(STEP_S)

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver, stop)
        world.faulty = False
        shared = await _setup(world)
        world.faulty = True
        clients = [Client(world, c + 1, shared) for c in range(world.p.clients)]
        async with trio.open_nursery() as inner:
            for c in clients:
                inner.start_soon(c.run)
        world.faulty = False
        stop.set()
    # Everything settled: a fresh gateway reads every private file back.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_drive_quietly, world)
        for c in clients:
            for fid, model in c.private.items():
                await c._verify(fid, model)
        nursery.cancel_scope.cancel()
    return clients


async def _drive_quietly(world: World) -> None:
    while True:
        world.one_step()
        await trio.sleep(STEP_S)


def run(seed: int, params: Params | None = None) -> tuple[World, list[Client]]:
    world = World(seed, params)
    trio._core._run._r.seed(seed)  # trio's scheduling order (batch reversal) from the seed
    clients = trio.run(_main, world, clock=trio.testing.MockClock(autojump_threshold=0))
    world.check()
    race = sorted(clients[0].shared.race)
    assert race == ["EEXIST"] * (len(clients) - 1) + ["ok"], f"racing creates: {race}"
    return world, clients


def run_gateway(fn: Any, groups: int = 3, seed: int = 0, **params: Any) -> Any:
    """`await fn(gateway, world)` against fault-free simulated groups (gateway tests)."""
    quiet = dict(drop=0.0, dup=0.0, lose_reply=0.0, leader_change=0.0, crash_at_step=0.0,
                 partition=0.0, ring_changed=0.0)
    world = World(seed, Params(groups=groups, **{**quiet, **params}))
    world.faulty = False

    async def main() -> Any:
        world.make_root()
        client = Client(world, 1, Shared([], [], FileId(0, 0)))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drive_quietly, world)
            result = await fn(client.fs, world)
            nursery.cancel_scope.cancel()
        return result

    result = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return result
