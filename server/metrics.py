"""Prometheus metrics: the registry, and the node's HTTP endpoint: /metrics, /healthz, /readyz.

The endpoint is a small threaded WSGI server (prometheus-client's app for /metrics); scraping
never runs on the trio loop, so a slow scraper cannot stall NFS requests.
- /healthz: 200 while the node's trio loop beats (`heartbeat`, every HEARTBEAT_S); 503 when
  the loop has not beaten for HEALTH_STALE_S (stuck: a liveness probe should restart it).
- /readyz: 200 once the node serves NFS and `set_ready`'s check holds (the node's group has
  a leader); 503 otherwise (a readiness probe keeps traffic away).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import accumulate
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import trio
from prometheus_client import REGISTRY, Counter, Histogram, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from nfs_gateway.nfs3.const import Stat
from nfs_gateway.opstats import LATENCY_BOUNDS_S, OpStats

if TYPE_CHECKING:
    from nfs_gateway.exports import ExportTable
    from nfs_gateway.server import RpcServer
    from server.rpc.plane import RpcPlane

log = logging.getLogger("objcache.metrics")

HEARTBEAT_S = 1.0
HEALTH_STALE_S = 10.0
_state: dict[str, Any] = {"beat": time.monotonic(), "ready": lambda: False}


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # probes every few seconds would flood the node's log


def _app(metrics_app: Callable[..., Any]) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            ok = time.monotonic() - _state["beat"] < HEALTH_STALE_S
        elif path == "/readyz":
            ok = bool(_state["ready"]())
        else:
            return metrics_app(environ, start_response)
        body = b"ok\n" if ok else b"not ok\n"
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return app


def start_http(host: str, port: int) -> None:
    """Serve /metrics, /healthz and /readyz on host:port (daemon threads; they end with the
    process)."""
    server = make_server(host, port, _app(make_wsgi_app(REGISTRY)), server_class=_Server,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="objcache-metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics (and /healthz, /readyz)", host, port)


def set_ready(check: Callable[[], bool]) -> None:
    """What /readyz answers from now on (the node calls this once it serves NFS)."""
    _state["ready"] = check


async def heartbeat() -> None:
    """Beat for /healthz while the trio loop runs (a task of the node)."""
    while True:
        _state["beat"] = time.monotonic()
        await trio.sleep(HEARTBEAT_S)


class _CountersOf:
    """Exports a component's plain dict of counters (event -> count) as one labelled counter:
    the component counts with `stats[event] += 1` and knows nothing of Prometheus."""

    def __init__(self, name: str, documentation: str, counters: Mapping[str, int]) -> None:
        self.name, self.documentation, self.counters = name, documentation, counters

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=["event"])
        for event, count in sorted(self.counters.items()):
            family.add_metric([event], count)
        yield family


def export_counters(name: str, documentation: str, counters: Mapping[str, int]) -> None:
    """Publish `counters` on /metrics as `<name>_total{event="..."}` (once per process)."""
    REGISTRY.register(_CountersOf(name, documentation, counters))


# -- the object store (storage/objstore's observe hook) -----------------------------------------

STORE_REQUESTS = Counter("objcache_store_requests_total",
                         "Object-store requests (attempts) by operation and outcome",
                         ["op", "outcome"])
STORE_BYTES = Counter("objcache_store_bytes_total", "Bytes moved by object-store requests",
                      ["op"])
STORE_SECONDS = Histogram("objcache_store_request_seconds",
                          "Latency of object-store request attempts", ["op"])


def observe_store(op: str, seconds: float, nbytes: int, error: str | None) -> None:
    """storage.objstore's Observe hook: one call per request attempt."""
    STORE_REQUESTS.labels(op, error or "ok").inc()
    if nbytes:
        STORE_BYTES.labels(op).inc(nbytes)
    STORE_SECONDS.labels(op).observe(seconds)


