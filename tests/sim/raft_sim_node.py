"""One simulated member: its disk (synced and unsynced parts) and the driver loop around its
RawNode, as the trio driver will run it: send `messages`, write and fsync, send
`messages_after_persist`, apply, `advance`. A crash cancels the loop and loses what was not
fsynced and everything in memory.
"""

from __future__ import annotations

import heapq
import json
import random
from typing import TYPE_CHECKING

import trio

from raft.config import Config
from raft.memory_storage import MemoryStorage
from raft.messages import Message
from raft.node import RawNode, bootstrap_log
from raft.ready import Ready
from raft.types import EntryType, SnapshotMeta

if TYPE_CHECKING:
    from raft_kv_sim import World

class SimDisk:
    """A member's disk: a synced part that survives crashes (the log, hard state and snapshot)
    and an unsynced part: writes issued but not yet fsynced, lost by a crash. As in
    storage/raftlog.py, a save that only moves the commit index is not fsynced by itself.
    The application's snapshot is written synced (it lives in the same DB as its applied index)."""

    def __init__(self) -> None:
        self.storage = MemoryStorage()  # the synced log and hard state; the core reads these
        self.snapshot: tuple[SnapshotMeta, bytes] | None = None  # synced, with the log
        self.unsynced: list[Ready] = []

    def write(self, rd: Ready) -> None:
        self.unsynced.append(rd)

    def commit_only(self, rd: Ready) -> bool:
        """storage/raftlog.py writes a save that only moves the commit index without fsync."""
        hs, old = rd.hard_state, self.storage.hard_state
        return (
            not rd.entries and rd.snapshot is None and hs is not None
            and (hs.term, hs.vote) == (old.term, old.vote)
        )

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
        self.read_seq = 0
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
            self._step_due(raw)
            if now >= self.next_tick:
                self.next_tick += self.world.params.tick_s
                raw.tick()
                check.observe(raw)
            while raw.has_ready():
                await self._handle_ready(raw, raw.ready())

    def _step_due(self, raw: RawNode) -> None:
        now = trio.current_time()
        while self.inbox and self.inbox[0][0] <= now:
            raw.step(heapq.heappop(self.inbox)[2])
            self.world.checker.observe(raw)

    async def _handle_ready(self, raw: RawNode, rd: Ready) -> None:
        world = self.world
        for m in rd.messages:
            world.send(m)
        if rd.must_sync() and self.disk.commit_only(rd):
            self.disk.write(rd)  # no fsync: durable with the next one, lost by a crash before
        elif rd.must_sync():
            self.disk.write(rd)
            await self.disk.fsync(world.rng.uniform(*world.params.disk_s))
            self._check_persisted(rd)
            self._step_due(raw)  # stepping while a Ready is outstanding is allowed
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

    def read(self, key: str) -> tuple[trio.Event, list[str | None]]:
        assert self.raw is not None
        # Contexts are unique per member only (like the driver's counter): members' contexts
        # collide at the leader on purpose.
        self.read_seq += 1
        ctx = b"%d" % self.read_seq
        self.raw.read_index(ctx)
        event, result = trio.Event(), []
        self.read_waiters[ctx] = (key, event, result)
        self.poke()
        return event, result
