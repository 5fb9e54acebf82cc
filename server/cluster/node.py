"""A cluster node: its group member, the router, and the NFS gateway over the whole namespace.

Start-up, in order (each step needs the one before; one function each, below `_serve_on`):
1. Open the node's LevelDB and chunk directory; start the RPC plane (peers from config).
2. The NodeList: read the one this node's group already applied (a restart), agree on the
   first one with the peers (membership.bootstrap_nodelist), or learn the cluster to join.
3. Open the group member (GroupRuntime) and start it; a joining node joins now.
4. The router and the ClusterBackend, once this node's group has a leader with the NodeList
   applied and the root directory exists (node_fs.py binds the exports to their buckets).
5. Write-back, admin jobs, status, metrics; then serve NFS and write `ready.json`
   (server/cluster/ready.py) for `objcache cluster up`.
SIGTERM/SIGINT, or a drain that verified the bucket (drain.py): the NFS server answers what it
read and stops; then everything stops and the LevelDB is closed (acknowledged writes are in the
Raft log already; nothing else to flush).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn

import trio

from nfs_gateway.backend import FileSlice
from nfs_gateway.exports import normalize_path
from server import metrics
from server.cluster import bucket_reads, fsops, node_fs, node_metrics, queries
from server.cluster import protocol as p
from server.cluster.bucket_admin import BucketAdmin
from server.cluster.bucket_heads import HeadFanout
from server.cluster.drain import Drains
from server.cluster.flush import FlushConfig, Flusher
from server.cluster.freshness import Freshness
from server.cluster.gateway import ClusterBackend
from server.cluster.group import GroupConfig, GroupRuntime
from server.cluster.group_txn import register_txn_messages
from server.cluster.inoalloc import NODE_SHIFT, InoAllocator
from server.cluster.joinorder import AwaitJoin
from server.cluster.membership import bootstrap_nodelist, serve_hello
from server.cluster.nodelist import NodeInfo, NodeList
from server.cluster.ready import remove_ready, write_ready
from server.cluster.ringchange import RingMember
from server.cluster.ringjoin import JoinError, join_cluster, learn_cluster
from server.cluster.router import GroupRouter
from server.cluster.statemachine import APPLIED, NODELIST, GroupStateMachine
from server.cluster.status import serve_status
from server.config import Config, Listen, data_dir, parse_listen
from server.fs.config import FsConfig
from server.node import StartupError, export_id, serve_nfs
from server.rpc.bulk import BulkClient, BulkServer
from server.rpc.plane import RpcConfig, RpcPlane
from server.rpc.raft_wire import register_raft_types
from storage.chunks import ChunkStore
from storage.kv import KvConfig, KvStore
from storage.objstore.base import ObjectStore
from txn.state import TxnState

log = logging.getLogger("objcache.node")

FSID = 1  # the cluster serves one file system
LEAVE_GRACE_S = 0.5  # a node whose group left answers what it was asked, then stops
FRESHNESS_WAIT_S = 10.0  # the data directory check waits this long for silent peers


def fs_config(cfg: Config) -> FsConfig:
    st = cfg.storage
    return FsConfig(chunk_size=st.chunk_size_bytes, kv=KvConfig(threads=st.kv_threads),
                    sync_metadata=st.sync_metadata, inline_max_bytes=st.inline_max_bytes)


def _secret(cfg: Config, key: str = "cluster_secret_file") -> bytes:
    path = Path(getattr(cfg.cluster, key))
    try:
        secret = path.read_bytes().strip()
    except OSError as e:
        raise StartupError(f"cluster.{key} {path}: {e.strerror}") from None
    if len(secret) < 16:
        raise StartupError(f"cluster.{key} {path}: under 16 bytes")
    return secret


async def serve_cluster(cfg: Config, make_rpc_server) -> None:  # type: ignore[no-untyped-def]
    c = cfg.cluster
    root = data_dir(cfg)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StartupError(f"data directory {root}: {e.strerror}") from None
    fsc = fs_config(cfg)
    kv = await KvStore.open(root / "meta", fsc.kv)
    try:
        await _refuse_standalone_data(kv, root)
    except StartupError:
        await kv.close()
        raise
    chunks = ChunkStore(root / "chunks", fsc.chunks)
    on_stop: list[Callable[[], None]] = []  # blocking closers, run before the LevelDB closes
    try:
        await _serve_on(cfg, kv, chunks, fsc, make_rpc_server, on_stop)
    finally:
        with trio.CancelScope(shield=True):
            remove_ready(root)
            for close in on_stop:
                try:
                    await trio.to_thread.run_sync(close)
                except Exception as e:  # the LevelDB must still close
                    log.warning("objcache: stopping: %s", e)
            await trio.to_thread.run_sync(chunks.sync_all_sync)
            chunks.close_sync()
            await kv.close()
        log.info("objcache: node %d stopped", c.node_id)


async def _join_failed(waiting: AwaitJoin | None, reason: str) -> NoReturn:
    """A join that failed stops the node; `objcache admin join` hears why first."""
    if waiting is not None:
        await waiting.failed(reason)
    raise StartupError(reason)


async def _refuse_standalone_data(kv: KvStore, root: Path) -> None:
    """A standalone node's data (a file system but no group state) is not a cluster node's:
    serving it would mix two state machines."""
    if await kv.get(APPLIED) is not None:
        return
    if await kv.iterate(prefix=b"fs.", limit=1):
        raise StartupError(f"{root} holds a standalone node's data (objcache serve without "
                           "[cluster]); a cluster node needs its own data directory")


@dataclasses.dataclass
class _Start:
    """What start-up has made so far; each phase below adds its part."""

    cfg: Config
    kv: KvStore
    chunks: ChunkStore
    fsc: FsConfig
    plane: RpcPlane
    me: NodeInfo
    peers: dict[int, str]  # the founding peers of the config: id -> RPC address
    nursery: trio.Nursery
    on_stop: list[Callable[[], None]]  # serve_cluster runs these after everything stopped
    nodelist: NodeList | None = None  # None until learned (a joining node: until joined)
    fresh: Freshness | None = None
    others: list[int] = dataclasses.field(default_factory=list)  # peers to check freshness on
    waiting: AwaitJoin | None = None  # waiting for `objcache admin join`
    seed: int = 0  # a joining node's (inode counter floor asked for when nonzero)
    replica: bool = False  # joining a group that exists: its log comes from its leader
    stores: dict[int, ObjectStore] = dataclasses.field(default_factory=dict)
    router: GroupRouter | None = None
    flushers: list[Flusher] = dataclasses.field(default_factory=list)


async def _serve_on(cfg: Config, kv: KvStore, chunks: ChunkStore, fsc: FsConfig,
                    make_rpc_server,  # type: ignore[no-untyped-def]
                    on_stop: list[Callable[[], None]]) -> None:
    # Every message a peer may send must decode from the moment the plane listens: a
    # restarting node's peers send it Raft heartbeats and txn notices before its group
    # member is open, and an unknown tag closed their connections as garbage (found by the
    # fault campaign; tests/faults/test_found_by_campaign.py).
    register_raft_types()
    register_txn_messages()
    plane, me, peers = _make_plane(cfg)
    async with trio.open_nursery() as nursery:
        s = _Start(cfg, kv, chunks, fsc, plane, me, peers, nursery, on_stop)
        await _start_plane(s)
        if not await _learn_membership(s):
            nursery.cancel_scope.cancel()  # stopped while waiting for `objcache admin join`
            return
        runtime = await _open_member(s)
        backend = await _open_gateway(s, runtime)
        await _start_services(s, runtime, backend)
        await serve_nfs(cfg, make_rpc_server(cfg, backend),
                        _announce(cfg, me, cfg.cluster_rpc_address()),
                        ready=lambda: runtime.leader_id() != 0)
        nursery.cancel_scope.cancel()


def _make_plane(cfg: Config) -> tuple[RpcPlane, NodeInfo, dict[int, str]]:
    """The RPC plane (peers from config), this node's NodeInfo, and the founding peers."""
    c = cfg.cluster
    listen = cfg.cluster_listen()
    tls = cfg.cluster_tls()
    cert, key, ca = tls if tls else (None, None, None)
    admin_token = _secret(cfg, "admin_token_file") if c.admin_token_file else None
    plane = RpcPlane(RpcConfig(node_id=c.node_id, cluster_secret=_secret(cfg),
                               admin_token=admin_token, host=listen.host, port=listen.port,
                               tls_cert_path=cert, tls_key_path=key, tls_ca_path=ca))
    metrics.watch_plane(plane)
    peer_addrs = {i: a for i, a in cfg.cluster_peers().items() if i != c.node_id}
    for peer_id, addr in peer_addrs.items():
        plane.add_peer(peer_id, cfg.cluster_peer_url(addr))
    nfs = cfg.nfs_listen()
    me = NodeInfo(c.node_id, cfg.cluster_group(), str(cfg.cluster_rpc_address()),
                  f"{nfs.host}:{nfs.port}")
    return plane, me, {i: str(a) for i, a in peer_addrs.items()}


