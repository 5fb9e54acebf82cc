"""One objcache node: wires the configuration, the backend and the NFS gateway together.

The node owns every long-lived task in one nursery. SIGTERM and SIGINT start a graceful
shutdown: the RPC server stops reading, answers the requests it has, then the backend syncs and
closes. A second signal during shutdown is ignored; the grace period bounds the wait.
"""

from __future__ import annotations

import errno
import logging
import signal
import zlib
from collections.abc import Callable
from pathlib import Path

import trio

from nfs_gateway import exports as gw_exports
from nfs_gateway.drc import DrcLimits, DuplicateRequestCache
from nfs_gateway.limits import RpcLimits
from nfs_gateway.mount import make_mount_program
from nfs_gateway.nfs3.env import Nfs3Config
from nfs_gateway.nfs3.program import handle_maker, make_nfs3_program
from nfs_gateway.portmap import make_portmap_program
from nfs_gateway.server import Listener, RpcServer
from server import gctune, metrics
from server.config import Config, ExportConfig, data_dir
from server.fs.backend import LocalBackend
from server.fs.config import FsConfig
from storage.kv import KvConfig

log = logging.getLogger("objcache.node")

FSID = 1  # one file system per node until the cluster issue gives each tree its own


class StartupError(Exception):
    """The node cannot start (address in use, data directory unusable, ...)."""


def export_id(path: str) -> int:
    """A stable id for an export path: file handles carry it, so it must survive restarts and
    re-ordering of the config file (an index into the list would not)."""
    return zlib.crc32(path.encode())


def make_export_table(cfg: Config) -> gw_exports.ExportTable:
    return gw_exports.ExportTable([_export(e) for e in cfg.exports])


def _export(e: ExportConfig) -> gw_exports.Export:
    import ipaddress

    return gw_exports.Export(
        path=gw_exports.normalize_path(e.path),
        export_id=export_id(gw_exports.normalize_path(e.path)),
        clients=tuple(ipaddress.ip_network(c, strict=False) for c in e.clients),
        read_only=e.read_only,
        root_squash=e.root_squash,
        all_squash=e.all_squash,
        anon_uid=e.anon_uid,
        anon_gid=e.anon_gid,
        insecure=e.insecure,
    )


def make_rpc_server(cfg: Config, backend: LocalBackend) -> RpcServer:
    exports = make_export_table(cfg)
    metrics.watch_exports(exports)
    nfs_config = Nfs3Config(
        rtmax=cfg.nfs.rtmax_bytes,
        rtpref=cfg.nfs.rtmax_bytes,
        wtmax=cfg.nfs.wtmax_bytes,
        wtpref=cfg.nfs.wtmax_bytes,
        dtpref=cfg.nfs.dtpref_bytes,
    )
    nfs = make_nfs3_program(backend, exports, nfs_config)
    mount = make_mount_program(backend, exports, handle_maker(backend))
    nfs_addr = cfg.nfs_listen()
    listeners = [Listener(nfs_addr.host, nfs_addr.port, (nfs, mount))]
    server: RpcServer
    portmap_addr = cfg.portmap_listen()
    if portmap_addr is not None:
        # The portmapper answers from the server's live bindings, so it is built with a late
        # reference to the server it belongs to.
        portmap = make_portmap_program(lambda: server.mappings())
        listeners.append(Listener(portmap_addr.host, portmap_addr.port, (portmap,)))
    lim = cfg.limits
    server = RpcServer(
        listeners,
        RpcLimits(
            max_record_bytes=lim.max_record_bytes,
            max_connections=lim.max_connections,
            max_in_flight_per_connection=lim.max_in_flight_per_connection,
            idle_timeout_s=lim.idle_timeout_s,
        ),
        DuplicateRequestCache(DrcLimits(lim.drc_max_entries, lim.drc_max_bytes)),
        # One node's own disk answers every call; a cluster's calls may wait on its peers.
        answer_inline=isinstance(backend, LocalBackend),
    )
    metrics.watch_rpc(server)  # its procedures and connections on /metrics
    return server


