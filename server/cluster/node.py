"""A cluster node: its group member, the router, and the NFS gateway over the whole namespace.

Start-up, in order (each step needs the one before):
1. Open the node's LevelDB and chunk directory; start the RPC plane (peers from config).
2. Agree on the first NodeList with the peers (membership.bootstrap_nodelist) — or read the
   one this node's group already applied, on a restart.
3. Open the group member (GroupRuntime) and the router; start them.
4. Wait until this node's group has a leader with the NodeList applied, then serve NFS through
   a ClusterBackend, and write `ready.json` (server/cluster/ready.py) for `objcache cluster up`.
SIGTERM/SIGINT, or a drain that verified the bucket (drain.py): the NFS server answers what it
read and stops; then everything stops and the LevelDB is closed (acknowledged writes are in the
Raft log already; nothing else to flush).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import trio

from nfs_gateway.backend import Cred, FsError, NoEnt, SetAttrs
from nfs_gateway.exports import normalize_path
from server import metrics
from server.cluster import bucket_reads, fsops, node_metrics, queries
from server.cluster import protocol as p
from server.cluster.bucket_admin import BucketAdmin
from server.cluster.drain import Drains
from server.cluster.flush import FlushConfig, Flusher
from server.cluster.freshness import Freshness
from server.cluster.gateway import ClusterBackend
from server.cluster.group import GroupConfig, GroupRuntime, register_txn_messages
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
from server.config import Config, Listen, data_dir, parse_listen, store_spec
from server.fs.config import FsConfig
from server.node import StartupError, export_id, serve_nfs
from server.rpc.plane import RpcConfig, RpcPlane
from server.rpc.raft_wire import register_raft_types
from storage.chunks import ChunkStore
from storage.kv import KvConfig, KvStore
from storage.objstore.base import ObjectStore
from storage.objstore.url import open_store
from txn.state import TxnState

log = logging.getLogger("objcache.node")

FSID = 1  # the cluster serves one file system
LEAVE_GRACE_S = 0.5  # a node whose group left answers what it was asked, then stops
FRESHNESS_WAIT_S = 10.0  # the data directory check waits this long for silent peers
ROOT_CRED = Cred(0, 0)


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
    try:
        await _serve_on(cfg, kv, chunks, fsc, make_rpc_server)
    finally:
        with trio.CancelScope(shield=True):
            remove_ready(root)
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


async def _serve_on(cfg: Config, kv: KvStore, chunks: ChunkStore, fsc: FsConfig,
                    make_rpc_server) -> None:  # type: ignore[no-untyped-def]
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
    peers = {i: str(a) for i, a in peer_addrs.items()}
    nfs = cfg.nfs_listen()
    me = NodeInfo(c.node_id, cfg.cluster_group(), str(cfg.cluster_rpc_address()),
                  f"{nfs.host}:{nfs.port}")
    # Every message a peer may send must decode from the moment the plane listens: a
    # restarting node's peers send it Raft heartbeats and txn notices before its group
    # member is open, and an unknown tag closed their connections as garbage (found by the
    # fault campaign; tests/faults/test_found_by_campaign.py).
    register_raft_types()
    register_txn_messages()
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(plane.run)
        except OSError as e:
            reason = "address in use" if e.errno == errno.EADDRINUSE else e.strerror
            raise StartupError(f"cluster.listen {listen}: {reason}") from None
        # Peers still bootstrapping ask us even when we have our list already (a restart).
        serve_hello(plane, me, tuple(sorted({*peers, c.node_id})))
        stored = await kv.get(NODELIST)
        nodelist: NodeList | None = None
        if stored is not None:
            nodelist = NodeList.decode(stored)
            if not nodelist.has(c.node_id):
                raise StartupError(f"node {c.node_id} left the cluster (node list version "
                                   f"{nodelist.version}); to serve again, start it with an "
                                   "empty data directory and --join")
        # Before anything of this node's state can reach a peer or a client: is the data
        # directory older than what a peer saw from it (freshness.py)?
        fresh = await Freshness(kv, c.node_id).open()
        fresh.serve(plane)
        listed = _know(plane, cfg, nodelist, c.node_id) if nodelist else []  # joined later too
        others = sorted({*peers, *listed})
        await fresh.check(plane, others, min(FRESHNESS_WAIT_S, c.bootstrap_timeout_s))
        waiting = AwaitJoin(plane) if nodelist is None and c.await_join else None
        if waiting is not None:
            waiting.serve()
        if nodelist is None and not c.join and waiting is None:
            log.info("node %d: agreeing on the node list with %d peers", c.node_id, len(peers))
            nodelist = await bootstrap_nodelist(plane, me, peers, c.bootstrap_timeout_s)
        # The object stores first: building an S3 client holds this loop a moment, which must
        # not happen once a ring change gave this node state to serve.
        stores = _open_stores(cfg)
        seed = 0
        replica = False  # joining a group that exists: its log comes from its leader
        if nodelist is None:
            join = cfg.cluster_join() or (await waiting.order() if waiting else None)
            if join is None:  # stopped while waiting for `objcache admin join`
                nursery.cancel_scope.cancel()
                return
            log.info("node %d: joining the cluster through %s", c.node_id, join)
            try:
                seed, current = await learn_cluster(plane, cfg.cluster_peer_url(join),
                                                    c.bootstrap_timeout_s)
            except JoinError as e:
                await _join_failed(waiting, str(e))
            replica = me.group in current.groups()
            # This id may have served before and left: the members keep a record of its old
            # directory's counter, which a report made while the id is not listed replaces;
            # a member that still lists it refuses an empty directory (freshness.py).
            await fresh.check(plane, _know(plane, cfg, current, c.node_id),
                              min(FRESHNESS_WAIT_S, c.bootstrap_timeout_s))
        group = me.group
        app = fsops.FsApplication(fsc)
        sm = GroupStateMachine(kv, chunks, app, TxnState(app), fsops.perform_effects_sync,
                               group=group, vnodes=c.vnodes)
        router: GroupRouter | None = None
        runtime = await GroupRuntime.open(
            node_id=c.node_id, group=group,
            members=list(nodelist.members(group)) if nodelist else (
                [] if replica else [c.node_id]), kv=kv, sm=sm,
            plane=plane, answer=queries.answer,
            root_ops=_root_ops(fsc) if nodelist and nodelist.ring(c.vnodes).group_of_inode(
                1) == group else None,
            nodelist_bytes=nodelist.encode() if nodelist else None,
            post=lambda g, m: router.post(g, m) if router is not None else None,
            config=GroupConfig(), vnodes=c.vnodes)
        flusher_box: list[Flusher] = []

        async def flush_all() -> None:  # before this node's group leaves (ringchange.py)
            for f in flusher_box:
                for store in sorted(f.b.store_roots):
                    try:
                        await f.round(store, force=True)
                    except Exception as e:  # what is not written back moves with the rest
                        log.warning("leave: writing back store %d: %r", store, e)

        rings = RingMember(runtime, plane, fsc.chunk_size, flush_all,
                           stop=lambda: os.kill(os.getpid(), signal.SIGTERM))
        await nursery.start(runtime.run)
        nursery.start_soon(rings.run)
        nursery.start_soon(fresh.run, plane, lambda: _other_nodes(runtime, c.node_id, others))
        if nodelist is None:  # joining: the change brings our group the NodeList
            try:
                nodelist = await join_cluster(plane, runtime, me, seed, c.bootstrap_timeout_s)
            except JoinError as e:
                await _join_failed(waiting, str(e))
            if waiting is not None:
                waiting.joined(nodelist.encode())
        router = GroupRouter(plane, c.node_id, nodelist, runtime, vnodes=c.vnodes,
                             request_timeout_s=c.request_timeout_s)
        await nursery.start(router.run)
        with trio.move_on_after(c.bootstrap_timeout_s) as waited:
            await runtime.wait_serving()
        if waited.cancelled_caught:
            raise StartupError(f"group {group} elected no leader in {c.bootstrap_timeout_s} s")
        alloc = await InoAllocator.open(
            kv, c.node_id, floor=(lambda: _ino_floor(router, c.node_id)) if seed else None)
        bucket = cfg.cache
        if stores:
            fetch = await bucket_reads.attach(runtime, stores, bucket)
            fetch.nursery = nursery
            metrics.export_counters("objcache_bucket_fetch", "Chunks fetched from the bucket: "
                                    "fetches, fetched bytes, ranged GETs", fetch.stats)
            metrics.export_counters("objcache_chunk_cache", "The clean chunk cache: hits, "
                                    "misses, admitted, evicted, refused", fetch.cache.stats)
        backend = ClusterBackend(router, alloc, fsc, FSID, c.node_id, stores=stores,
                                 bucket=bucket, home_group=(
                                     router.home_group if c.dir_placement == "local" else None))
        backend._nursery = nursery
        metrics.export_counters("objcache_gateway_changes", "Cluster gateway transactions: "
                                "sent, aborted, re-planned, re-read, resent", backend.stats)
        metrics.export_counters("objcache_router_calls", "Requests to group leaders: calls, "
                                "remote calls, retries, unavailable", router.stats)
        with trio.move_on_after(c.bootstrap_timeout_s) as waited:
            await _wait_root(backend)
        if waited.cancelled_caught:
            raise StartupError(f"the root directory was not made in {c.bootstrap_timeout_s} s")
        with trio.move_on_after(c.bootstrap_timeout_s) as waited:
            await _bind_exports(cfg, backend, stores)
        if waited.cancelled_caught:
            raise StartupError(f"the exports' buckets were not bound in "
                               f"{c.bootstrap_timeout_s} s")
        flusher = Flusher(backend, flush_config(cfg))
        flusher_box.append(flusher)
        reads = runtime.bucket
        pressed = (lambda: reads.cache.pressed()) if reads is not None else (lambda: False)
        await nursery.start(flusher.run, lambda g: runtime.group == g and runtime.is_leader(),
                            pressed)
        if reads is not None:
            runtime.admit = bucket_reads.admission(reads.cache, flusher.stalled)
            nursery.start_soon(bucket_reads.housekeeping, reads)
        BucketAdmin(backend, plane, flusher).serve(nursery)
        serve_status(plane, runtime, backend)
        metrics.export_gauges(lambda: _gauges(runtime))
        node_metrics.watch(runtime, flusher)
        metrics.export_counters("objcache_writeback", "Write-back: uploads, copies, parts, "
                                "deletes, bytes, errors, rounds", flusher.stats)
        # A drain that verified the bucket stops the node with a SIGTERM to itself: the one
        # path by which a node stops cleanly (server/node.py serve_nfs watches for it).
        Drains(backend, flusher, plane, router,
               stop=lambda: os.kill(os.getpid(), signal.SIGTERM),
               peer_url=lambda rpc: cfg.cluster_peer_url(_listen(rpc)),
               export_paths={export_id(normalize_path(e.path)): normalize_path(e.path)
                             for e in cfg.exports}).serve(nursery)
        # A node whose group left the cluster stops the same way.
        nursery.start_soon(_stop_when_left, runtime, c.node_id,
                           lambda: os.kill(os.getpid(), signal.SIGTERM))
        await serve_nfs(cfg, make_rpc_server(cfg, backend),
                        _announce(cfg, me, cfg.cluster_rpc_address()),
                        ready=lambda: runtime.leader_id() != 0)
        nursery.cancel_scope.cancel()


def _gauges(runtime: GroupRuntime) -> dict[str, tuple[str, float]]:
    """The node's Raft and cache state, read when /metrics is scraped."""
    st = runtime.driver.node.status()
    out = {
        "objcache_raft_term": ("This node's Raft term", st.term),
        "objcache_raft_commit_index": ("Highest log index known committed", st.commit),
        "objcache_raft_applied_index": ("Highest log index applied", st.applied),
        "objcache_raft_is_leader": ("1 when this node leads its group", float(
            st.lead == runtime.node_id)),
        "objcache_raft_log_entries": ("Entries kept in the Raft log (after compaction)",
                                      max(0, runtime.storage.last_index()
                                          - runtime.storage.first_index() + 1)),
        "objcache_raft_log_bytes": ("Bytes of the entries kept in the Raft log (as stored)",
                                    runtime.storage.log_bytes),
        "objcache_ring_version": ("The NodeList version this node's group applied",
                                  runtime.ring_version()),
    }
    if runtime.bucket is not None:
        u = runtime.bucket.cache.usage()
        out["objcache_cache_clean_bytes"] = ("Clean cached chunk bytes", u["clean_bytes"])
        out["objcache_cache_pinned_bytes"] = ("Chunk bytes only write-back can free",
                                              u["pinned_bytes"])
        out["objcache_cache_capacity_bytes"] = ("The cache's capacity", u["capacity_bytes"])
    return out


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