async def _start_plane(s: _Start) -> None:
    try:
        await s.nursery.start(s.plane.run)
    except OSError as e:
        reason = "address in use" if e.errno == errno.EADDRINUSE else e.strerror
        raise StartupError(f"cluster.listen {s.cfg.cluster_listen()}: {reason}") from None
    # Peers still bootstrapping ask us even when we have our list already (a restart).
    serve_hello(s.plane, s.me, tuple(sorted({*s.peers, s.me.node_id})))


async def _learn_membership(s: _Start) -> bool:
    """The NodeList: stored (a restart), agreed with the founding peers, or learned from a
    member to join through. False: stopped while waiting to be told where to join."""
    c, plane = s.cfg.cluster, s.plane
    stored = await s.kv.get(NODELIST)
    if stored is not None:
        s.nodelist = NodeList.decode(stored)
        if not s.nodelist.has(c.node_id):
            raise StartupError(f"node {c.node_id} left the cluster (node list version "
                               f"{s.nodelist.version}); to serve again, start it with an "
                               "empty data directory and --join")
    # Before anything of this node's state can reach a peer or a client: is the data
    # directory older than what a peer saw from it (freshness.py)?
    s.fresh = fresh = await Freshness(s.kv, c.node_id).open()
    fresh.serve(plane)
    listed = _know(plane, s.cfg, s.nodelist, c.node_id) if s.nodelist else []  # joined later
    s.others = sorted({*s.peers, *listed})
    await fresh.check(plane, s.others, min(FRESHNESS_WAIT_S, c.bootstrap_timeout_s))
    s.waiting = AwaitJoin(plane) if s.nodelist is None and c.await_join else None
    if s.waiting is not None:
        s.waiting.serve()
    if s.nodelist is None and not c.join and s.waiting is None:
        log.info("node %d: agreeing on the node list with %d peers", c.node_id, len(s.peers))
        s.nodelist = await bootstrap_nodelist(plane, s.me, s.peers, c.bootstrap_timeout_s)
    # The object stores first: building an S3 client holds this loop a moment, which must
    # not happen once a ring change gave this node state to serve.
    s.stores = node_fs.open_stores(s.cfg)
    if s.nodelist is None:
        join = s.cfg.cluster_join() or (await s.waiting.order() if s.waiting else None)
        if join is None:
            return False
        log.info("node %d: joining the cluster through %s", c.node_id, join)
        try:
            s.seed, current = await learn_cluster(plane, s.cfg.cluster_peer_url(join),
                                                  c.bootstrap_timeout_s)
        except JoinError as e:
            await _join_failed(s.waiting, str(e))
        s.replica = s.me.group in current.groups()
        # This id may have served before and left: the members keep a record of its old
        # directory's counter, which a report made while the id is not listed replaces;
        # a member that still lists it refuses an empty directory (freshness.py).
        await fresh.check(plane, _know(plane, s.cfg, current, c.node_id),
                          min(FRESHNESS_WAIT_S, c.bootstrap_timeout_s))
    return True