async def _open_backend(cfg: Config) -> LocalBackend:
    path: Path = data_dir(cfg)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StartupError(f"data directory {path}: {e.strerror}") from None
    st = cfg.storage
    fs_config = FsConfig(
        chunk_size=st.chunk_size_bytes,
        kv=KvConfig(threads=st.kv_threads),
        sync_metadata=st.sync_metadata,
        inline_max_bytes=st.inline_max_bytes,
    )
    backend = LocalBackend(path, fsid=FSID, config=fs_config)
    await backend.open()
    return backend


async def _watch_signals(server: RpcServer) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("%s: shutting down", signal.Signals(signum).name)
            server.shutdown()
            return


async def serve(cfg: Config) -> None:
    """Run the node until SIGTERM/SIGINT."""
    if cfg.cluster.node_id:
        from server.cluster.node import serve_cluster  # the cluster imports this module

        try:
            await serve_cluster(cfg, make_rpc_server)
        except* StartupError as group:
            raise group.exceptions[0] from None
        return
    backend = await _open_backend(cfg)
    try:
        server = make_rpc_server(cfg, backend)
        await _run(cfg, server, backend)
    except* StartupError as group:
        # trio wraps errors of a nursery in a group; a start-up failure is one plain error.
        raise group.exceptions[0] from None
    finally:
        with trio.CancelScope(shield=True):
            await backend.close()
        log.info("objcache: stopped; data synced")


async def _run(cfg: Config, server: RpcServer, backend: LocalBackend) -> None:
    async with trio.open_nursery() as services:
        await services.start(backend.run)
        # The RPC server and the signal watcher live in serve_nfs's nursery: it ends when a
        # signal has made the server answer what it read and return; then the services stop,
        # and serve() syncs and closes the backend.
        host, port = await serve_nfs(cfg, server)
        log.info("objcache: stopped serving %s:%d", host, port)
        services.cancel_scope.cancel()


async def serve_nfs(cfg: Config, server: RpcServer,
                    on_serving: Callable[[str, int], None] | None = None,
                    ready: Callable[[], bool] = lambda: True) -> tuple[str, int]:
    """Run the NFS server (and /metrics, /healthz, /readyz) until SIGTERM/SIGINT has made it
    answer what it read and return. `on_serving(host, port)` runs once it listens; from then
    on /readyz answers `ready()`. Returns the NFS address."""
    beat = trio.CancelScope()

    async def heartbeat() -> None:
        with beat:
            await metrics.heartbeat()

    async def watch_signals() -> None:
        await _watch_signals(server)
        beat.cancel()  # the server is stopping: nothing left to beat for

    async with trio.open_nursery() as rpc:
        try:
            bound = await rpc.start(server.run)
        except OSError as e:
            reason = "address in use" if e.errno == errno.EADDRINUSE else e.strerror
            raise StartupError(f"cannot listen: {reason}") from None
        metrics_addr = cfg.metrics_listen()
        if metrics_addr is not None:
            metrics.start_http(metrics_addr.host, metrics_addr.port)
        rpc.start_soon(heartbeat)
        rpc.start_soon(watch_signals)
        for host, port in bound[1:]:
            log.info("objcache: portmapper on %s:%d", host, port)
        host, port = bound[0]
        if on_serving is not None:
            on_serving(host, port)
        metrics.set_ready(ready)
        gctune.freeze_startup()  # what is alive now lives as long as the process
        log.info(
            "objcache: serving NFS v3 on %s:%d (data in %s); mount with: "
            "mount -t nfs -o vers=3,proto=tcp,port=%d,mountport=%d,nolock %s:/ /mnt",
            host, port, data_dir(cfg), port, port, host,
        )
    return host, port
