"""A small trio driver around the sans-I/O core: timer, persistence, transport, application.

Rules (raft.ready gives the order of handling a Ready; STYLE.md habit 2):
- One task (`run`) owns the Ready loop: send `messages`; install a received snapshot and
  `storage.save()` (fsync) the hard state and entries; only then send `messages_after_persist`;
  apply committed entries through the `apply` callback; answer ReadIndex and snapshot requests;
  `advance()`. Inputs (`step`, `propose`, `read_index`) call the core synchronously from any task
  and wake the loop; trio runs one task at a time, so the core is never entered concurrently.
- Time comes in as ticks every `tick_interval_s` (trio.sleep: MockClock-friendly).
- Saving and applying overlap: committed entries that are already durable here (all of them,
  unless this Ready also appends entries at or below the last committed one) are applied while
  the Ready's hard state and entries are saved; they are committed, so on a quorum's disks, and
  applying them depends on nothing this save writes. Otherwise apply follows the save.
  `advance()` still waits for both (one Ready at a time is the core's contract).
- `propose()` returns only once its entry is applied. It is ours if the applied entry at that
  index has the term we proposed in (log matching); if another leader's entry landed there the
  proposal is reported lost with NotLeader, so the caller may retry.
- Every queue has a limit: inbound messages (dropped when full: Raft tolerates loss), pending
  proposals and pending reads (callers wait for a slot).
- The transport is anything with `send(to, message) -> bool` (False: dropped, the peer is
  reported unreachable). The server wires it to the RpcPlane; tests to an in-memory network.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from raft.conf_change import ConfChange
from raft.errors import NotLeader, RaftError
from raft.log_storage import LogStorage
from raft.messages import Message
from raft.node import RawNode
from raft.ready import ReadState, Ready, Role, Snapshot, SnapshotRequest
from raft.types import Entry, SnapshotMeta

log = logging.getLogger("objcache.raft")

ApplyFn = Callable[[Sequence[Entry]], Awaitable[None]]
InstallFn = Callable[[Snapshot], Awaitable[None]]
# (request) -> (meta, data from request.offset, done) or None if no snapshot can be supplied.
# Called after advance(), so node.snapshot_meta() matches what the state machine has applied.
SnapshotSourceFn = Callable[[SnapshotRequest], Awaitable[tuple[SnapshotMeta, bytes, bool] | None]]


class SnapshotPieces:
    """A SnapshotSourceFn's memory: the snapshot being sent, cut in the core's piece size.
    A new one is taken (`take`: the state machine's bytes, which match node.snapshot_meta()
    when called after advance) when a follower starts over (offset 0 of index 0) or asks for
    another snapshot than the one kept."""

    def __init__(self, take: Callable[[], Awaitable[bytes]]) -> None:
        self._take = take
        self._current: tuple[SnapshotMeta, bytes] | None = None

    async def piece(self, node: RawNode, request: SnapshotRequest
                    ) -> tuple[SnapshotMeta, bytes, bool]:
        if request.index == 0 or self._current is None or (
                self._current[0].index != request.index):
            meta = node.snapshot_meta()
            self._current = (meta, await self._take())
            offset = 0
        else:
            offset = request.offset
        meta, data = self._current
        end = min(len(data), offset + node.raft.config.snapshot_chunk_bytes)
        return meta, data[offset:end], end == len(data)


class ReadIndexTimeout(NotLeader):
    """No answer to a ReadIndex in time (the leader changed, or no quorum): retry."""


class ProposalOutcomeUnknown(RaftError):
    """A snapshot replaced the log around the proposal: it may or may not have been applied."""


class Transport(Protocol):
    def send(self, to: int, message: Message) -> bool:
        """Queue `message` for node `to` without blocking; False if it was dropped."""
        ...


@dataclass(frozen=True, slots=True)
class DriverConfig:
    tick_interval_s: float = 0.05  # with the core's 10-tick election timeout: 0.5-1 s elections
    max_inbox_messages: int = 4096
    max_pending_proposals: int = 4096
    max_pending_reads: int = 1024
    max_latency_samples: int = 100_000  # propose-to-applied times kept for metrics/benchmarks
    read_timeout_s: float = 5.0  # a ReadIndex unanswered this long raises ReadIndexTimeout


@dataclass(slots=True)
class _Waiter:
    term: int
    done: trio.Event
    error: Exception | None = None


async def _acquire(slots: trio.Semaphore) -> None:
    """Take a slot without a scheduling round when one is free (Semaphore.acquire always yields
    once, which under load puts every proposal behind a whole pass of the run queue). The caller
    checkpoints right after anyway (it waits for its entry)."""
    try:
        slots.acquire_nowait()
    except trio.WouldBlock:
        await slots.acquire()


class RaftDriver:
    def __init__(self, node: RawNode, storage: LogStorage, transport: Transport,
                 apply: ApplyFn, *, config: DriverConfig | None = None,
                 install_snapshot: InstallFn | None = None,
                 snapshot_source: SnapshotSourceFn | None = None):
        self.node = node
        self.storage = storage
        self.transport = transport
        self.config = config or DriverConfig()
        self._apply = apply
        self._install_snapshot = install_snapshot
        self._snapshot_source = snapshot_source
        self._inbox: deque[Message] = deque()
        self._ticks = 0
        self._wake = trio.Event()
        self._proposal_slots = trio.Semaphore(self.config.max_pending_proposals)
        self._read_slots = trio.Semaphore(self.config.max_pending_reads)
        self._proposals: dict[int, _Waiter] = {}  # index -> waiter
        self._reads: dict[bytes, tuple[trio.Event, list[int]]] = {}  # context -> (done, [index])
        self._read_ids = itertools.count(1)
        self._read_nonce = secrets.token_bytes(8)
        self._applied_waiters: list[tuple[int, trio.Event]] = []
        self.applied = node.status().applied
        self.dropped_messages = 0
        # Times this node saw its group get a new leader (elections it learned of included),
        # as etcd's leader_changes_seen: a leader known, and not the one known before.
        self.leader_changes = 0
        self._known_lead = node.lead
        # Seconds from propose() to its entry applied here (the leader): the commit latency.
        self.commit_latencies_s: deque[float] = deque(maxlen=self.config.max_latency_samples)

    # ---- inputs ----

    def step(self, message: Message) -> None:
        """A message from a peer (the transport's receive side). Never blocks; may drop."""
        if len(self._inbox) >= self.config.max_inbox_messages:
            self.dropped_messages += 1
            return
        self._inbox.append(message)
        self._wake.set()

    def campaign(self) -> None:
        """Start an election now (a group of one need not wait out an election timeout)."""
        self.node.campaign()
        self._wake.set()

    async def propose(self, data: bytes) -> int:
        """Replicate `data`; returns its index once applied. NotLeader(hint) if not leader or
        if the proposal was lost to a leadership change."""
        return await self._replicate(lambda: self.node.propose(data))

    async def propose_conf_change(self, cc: ConfChange) -> int:
        """One membership change (raft.conf_change); returns its index once applied.
        ConfChangeRejected if it makes no sense now (another one pending), NotLeader as for
        propose."""
        return await self._replicate(lambda: self.node.propose_conf_change(cc))

    async def _replicate(self, append: Callable[[], int]) -> int:
        start = time.perf_counter()
        await _acquire(self._proposal_slots)
        try:
            index = append()  # NotLeader here if we are not the leader
            waiter = self._proposals[index] = _Waiter(self.node.term, trio.Event())
            self._wake.set()
            try:
                await waiter.done.wait()
            finally:
                if self._proposals.get(index) is waiter:
                    del self._proposals[index]
        finally:
            self._proposal_slots.release()
        if waiter.error is not None:
            raise waiter.error
        self.commit_latencies_s.append(time.perf_counter() - start)
        return index

    async def read_index(self, timeout_s: float | None = None) -> int:
        """Linearizable read barrier (dissertation §6.4): returns an index such that the state
        machine, now applied at least to it, reflects every write acknowledged before the call.

        The core never answers a request that a leadership change dropped, so without an
        answer in `timeout_s` (default: DriverConfig.read_timeout_s) it raises
        ReadIndexTimeout (a NotLeader with the leader known now): the caller retries."""
        timeout_s = self.config.read_timeout_s if timeout_s is None else timeout_s
        async with self._read_slots:
            # A nonce per driver start: a late answer to a request of an earlier run of this
            # node (same counter values) can never settle a request of this one.
            context = self._read_nonce + next(self._read_ids).to_bytes(8, "big")
            done, result = trio.Event(), []
            self._reads[context] = (done, result)
            try:
                self.node.read_index(context)  # NotLeader if no leader is known
                self._wake.set()
                with trio.move_on_after(timeout_s):
                    await done.wait()
            finally:
                del self._reads[context]
            if not result:
                raise ReadIndexTimeout(self.node.lead)
            await self.wait_applied(result[0])
            return result[0]

    async def wait_applied(self, index: int) -> None:
        if self.applied >= index:
            return
        event = trio.Event()
        self._applied_waiters.append((index, event))
        await event.wait()

    def leader_id(self) -> int:
        return self.node.lead

    def is_leader(self) -> bool:
        return self.node.status().role is Role.LEADER

    # ---- the loop ----

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ticker)
            task_status.started()
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                self._feed_core()
                while self.node.has_ready():
                    rd = self.node.ready()
                    await self._handle_ready(rd)
                    self.node.advance(rd)
                    # After advance: the state machine and node.snapshot_meta() now agree on
                    # the applied index, so a snapshot taken here is consistent.
                    for request in rd.snapshot_requests:
                        await self._answer_snapshot_request(request)
                    self._feed_core()  # what arrived meanwhile goes into the next Ready

    async def _ticker(self) -> None:
        # A fixed period (sleep_until, not sleep): time spent elsewhere does not stretch the
        # election timeout. Ticks missed while the loop was busy are delivered together.
        next_tick = trio.current_time()
        while True:
            next_tick += self.config.tick_interval_s
            await trio.sleep_until(next_tick)
            self._ticks += 1
            self._wake.set()

    def _feed_core(self) -> None:
        while self._inbox:
            self.node.step(self._inbox.popleft())
        for _ in range(self._ticks):
            self.node.tick()
        self._ticks = 0

    async def _handle_ready(self, rd: Ready) -> None:
        if rd.soft_state is not None:
            log.info("node %d: %s, leader %d, term %d", self.node.id, rd.soft_state.role.value,
                     rd.soft_state.lead, self.node.term)
            if rd.soft_state.lead not in (0, self._known_lead):
                self.leader_changes += 1
            self._known_lead = rd.soft_state.lead
        self._send(rd.messages)
        if rd.snapshot is not None:
            assert self._install_snapshot is not None, "received a snapshot but cannot install"
            await self._install_snapshot(rd.snapshot)
        committed = rd.committed_entries
        if committed and rd.entries and rd.snapshot is None and (
                committed[-1].index < rd.entries[0].index):
            # Apply what is durable here while the new entries are saved (module header).
            # The save starts at once (its fsync is the long part); the apply task runs
            # meanwhile and answers proposers before the fsync returns.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._apply_committed, committed)
                await self._persist(rd)
            committed = ()
        else:
            await self._persist(rd)
        if rd.snapshot is not None:
            self._settle_by_snapshot(rd.snapshot.meta.index)
            self._applied_to(rd.snapshot.meta.index)
        if committed:
            await self._apply_committed(committed)
        self._settle_reads(rd.read_states)

    async def _persist(self, rd: Ready) -> None:
        if rd.must_sync():
            await self.storage.save(rd.hard_state, rd.entries,
                                    rd.snapshot.meta if rd.snapshot else None)
        self._send(rd.messages_after_persist)  # only now: they promise what was just saved

    async def _apply_committed(self, entries: Sequence[Entry]) -> None:
        await self._apply(entries)
        self._settle_proposals(entries)
        self._applied_to(entries[-1].index)

    def _send(self, messages: Sequence[Message]) -> None:
        for m in messages:
            if not self.transport.send(m.to, m):
                self.node.report_unreachable(m.to)

    def _settle_proposals(self, entries: Sequence[Entry]) -> None:
        for e in entries:
            waiter = self._proposals.pop(e.index, None)
            if waiter is None:
                continue
            if e.term != waiter.term:  # another leader's entry took the index: ours is lost
                waiter.error = NotLeader(self.node.lead)
            waiter.done.set()

    def _settle_by_snapshot(self, index: int) -> None:
        for i in [i for i in self._proposals if i <= index]:
            waiter = self._proposals.pop(i)
            waiter.error = ProposalOutcomeUnknown(f"entry {i} was replaced by a snapshot")
            waiter.done.set()

    def _settle_reads(self, read_states: Sequence[ReadState]) -> None:
        for rs in read_states:
            pending = self._reads.get(rs.context)
            if pending is not None:
                pending[1].append(rs.index)
                pending[0].set()

    def _applied_to(self, index: int) -> None:
        self.applied = max(self.applied, index)
        still = []
        for want, event in self._applied_waiters:
            if want <= self.applied:
                event.set()
            else:
                still.append((want, event))
        self._applied_waiters = still

    async def _answer_snapshot_request(self, request: SnapshotRequest) -> None:
        piece = await self._snapshot_source(request) if self._snapshot_source else None
        if piece is None:
            self.node.report_snapshot_failure(request.to)
            return
        meta, data, done = piece
        self.node.send_snapshot_piece(request.to, meta, request.offset, data, done)
        self._wake.set()
