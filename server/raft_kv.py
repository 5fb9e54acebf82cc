"""A tiny replicated key-value node: the whole Raft stack end to end, for tests and bench/raft.py.

    python -m server.raft_kv --id 1 --listen 127.0.0.1:7001 --data-dir var/n1 \\
        --peers 1=ws://127.0.0.1:7001/,2=ws://127.0.0.1:7002/,3=ws://127.0.0.1:7003/ \\
        --secret-file secret

One LevelDB per node (storage.kv.KvStore) holds the Raft log (storage.raftlog, prefix "raft/")
and the state machine ("kv/" keys and the applied index, written in one batch, so the state
machine and its applied index never disagree). Clients are RpcPlane nodes too (any id not in
the group) and use KvClient: put (acknowledged once applied on the leader), get (linearizable,
through ReadIndex), status. Founding members bootstrap the configuration on first start.
"""

from __future__ import annotations

import argparse
import logging
import random
import secrets
import signal
import struct
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import cbor2
import trio

from raft.config import Config
from raft.driver import DriverConfig, ProposalOutcomeUnknown, RaftDriver, SnapshotPieces
from raft.errors import NotLeader, ProposalDropped
from raft.node import RawNode, bootstrap_log
from raft.ready import Snapshot, SnapshotRequest
from raft.types import Entry, EntryType, SnapshotMeta
from server import gctune
from server.rpc.codec import message
from server.rpc.frames import (
    DEADLINE,
    ConnectionLost,
    PeerUnavailable,
    RemoteError,
    RpcTimeout,
)
from server.rpc.plane import RpcConfig, RpcPlane
from server.rpc.raft_wire import PlaneTransport, route_raft_messages
from storage.kv import KvStore
from storage.raftlog import RaftLogStorage

log = logging.getLogger("objcache.raft_kv")
RECORD_VERSION = 1
APPLIED_KEY = b"kvmeta/applied"
DATA_PREFIX = b"kv/"


@message("kv.put")
@dataclass(frozen=True, slots=True)
class KvPut:
    key: str
    value: bytes


@message("kv.put_reply")
@dataclass(frozen=True, slots=True)
class KvPutReply:
    index: int


@message("kv.get")
@dataclass(frozen=True, slots=True)
class KvGet:
    key: str


@message("kv.get_reply")
@dataclass(frozen=True, slots=True)
class KvGetReply:
    value: bytes | None
    index: int


@message("kv.status")
@dataclass(frozen=True, slots=True)
class KvStatus:
    pass


@message("kv.status_reply")
@dataclass(frozen=True, slots=True)
class KvStatusReply:
    node_id: int
    role: str
    term: int
    leader: int
    commit: int
    applied: int
    first_index: int  # of the retained log: above 1 once compacted
    auth_failures: int


@message("kv.commit_latencies")
@dataclass(frozen=True, slots=True)
class KvCommitLatencies:
    """Take (and clear) this node's propose-to-applied times, measured in the node (bench)."""


@message("kv.commit_latencies_reply")
@dataclass(frozen=True, slots=True)
class KvCommitLatenciesReply:
    seconds: tuple[float, ...]