async def _open_member(s: _Start) -> GroupRuntime:
    """This node's member of its group, running (a joining node: once the join committed)."""
    c, group, nodelist = s.cfg.cluster, s.me.group, s.nodelist
    app = fsops.FsApplication(s.fsc)
    sm = GroupStateMachine(s.kv, s.chunks, app, TxnState(app), fsops.perform_effects_sync,
                           group=group, vnodes=c.vnodes)
    makes_root = nodelist is not None and nodelist.ring(c.vnodes).group_of_inode(1) == group
    runtime = await GroupRuntime.open(
        node_id=c.node_id, group=group,
        members=list(nodelist.members(group)) if nodelist else (
            [] if s.replica else [c.node_id]), kv=s.kv, sm=sm,
        plane=s.plane, answer=queries.answer,
        root_ops=node_fs.root_ops(s.fsc) if makes_root else None,
        nodelist_bytes=nodelist.encode() if nodelist else None,
        post=lambda g, m: s.router.post(g, m) if s.router is not None else None,
        config=GroupConfig(lease_s=c.lease_s), vnodes=c.vnodes)

    async def flush_all() -> None:  # before this node's group leaves (ringchange.py)
        for f in s.flushers:
            for store in sorted(f.b.store_roots):
                try:
                    await f.round(store, force=True)
                except Exception as e:  # what is not written back moves with the rest
                    log.warning("leave: writing back store %d: %r", store, e)

    rings = RingMember(runtime, s.plane, s.fsc.chunk_size, flush_all, stop=_stop_self)
    await s.nursery.start(runtime.run)
    s.nursery.start_soon(rings.run)
    assert s.fresh is not None
    s.nursery.start_soon(s.fresh.run, s.plane,
                         lambda: _other_nodes(runtime, c.node_id, s.others))
    if s.nodelist is None:  # joining: the change brings our group the NodeList
        try:
            s.nodelist = await join_cluster(s.plane, runtime, s.me, s.seed,
                                            c.bootstrap_timeout_s)
        except JoinError as e:
            await _join_failed(s.waiting, str(e))
        if s.waiting is not None:
            s.waiting.joined(s.nodelist.encode())
    return runtime