def _open_stores(cfg: Config) -> dict[int, ObjectStore]:
    """The object store of each export that names one (by export id, which inodes carry).
    A cluster has no default bucket: a local directory per node would not be shared."""
    stores: dict[int, ObjectStore] = {}
    for e in cfg.exports:
        if not (e.store or (e.path == "/" and cfg.store.url)):
            continue
        spec = store_spec(cfg, e)
        if spec is not None:
            spec = dataclasses.replace(spec, observe=metrics.observe_store)
            stores[export_id(normalize_path(e.path))] = open_store(spec)
            log.info("export %s: bucket %s", e.path, spec.url)
    return stores


async def _bind_exports(cfg: Config, backend: ClusterBackend,
                        stores: dict[int, ObjectStore]) -> None:
    """Each export with a store: its directory exists (made as root if missing) and is bound
    to the store; the write-back learns the store's root."""
    for e in cfg.exports:
        path = normalize_path(e.path)
        store_id = export_id(path)
        if store_id not in stores:
            continue
        while True:
            try:
                fid = await backend.export_root("/")
                for part in (x for x in path.split("/") if x):
                    try:
                        fid = (await backend.lookup(ROOT_CRED, fid, part.encode())).fid
                    except NoEnt:
                        fid = (await backend.mkdir(ROOT_CRED, fid, part.encode(),
                                                   SetAttrs(mode=0o755))).fid
                await backend.bind_store(fid, store_id)
                backend.store_roots[store_id] = fid.ino
                break
            except (FsError, p.Unavailable, p.RingChanged) as err:
                log.info("binding export %s to its bucket: %s (retrying)", path, err)
                await trio.sleep(0.2)