class KvStateMachine:
    """Applies `[version, key, value]` CBOR records; keeps the applied index in the same batch.

    With `log` (the RaftLogStorage sharing this store's DB) an apply costs no I/O of its own: its
    batch joins the log's open batch (RaftLogStorage.defer_write) and reaches LevelDB with the
    log's next write, usually the very next Ready's save; until then reads are served from an
    in-memory overlay. The writes were unsynced before too: the entries are durable in the log,
    and a restart replays from the applied index on disk (puts are idempotent). The unwritten
    bytes are bounded by `max_unwritten_bytes` (past it, apply writes them out)."""

    def __init__(self, store: KvStore, log: RaftLogStorage | None = None, *,
                 max_unwritten_bytes: int = 4 << 20):
        self.store = store
        self.log = log
        self.max_unwritten_bytes = max_unwritten_bytes
        self._overlay: dict[bytes, tuple[bytes | None, int]] = {}  # key -> (value, batch seq)
        self._overlay_order: deque[tuple[int, bytes]] = deque()  # (batch seq, key), for pruning

    async def applied_index(self) -> int:
        raw = await self.store.get(APPLIED_KEY)
        return struct.unpack(">Q", raw)[0] if raw is not None else 0

    async def apply(self, entries: list[Entry] | tuple[Entry, ...]) -> None:
        batch: list[tuple[bytes, bytes | None]] = []
        for e in entries:
            if e.type is EntryType.NORMAL:
                version, key, value = cbor2.loads(e.data)
                assert version == RECORD_VERSION, f"entry {e.index}: record version {version}"
                batch.append((DATA_PREFIX + key.encode(), value))
        batch.append((APPLIED_KEY, struct.pack(">Q", entries[-1].index)))
        # Not synced: the entries are durable in the log, and replay from the applied index
        # re-applies whatever a crash lost (puts are idempotent).
        if self.log is None:
            await self.store.write(batch, sync=False)
            return
        self._prune_overlay()
        seq = self.log.defer_write(batch)
        for key, value in batch:
            self._overlay[key] = (value, seq)
            self._overlay_order.append((seq, key))
        if self.log.unwritten_bytes >= self.max_unwritten_bytes:
            await self.log.flush()

    def _prune_overlay(self) -> None:
        written = self.log.written_seq if self.log is not None else 0
        while self._overlay_order and self._overlay_order[0][0] <= written:
            seq, key = self._overlay_order.popleft()
            if self._overlay.get(key, (None, -1))[1] == seq:  # not overwritten since
                del self._overlay[key]

    async def get(self, key: str) -> bytes | None:
        k = DATA_PREFIX + key.encode()
        self._prune_overlay()
        if k in self._overlay:
            return self._overlay[k][0]
        return await self.store.get(k)

    async def _write_out(self) -> None:
        """Everything applied is in LevelDB afterwards (before iterating or replacing it)."""
        if self.log is not None:
            await self.log.flush()
            self._prune_overlay()
            assert not self._overlay, "overlay left after flush"

    async def snapshot_bytes(self) -> bytes:
        """The whole state as `[version, [[key, value], ...]]` (a LevelDB iteration)."""
        await self._write_out()
        items = await self.store.iterate(prefix=DATA_PREFIX)
        assert len(items) < self.store.config.max_scan_items, "demo state too large to snapshot"
        return cbor2.dumps([RECORD_VERSION, [[k[len(DATA_PREFIX):], v] for k, v in items]])

    async def install(self, snapshot: Snapshot) -> None:
        """Replace the state with a leader's snapshot, and its applied index, in one batch."""
        version, items = cbor2.loads(snapshot.data)
        assert version == RECORD_VERSION, f"snapshot record version {version}"
        await self._write_out()
        old = await self.store.iterate(prefix=DATA_PREFIX)
        batch: list[tuple[bytes, bytes | None]] = [(k, None) for k, _ in old]
        batch += [(DATA_PREFIX + k, v) for k, v in items]
        batch.append((APPLIED_KEY, struct.pack(">Q", snapshot.meta.index)))
        await self.store.write(batch, sync=True)
        log.info("installed a snapshot at index %d (%d keys)", snapshot.meta.index, len(items))


def encode_put(key: str, value: bytes) -> bytes:
    return cbor2.dumps([RECORD_VERSION, key, value])


@dataclass(frozen=True, slots=True)
class CompactionPolicy:
    after_entries: int = 10_000  # compact once the log holds this many applied entries
    keep_entries: int = 100  # entries kept below the snapshot, for followers slightly behind
    check_interval_s: float = 0.5