async def _open_bulk(s: _Start, runtime: GroupRuntime) -> BulkClient | None:
    """The bulk channel (server/rpc/bulk.py): this node's server of its group's chunk bytes,
    and the client its gateway reads other groups' chunks with. None when it is off."""
    c = s.cfg.cluster
    if not c.bulk_reads or s.cfg.cluster_tls():
        if c.bulk_reads:
            log.info("cluster.bulk_reads is off while the plane uses TLS (bytes in clear)")
        return None

    async def chunk_bytes(peer: int, request: p.ReadChunk) -> bytes | FileSlice:
        return (await runtime.on_request(peer, request, slice_ok=True)).data

    server = BulkServer(s.plane, s.cfg.cluster_listen().host, c.bulk_port)
    server.serve(p.ReadChunk, chunk_bytes)
    try:
        await s.nursery.start(server.run)
    except OSError as e:
        reason = "address in use" if e.errno == errno.EADDRINUSE else e.strerror
        raise StartupError(f"cluster.bulk_port {c.bulk_port}: {reason}") from None
    client = BulkClient(s.plane, max_reply_bytes=queries.MAX_READ_BYTES)
    s.on_stop.append(client.close)
    metrics.export_counters("objcache_bulk_served", "Bulk channel, serving other nodes' "
                            "gateways: connections, requests, bytes, refused, garbage, errors",
                            server.stats)
    metrics.export_counters("objcache_bulk_reads", "Bulk channel, this gateway's reads of "
                            "other nodes' chunks: requests, bytes, connections, unavailable "
                            "(the plane carried them)", client.stats)
    return client