async def _wait_root(backend: ClusterBackend) -> None:
    """Until the root directory exists: its group's first leader makes it, maybe a moment after
    this node's group is ready; a MOUNT before then would fail."""
    while True:
        try:
            await backend.export_root("/")
            return
        except (FsError, p.Unavailable, p.RingChanged) as e:
            log.debug("waiting for the root directory: %s", e)
            await trio.sleep(0.05)


def _announce(cfg: Config, me: NodeInfo, rpc: Listen) -> Callable[[str, int], None]:
    def on_serving(host: str, port: int) -> None:
        metrics_addr = cfg.metrics_listen()
        write_ready(data_dir(cfg), node_id=me.node_id, group=me.group, nfs=f"{host}:{port}",
                    rpc=str(rpc), metrics=None if metrics_addr is None else str(metrics_addr),
                    pid=os.getpid())
        log.info("objcache: node %d (group %d) serves the cluster's namespace", me.node_id,
                 me.group)

    return on_serving


def _root_ops(fsc: FsConfig):  # type: ignore[no-untyped-def]
    def make() -> bytes:
        # The generation must differ between file systems made in the same data directory
        # name, so handles from an older cluster are stale, never valid by accident.
        gen = (secrets.randbits(31) << 1) | 1
        return fsops.root_ops(gen, time.time_ns(), fsc.root_mode, fsc.root_uid, fsc.root_gid)

    return make