class KvNode:
    def __init__(self, driver: RaftDriver, sm: KvStateMachine, plane: RpcPlane,
                 storage: RaftLogStorage, compaction: CompactionPolicy):
        self.driver, self.sm, self.plane = driver, sm, plane
        self.storage, self.compaction = storage, compaction
        self._snapshot = SnapshotPieces(sm.snapshot_bytes)  # the one being sent
        plane.register(KvPut, self.on_put)
        plane.register(KvGet, self.on_get)
        plane.register(KvStatus, self.on_status)
        plane.register(KvCommitLatencies, self.on_commit_latencies)

    async def on_put(self, peer: int, msg: KvPut) -> KvPutReply:
        try:
            return KvPutReply(await self.driver.propose(encode_put(msg.key, msg.value)))
        except NotLeader as exc:
            raise RemoteError("not_leader", str(exc.leader_hint)) from exc
        except (ProposalDropped, ProposalOutcomeUnknown) as exc:
            raise RemoteError("retry", str(exc)) from exc

    async def on_get(self, peer: int, msg: KvGet) -> KvGetReply:
        try:
            index = await self.driver.read_index()
        except NotLeader as exc:
            raise RemoteError("not_leader", str(exc.leader_hint)) from exc
        return KvGetReply(await self.sm.get(msg.key), index)

    async def snapshot_source(self, request: SnapshotRequest
                              ) -> tuple[SnapshotMeta, bytes, bool] | None:
        """Pieces of a snapshot for a follower too far behind (raft.ready.SnapshotRequest)."""
        return await self._snapshot.piece(self.driver.node, request)

    async def compactor(self) -> None:
        """Snapshot = the state machine in LevelDB at its applied index; then drop the log
        below it (DESIGN.md: log compaction is deleting a prefix)."""
        policy = self.compaction
        while True:
            await trio.sleep(policy.check_interval_s)
            meta = self.driver.node.snapshot_meta()
            if meta.index - self.storage.first_index() + 1 < policy.after_entries:
                continue
            await self.storage.create_snapshot(meta.index, meta.conf)
            await self.storage.compact(meta.index - policy.keep_entries)
            log.info("compacted the log to %d (snapshot at %d)", self.storage.first_index(),
                     meta.index)

    async def on_status(self, peer: int, msg: KvStatus) -> KvStatusReply:
        st = self.driver.node.status()
        return KvStatusReply(st.id, st.role.value, st.term, st.lead, st.commit, st.applied,
                             self.storage.first_index(), self.plane.counters.auth_failures)


    async def on_commit_latencies(self, peer: int, msg: KvCommitLatencies
                                  ) -> KvCommitLatenciesReply:
        samples = tuple(self.driver.commit_latencies_s)
        self.driver.commit_latencies_s.clear()
        return KvCommitLatenciesReply(samples)


class KvClient:
    """Finds the leader (following not_leader hints) and retries until the deadline."""

    def __init__(self, plane: RpcPlane, node_ids: list[int], *, try_timeout_s: float = 2.0):
        self.plane, self.node_ids, self.try_timeout_s = plane, node_ids, try_timeout_s
        self.leader_hint = node_ids[0]

    async def put(self, key: str, value: bytes, timeout_s: float = 30.0) -> int:
        reply = await self._call(KvPut(key, value), timeout_s)
        return reply.index

    async def get(self, key: str, timeout_s: float = 30.0) -> bytes | None:
        return (await self._call(KvGet(key), timeout_s)).value

    async def status(self, node_id: int, timeout_s: float = 2.0) -> KvStatusReply:
        return await self.plane.call(node_id, KvStatus(), timeout_s)

    async def _call(self, msg: object, timeout_s: float):  # type: ignore[no-untyped-def]
        # The deadline is handed down as each try's timeout, not kept by a cancel scope
        # around the loop: one per put cost the bench's 64 proposers a tenth of their rate.
        deadline = trio.current_time() + timeout_s
        while (left := deadline - trio.current_time()) > 0:
            target = self.leader_hint
            try:
                return await self.plane.call(target, msg, min(self.try_timeout_s, left))
            except RemoteError as exc:
                if exc.code not in ("not_leader", "retry", DEADLINE):
                    raise
                hint = int(exc.message) if exc.code == "not_leader" else 0
                self.leader_hint = hint if hint in self.node_ids else self._next(target)
            except (RpcTimeout, PeerUnavailable, ConnectionLost):
                self.leader_hint = self._next(target)
            # Lets an election finish; never past the deadline.
            await trio.sleep_until(min(trio.current_time() + 0.02, deadline))
        raise trio.TooSlowError(f"{type(msg).__name__} not answered within {timeout_s} s")

    async def take_commit_latencies(self, node_id: int, timeout_s: float = 10.0
                                    ) -> tuple[float, ...]:
        return (await self.plane.call(node_id, KvCommitLatencies(), timeout_s)).seconds

    def _next(self, node_id: int) -> int:
        i = self.node_ids.index(node_id) if node_id in self.node_ids else -1
        return self.node_ids[(i + 1) % len(self.node_ids)]