async def _open_gateway(s: _Start, runtime: GroupRuntime) -> ClusterBackend:
    """The router and the ClusterBackend, once the group serves and the root exists."""
    c = s.cfg.cluster
    assert s.nodelist is not None
    router = s.router = GroupRouter(s.plane, c.node_id, s.nodelist, runtime, vnodes=c.vnodes,
                                    request_timeout_s=c.request_timeout_s,
                                    bulk=await _open_bulk(s, runtime))
    await s.nursery.start(router.run)
    await _within(c.bootstrap_timeout_s, runtime.wait_serving,
                  f"group {s.me.group} elected no leader")
    alloc = await InoAllocator.open(
        s.kv, c.node_id, floor=(lambda: _ino_floor(router, c.node_id)) if s.seed else None)
    if s.stores:
        fetch = await bucket_reads.attach(runtime, s.stores, s.cfg.cache)
        fetch.nursery = s.nursery
        s.on_stop.append(fetch.cache.close_sync)  # this run's clean copies made durable
        metrics.export_counters("objcache_bucket_fetch", "Chunks fetched from the bucket: "
                                "fetches, fetched bytes, ranged GETs", fetch.stats)
        metrics.export_counters("objcache_chunk_cache", "The clean chunk cache: hits, "
                                "misses, admitted, evicted, refused", fetch.cache.stats)
    backend = ClusterBackend(router, alloc, s.fsc, FSID, c.node_id, stores=s.stores,
                             bucket=s.cfg.cache, home_group=(
                                 router.home_group if c.dir_placement == "local" else None))
    backend._nursery = s.nursery

    async def on_revoke(peer: int, msg: p.Revoke) -> None:  # gateway_leases.py
        s.plane.send(peer, backend.revoke_held(msg))

    s.plane.register(p.Revoke, on_revoke)
    if s.stores:
        me = c.node_id
        backend.heads = HeadFanout(s.plane, s.stores, lambda: [
            n.node_id for n in router.nodelist.nodes if n.node_id != me])
        backend.heads.serve()
        metrics.export_counters("objcache_bucket_head_fanout", "A listing's HEADs spread over "
                                "the nodes: batches, shares sent, failed (HEADed here), "
                                "served for peers", backend.heads.stats)
    metrics.export_counters("objcache_gateway_changes", "Cluster gateway transactions: "
                            "sent, aborted, re-planned, re-read, resent", backend.stats)
    metrics.export_counters("objcache_router_calls", "Requests to group leaders: calls, "
                            "remote calls, retries, unavailable", router.stats)
    metrics.export_counters("objcache_gateway_leases", "Other groups' inodes and names this "
                            "gateway answered from replies held under leases (hits), asked "
                            "for (misses), and Revokes it took", backend.lease_stats)
    metrics.export_counters("objcache_group_leases", "Leases this node's group granted to "
                            "other nodes' gateways; Revokes sent and acknowledged; changes "
                            "that waited for them", runtime.lease_stats)
    await _within(c.bootstrap_timeout_s, lambda: node_fs.wait_root(backend),
                  "the root directory was not made")
    await _within(c.bootstrap_timeout_s,
                  lambda: node_fs.bind_exports(s.cfg, backend, s.stores),
                  "the exports' buckets were not bound")
    return backend


async def _start_services(s: _Start, runtime: GroupRuntime, backend: ClusterBackend) -> None:
    """Write-back, the cache's housekeeping, admin jobs, status, metrics and drains."""
    cfg, router = s.cfg, s.router
    assert router is not None
    flusher = Flusher(backend, flush_config(cfg))
    s.flushers.append(flusher)
    reads = runtime.bucket
    pressed = (lambda: reads.cache.pressed()) if reads is not None else (lambda: False)
    await s.nursery.start(flusher.run, lambda g: runtime.group == g and runtime.is_leader(),
                          pressed)
    if reads is not None:
        runtime.admit = bucket_reads.admission(reads.cache, flusher.stalled)
        s.nursery.start_soon(bucket_reads.housekeeping, reads)
    BucketAdmin(backend, s.plane, flusher).serve(s.nursery)
    serve_status(s.plane, runtime, backend)
    metrics.export_gauges(lambda: node_metrics.gauges(runtime))
    node_metrics.watch(runtime, flusher)
    metrics.export_counters("objcache_writeback", "Write-back: uploads, copies, parts, "
                            "deletes, bytes, errors, rounds", flusher.stats)
    # A drain that verified the bucket stops the node with a SIGTERM to itself: the one
    # path by which a node stops cleanly (server/node.py serve_nfs watches for it).
    Drains(backend, flusher, s.plane, router, stop=_stop_self,
           peer_url=lambda rpc: cfg.cluster_peer_url(_listen(rpc)),
           export_paths={export_id(normalize_path(e.path)): normalize_path(e.path)
                         for e in cfg.exports}).serve(s.nursery)
    # A node whose group left the cluster stops the same way.
    s.nursery.start_soon(_stop_when_left, runtime, cfg.cluster.node_id, _stop_self)


