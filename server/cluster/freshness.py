"""A node started on an old copy of its data directory is refused, not served.

Raft assumes that a member never forgets what it persisted: its vote, its log, the entries it
acknowledged. A data directory restored from an hour-old backup (or copied from a stopped
node and started later) breaks that silently: a one-member group serves an hour-old file
system, a member of a larger group may vote twice or count toward a quorum for entries it
lost. Nothing in Raft itself can tell (found by the fault campaign, tests/faults).

Rules:
- Each node keeps a durability counter in its own LevelDB (MINE, outside the Raft log and the
  state machine, so snapshots and compaction never touch it). Once the start-up check passed,
  it advances the counter with a synced write every ADVANCE_S, and only after the write is on
  disk tells its peers the new value (`fr.report`). So a peer never saw more than the disk
  holds, and a copy of the directory holds less than the peers saw as soon as one advance
  happened after the copy.
- Each node records, per peer, the highest counter the peer reported (SEEN + id, persisted;
  never lowered). A report below the record means the peer runs on a data directory older
  than what it had already made durable: the answer says so (`stale`), and the refusal is
  logged and counted (objcache_freshness_total{event="stale_refused"}).
- At start, before its group member runs (before it can vote, append or serve), a node reports
  its counter to every other node it knows (`check`): any record above its own and it stops
  with StaleDataDir ("data directory is older than what node N saw: durability counter i <
  j"; the process exits 1). It goes on once every peer answered, or after `wait_s` with a
  warning naming the silent ones: a cluster whose other nodes are down must still restart.
- While it runs, a `stale` answer to a report stops the node the same way (a peer unreachable
  at its start may know better).
- A cluster of one node has nobody to remember for it: not covered. An empty data directory
  started under a node id that serves in the cluster is refused too (its counter is 0).
- A node id that left the cluster (not in the NodeList this node applied) may come back with
  an empty data directory and --join (its new inode ids stay clear of its old ones: MaxInode):
  its record is of a membership that ended, so a report below it is taken and replaces it.
  Found by tests/integration/test_elastic.py, whose node 2 leaves and returns so.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass

import trio

from server import metrics
from server.cluster.nodelist import NodeList
from server.cluster.statemachine import NODELIST
from server.node import StartupError
from server.rpc.codec import message
from server.rpc.frames import ConnectionLost, PeerUnavailable, RemoteError, RpcTimeout
from server.rpc.plane import RpcPlane
from storage.kv import KvStore

log = logging.getLogger("objcache.freshness")

MINE = b"fresh/mine"
SEEN = b"fresh/seen/"  # + the peer's node id, 8 bytes big-endian
ADVANCE_S = 2.0
REPORT_TIMEOUT_S = 2.0
RETRY_S = 0.2


class StaleDataDir(StartupError):
    """This node's data directory is older than what a peer saw from it."""


@message("fr.report")
@dataclass(frozen=True, slots=True)
class Report:
    counter: int  # the reporting node's durability counter, on its disk


@message("fr.seen")
@dataclass(frozen=True, slots=True)
class Seen:
    seen: int  # the highest counter recorded for the reporter before this report
    stale: bool  # the report was below it: the reporter must not serve


def _u64(value: int) -> bytes:
    return struct.pack(">Q", value)