def parse_peers(text: str) -> dict[int, str]:
    peers = {}
    for item in text.split(","):
        node_id, _, url = item.partition("=")
        peers[int(node_id)] = url
    return peers


async def serve(args: argparse.Namespace) -> None:
    peers = parse_peers(args.peers)
    host, _, port = args.listen.rpartition(":")
    secret = Path(args.secret_file).read_bytes().strip()
    store = await KvStore.open(Path(args.data_dir) / "db")
    try:
        compaction = CompactionPolicy(after_entries=args.compact_after_entries,
                                      keep_entries=args.compact_keep_entries)
        await _serve_on(store, args.id, peers, host, int(port), secret, args.tick_ms / 1000,
                        compaction)
    finally:
        await store.close()


async def _serve_on(store: KvStore, node_id: int, peers: dict[int, str], host: str, port: int,
                    secret: bytes, tick_s: float, compaction: CompactionPolicy) -> None:
    storage = await RaftLogStorage.open_on_store(store)
    storage.lone_voter = len(peers) == 1  # a one-member group (RaftLogStorage docs)
    hard_state, _ = storage.initial_state()
    if storage.last_index() == 0 and hard_state.term == 0:
        await storage.save(*bootstrap_log(sorted(peers)))
    sm = KvStateMachine(store, storage)
    seed = secrets.randbits(64)  # election jitter; logged so a run can be reproduced
    log.info("node %d: applied %d, rng seed %d", node_id, await sm.applied_index(), seed)
    hard_state, _ = storage.initial_state()
    # The state machine is ahead of the log's commit index only if a crash came between
    # installing a snapshot and saving it to the log; re-applying from the commit index is
    # harmless (puts are idempotent) and the leader sends the snapshot again.
    applied = min(await sm.applied_index(), hard_state.commit)
    node = RawNode(Config(id=node_id, applied=applied), storage, random.Random(seed))
    plane = RpcPlane(RpcConfig(node_id=node_id, cluster_secret=secret, host=host, port=port))
    for peer_id, url in peers.items():
        if peer_id != node_id:
            plane.add_peer(peer_id, url)
    holder: list[KvNode] = []  # the driver needs the node's snapshot source and vice versa

    async def snapshot_source(request: SnapshotRequest):  # type: ignore[no-untyped-def]
        return await holder[0].snapshot_source(request)

    driver = RaftDriver(node, storage, PlaneTransport(plane), sm.apply,
                        config=DriverConfig(tick_interval_s=tick_s), install_snapshot=sm.install,
                        snapshot_source=snapshot_source)
    route_raft_messages(plane, driver.step)
    kv = KvNode(driver, sm, plane, storage, compaction)
    holder.append(kv)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(plane.run)
            await nursery.start(driver.run)
            nursery.start_soon(kv.compactor)
            gctune.freeze_startup()
            print(f"READY {node_id} {plane.port}", flush=True)
            async for signum in signals:
                log.info("node %d: signal %d, stopping", node_id, signum)
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m server.raft_kv", description=__doc__.split("\n")[0])
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--listen", required=True, help="host:port of this node's RPC plane")
    p.add_argument("--peers", required=True, help="id=ws://host:port/,... for every member")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--secret-file", required=True)
    p.add_argument("--tick-ms", type=float, default=50.0)
    p.add_argument("--compact-after-entries", type=int, default=10_000)
    p.add_argument("--compact-keep-entries", type=int, default=100)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s n{args.id} %(name)s %(levelname)s %(message)s")
    gctune.tune()
    trio.run(serve, args)


if __name__ == "__main__":
    main()