async def _within(seconds: float, wait: Callable[[], Awaitable[object]], what: str) -> None:
    """`await wait()`, or a StartupError saying `what` in `seconds`."""
    with trio.move_on_after(seconds) as waited:
        await wait()
    if waited.cancelled_caught:
        raise StartupError(f"{what} in {seconds} s")


def _stop_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


async def _ino_floor(router: GroupRouter, node_id: int) -> int:
    """The first inode counter a joining node may use: above every id with its prefix that a
    group holds (its id may be that of a node that left; inoalloc.py)."""
    lo, hi = node_id << NODE_SHIFT, (node_id + 1) << NODE_SHIFT
    top = 0
    for group in router.nodelist.groups():
        while True:
            try:
                reply = await router.call(group, p.MaxInode(0, lo, hi))
                break
            except (p.RingChanged, p.Unavailable) as e:
                log.info("inode floor: group %d: %s; asking again", group, e)
        top = max(top, reply.ino)
    floor = (top - lo + 1) if top else 0
    log.info("node %d: a new inode counter: ids from %d (the highest held: %d)", node_id,
             floor, top - lo if top else -1)
    return floor


async def _stop_when_left(runtime: GroupRuntime, node_id: int, stop: Callable[[], None]
                          ) -> None:
    """A node whose group left the cluster (ringchange.py) holds nothing any more: it stops
    as on SIGTERM."""
    while True:
        await runtime.ring_event.wait()
        raw = runtime.nodelist_bytes()
        if raw is not None and not NodeList.decode(raw).has(node_id):
            log.info("node %d: left the cluster; stopping", node_id)
            await trio.sleep(LEAVE_GRACE_S)  # the answer to the change's last step goes out
            stop()
            return


def _know(plane: RpcPlane, cfg: Config, nodelist: NodeList, node_id: int) -> list[int]:
    """Every other node of `nodelist`, made a peer of the plane: their ids."""
    others = [n for n in nodelist.nodes if n.node_id != node_id]
    for n in others:
        plane.add_peer(n.node_id, cfg.cluster_peer_url(_listen(n.rpc)))
    return [n.node_id for n in others]


def _other_nodes(runtime: GroupRuntime, node_id: int, before: list[int]) -> list[int]:
    """Every other node of the NodeList this node's group applied (`before` until then)."""
    raw = runtime.nodelist_bytes()
    if raw is None:
        return before
    return [n.node_id for n in NodeList.decode(raw).nodes if n.node_id != node_id]


def _listen(rpc: str) -> Listen:
    listen = parse_listen("a node's rpc address", rpc)
    assert listen is not None, rpc  # NodeInfo.rpc is always an address
    return listen


def flush_config(cfg: Config) -> FlushConfig:
    c = cfg.cache
    # A round's store request runs at most a connect and a read timeout after it was cut;
    # its claim must outlive that (flush_claim.py).
    margin = 2 * cfg.store.timeout_s + 5
    return FlushConfig(delay_s=c.flush_delay_s, interval_s=c.flush_interval_s,
                       parallel=c.flush_parallel, part_parallel=c.flush_part_parallel,
                       claim_margin_s=margin, claim_lease_s=max(60.0, 3 * margin))


def _announce(cfg: Config, me: NodeInfo, rpc: Listen) -> Callable[[str, int], None]:
    def on_serving(host: str, port: int) -> None:
        metrics_addr = cfg.metrics_listen()
        write_ready(data_dir(cfg), node_id=me.node_id, group=me.group, nfs=f"{host}:{port}",
                    rpc=str(rpc), metrics=None if metrics_addr is None else str(metrics_addr),
                    pid=os.getpid())
        log.info("objcache: node %d (group %d) serves the cluster's namespace", me.node_id,
                 me.group)

    return on_serving