class _GaugesOf:
    """Exports gauges read when scraped: `read()` returns {name: (documentation, value)}."""

    def __init__(self, read: Callable[[], Mapping[str, tuple[str, float]]]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, (doc, value) in sorted(self.read().items()):
            yield GaugeMetricFamily(name, doc, value=value)


def export_gauges(read: Callable[[], Mapping[str, tuple[str, float]]]) -> None:
    """Publish gauges computed at scrape time (once per process)."""
    REGISTRY.register(_GaugesOf(read))


# -- the NFS gateway: procedures (nfs_gateway/opstats.py) and the RPC server ---------------------

# Calls refused before a procedure was known (nfs_gateway/dispatch.py's counters), by reason.
_REJECTED = {"dropped": "dropped", "RpcMismatch": "rpc_mismatch", "AuthError": "auth_error",
             "GarbageCall": "garbage_call", "prog_unavail": "prog_unavail",
             "prog_mismatch": "prog_mismatch", "proc_unavail": "proc_unavail"}
_LE = [*(floatToGoString(b) for b in LATENCY_BOUNDS_S), "+Inf"]


def error_label(status: object) -> str:
    """An error's label: NFS3ERR_* for an nfsstat3 (RFC 1813 §2.6), the name of a mountstat3
    or an RPC accept_stat (GARBAGE_ARGS, SYSTEM_ERR) as it is."""
    if isinstance(status, Stat):
        return f"NFS3ERR_{status.name}"
    return str(getattr(status, "name", status))


def op_families(ops: Iterable[OpStats]) -> Iterator[Metric]:
    """The procedures' latency histograms and error counters (every procedure is present from
    the start, so a rate over its first calls is not lost)."""
    seconds = HistogramMetricFamily(
        "objcache_nfs_op_seconds",
        "NFS, MOUNT and portmap calls answered, by program and procedure: time from the "
        "request's record to its encoded reply. _count is the calls; errors among them are "
        "objcache_nfs_op_errors_total", labels=["program", "proc"])
    errors = CounterMetricFamily(
        "objcache_nfs_op_errors", "Calls answered with an error, by program, procedure and "
        "error: an nfsstat3 (NFS3ERR_*), a mountstat3 (MNT3ERR_*) or an RPC accept_stat "
        "(GARBAGE_ARGS, SYSTEM_ERR)", labels=["program", "proc", "error"])
    # One row per (program, procedure): several listeners may serve the same program.
    buckets: dict[tuple[str, str], list[int]] = {}
    sums: dict[tuple[str, str], float] = {}
    errs: dict[tuple[str, str, str], int] = {}
    for st in ops:
        counts, sum_s, by_status = st.snapshot()
        key = (st.program, st.proc)
        buckets[key] = [a + b for a, b in zip(buckets.get(key, [0] * len(counts)), counts,
                                              strict=True)]
        sums[key] = sums.get(key, 0.0) + sum_s
        for status, n in by_status.items():
            ekey = (*key, error_label(status))
            errs[ekey] = errs.get(ekey, 0) + n
    for key, counts in sorted(buckets.items()):
        seconds.add_metric(key, list(zip(_LE, accumulate(counts), strict=True)), sums[key])
    for ekey, n in sorted(errs.items()):
        errors.add_metric(ekey, n)
    yield seconds
    yield errors


def rpc_families(stats: Mapping[str, int]) -> Iterator[Metric]:
    """RpcServer.stats(): refused calls, duplicate-request-cache replays, connections."""
    rejected = CounterMetricFamily(
        "objcache_rpc_rejected", "RPC calls refused before a procedure ran, by reason "
        "(RFC 5531 §9: rpc_mismatch, auth_error, prog_unavail, ...; dropped: unanswerable)",
        labels=["reason"])
    for key, reason in sorted(_REJECTED.items(), key=lambda kv: kv[1]):
        rejected.add_metric([reason], stats.get(key, 0))
    yield rejected
    drc = CounterMetricFamily(
        "objcache_rpc_drc", "Retransmitted non-idempotent calls the duplicate request cache "
        "answered (replay) or dropped while the first was running (in_progress); calls run "
        "unprotected because it was full (uncached)", labels=["event"])
    for event, key in (("in_progress", "drc_in_progress"), ("replay", "drc_replay"),
                       ("uncached", "drc_uncached")):
        drc.add_metric([event], stats.get(key, 0))
    yield drc
    yield CounterMetricFamily("objcache_rpc_refused_connections",
                              "Connections closed at once: the connection limit was reached",
                              value=stats.get("refused_connections", 0))
    yield GaugeMetricFamily("objcache_rpc_connections", "Open NFS/MOUNT client connections",
                            value=stats.get("connections", 0))
    yield GaugeMetricFamily("objcache_rpc_in_flight_bytes", "Request bytes being served",
                            value=stats.get("in_flight_bytes", 0))


class _RpcCollector:
    """The node's RPC server, when it has one (`watch_rpc`)."""

    def __init__(self) -> None:
        self.server: RpcServer | None = None

    def collect(self) -> Iterator[Metric]:
        server = self.server
        if server is None:
            return
        yield from op_families(server.op_stats())
        yield from rpc_families(server.stats())


_rpc = _RpcCollector()
REGISTRY.register(_rpc)


def watch_rpc(server: RpcServer) -> None:
    """Export `server`'s procedures and connections on /metrics. A node process has one RPC
    server; the latest one given is exported (a test that builds several in one process)."""
    _rpc.server = server


# -- access control: export refusals (nfs_gateway/exports.py), RPC plane refusals --------------

_EXPORT_REASONS = ("address", "bad_address", "insecure_port", "read_only")
_PLANE_REFUSALS = (("node", "bad_proof"), ("node", "bad_identity"), ("node", "bad_handshake"),
                   ("admin", "bad_proof"), ("admin", "bad_identity"), ("admin", "bad_handshake"),
                   ("admin", "forbidden"))


class _AccessCollector:
    """Refusals of the node's export table and RPC plane (`watch_exports`, `watch_plane`)."""

    def __init__(self) -> None:
        self.exports: ExportTable | None = None
        self.plane: RpcPlane | None = None

    def collect(self) -> Iterator[Metric]:
        if self.exports is not None:
            family = CounterMetricFamily(
                "objcache_export_refusals", "NFS and MOUNT calls refused by an export, by "
                "export and reason: address (not in exports.clients; NFS3ERR_ACCES, "
                "MNT3ERR_ACCES), bad_address, insecure_port (a source port >= 1024 on an export "
                "without insecure; NFS3ERR_PERM, MNT3ERR_ACCES), read_only (NFS3ERR_ROFS)",
                labels=["export", "reason"])
            counts = dict(self.exports.refusals)  # a copy: the trio thread may add a key
            for export in self.exports.all():
                for reason in _EXPORT_REASONS:
                    family.add_metric([export.path, reason], counts.get((reason, export.path), 0))
            yield family
        if self.plane is not None:
            family = CounterMetricFamily(
                "objcache_rpc_auth_refusals", "Node RPC plane connections and messages refused, "
                "by peer (node, or admin: an objcache admin client) and reason: bad_proof (wrong "
                "cluster secret or admin token), bad_identity (a node id it may not claim), "
                "bad_handshake (garbage or a timeout instead of a handshake), forbidden (an "
                "admin client sent a message only nodes may send)",
                labels=["peer", "reason"])
            counts = dict(self.plane.refusals)
            for key in _PLANE_REFUSALS:
                family.add_metric(list(key), counts.get(key, 0))
            yield family


_access = _AccessCollector()
REGISTRY.register(_access)


def watch_exports(table: ExportTable) -> None:
    """Export `table`'s refusals (an nfs_gateway ExportTable) on /metrics (the latest given)."""
    _access.exports = table


def watch_plane(plane: RpcPlane) -> None:
    """Export the RPC plane's refusals on /metrics (the latest given)."""
    _access.plane = plane


# -- transactions, membership ------------------------------------------------------------------

# Where the gateway tries again (server/cluster/gateway.py). Committed and aborted transactions
# by kind are objcache_txn_total{kind="local"|"two_phase", outcome} (server/cluster/group_txn.py);
# the two-phase share of committed ones is this query (`or vector(0)`: before the first
# two-phase transaction its series does not exist yet). Prometheus runs it in the tests.
TWO_PHASE_SHARE = (
    '(sum(rate(objcache_txn_total{kind="two_phase",outcome="commit"}[5m])) or vector(0))'
    ' / sum(rate(objcache_txn_total{outcome="commit"}[5m]))')
TXN_RETRIES = Counter(
    "objcache_txn_retries", "Gateway changes whose transaction was tried again: rebuilt with a "
    "new id after a definitive abort (aborted: a conflict; moving: state a ring change holds), "
    "or re-sent with the same id after a lost or undecided answer (resent)", ["reason"])
for _reason in ("aborted", "moving", "resent"):
    TXN_RETRIES.labels(_reason)

# Incremented by the membership changes (join, leave, replica changes) where they commit.
MEMBERSHIP_CHANGES = Counter(
    "objcache_membership_changes", "Cluster membership changes committed, by kind: a group "
    "joined or left the ring, a replica added to or removed from a group", ["kind"])
for _kind in ("join", "leave", "replica_add", "replica_remove"):
    MEMBERSHIP_CHANGES.labels(_kind)
MIGRATED_BYTES = Counter("objcache_migrated_bytes",
                         "Bytes moved to their new owner group by membership changes (metadata "
                         "and dirty chunks; clean chunks stay and are re-read from the bucket)")