class Freshness:
    """One node's counter and its record of its peers' (module rules)."""

    def __init__(self, kv: KvStore, node_id: int) -> None:
        self.kv = kv
        self.node_id = node_id
        self.counter = 0
        self.stats = {"reports": 0, "stale_refused": 0, "advances": 0}

    async def open(self) -> Freshness:
        raw = await self.kv.get(MINE)
        self.counter = struct.unpack(">Q", raw)[0] if raw is not None else 0
        return self

    def serve(self, plane: RpcPlane) -> None:
        """Answer peers' reports (at once at start: peers may check before we are ready)."""
        plane.register(Report, self._on_report)
        metrics.export_counters("objcache_freshness", "Durability counter reports from peers "
                                "(reports), refused as older than seen (stale_refused), own "
                                "advances (advances)", self.stats)

    async def _on_report(self, peer_id: int, msg: Report) -> Seen:
        self.stats["reports"] += 1
        raw = await self.kv.get(SEEN + _u64(peer_id))
        seen = struct.unpack(">Q", raw)[0] if raw is not None else 0
        if msg.counter < seen and not await self._listed(peer_id):
            log.info("node %d, which left the cluster, reports durability counter %d (%d "
                     "before it left): a new data directory", peer_id, msg.counter, seen)
            await self.kv.write([(SEEN + _u64(peer_id), _u64(msg.counter))], sync=False)
            return Seen(msg.counter, False)
        if msg.counter < seen:
            self.stats["stale_refused"] += 1
            log.error("node %d reports durability counter %d, but it reported %d before: it "
                      "runs on an old copy of its data directory; refused", peer_id,
                      msg.counter, seen)
            return Seen(seen, True)
        if msg.counter > seen:
            await self.kv.write([(SEEN + _u64(peer_id), _u64(msg.counter))], sync=False)
        return Seen(seen, False)

    async def _listed(self, peer_id: int) -> bool:
        """Whether `peer_id` is in the NodeList this node's group applied (when it has none
        yet, every peer counts as listed: refusing is the safe answer)."""
        raw = await self.kv.get(NODELIST)
        return raw is None or NodeList.decode(raw).has(peer_id)

    def _verdict(self, peer_id: int, reply: object) -> None:
        if not isinstance(reply, Seen):
            raise RemoteError("bad-reply", f"{type(reply).__name__} to fr.report")
        if reply.stale or reply.seen > self.counter:
            raise StaleDataDir(
                f"data directory is older than what node {peer_id} saw: durability counter "
                f"{self.counter} < {reply.seen} (restored from an old copy? start it on its "
                "latest data directory, or as a new node with an empty one and --join)")

    async def check(self, plane: RpcPlane, peers: list[int], wait_s: float) -> None:
        """The start-up check (module rules); raises StaleDataDir."""
        answered: set[int] = set()
        stale: list[StaleDataDir] = []

        async def ask(peer_id: int) -> None:
            while True:
                try:
                    reply = await plane.call(peer_id, Report(self.counter), REPORT_TIMEOUT_S)
                except (PeerUnavailable, RpcTimeout, ConnectionLost, RemoteError):
                    await trio.sleep(RETRY_S)  # not up yet (or no handler yet): again
                    continue
                try:
                    self._verdict(peer_id, reply)
                except StaleDataDir as e:
                    stale.append(e)
                    nursery.cancel_scope.cancel()
                answered.add(peer_id)
                return

        with trio.move_on_after(wait_s):
            async with trio.open_nursery() as nursery:
                for peer_id in peers:
                    nursery.start_soon(ask, peer_id)
        if stale:
            raise stale[0]
        silent = sorted(set(peers) - answered)
        if silent:
            log.warning("node %d: nodes %s did not answer the data directory check in %.0f s; "
                        "serving on the word of %s", self.node_id, silent, wait_s,
                        sorted(answered) or "no one")

    async def advance(self) -> None:
        """The next counter, on disk (synced) before anyone hears of it."""
        await self.kv.write([(MINE, _u64(self.counter + 1))], sync=True)
        self.counter += 1
        self.stats["advances"] += 1

    async def run(self, plane: RpcPlane, peers: Callable[[], list[int]]) -> None:
        """Advance and report every ADVANCE_S; raises StaleDataDir on a stale answer."""
        while True:
            await self.advance()
            stale: list[StaleDataDir] = []
            async with trio.open_nursery() as nursery:
                for peer_id in peers():
                    nursery.start_soon(self._report, plane, peer_id, stale)
            if stale:  # one plain error (not trio's group), for serve() to report
                raise stale[0]
            await trio.sleep(ADVANCE_S)

    async def _report(self, plane: RpcPlane, peer_id: int, stale: list[StaleDataDir]) -> None:
        try:
            reply = await plane.call(peer_id, Report(self.counter), REPORT_TIMEOUT_S)
        except (PeerUnavailable, RpcTimeout, ConnectionLost, RemoteError):
            return  # down or unreachable: the next round tells it
        try:
            self._verdict(peer_id, reply)
        except StaleDataDir as e:
            stale.append(e)
