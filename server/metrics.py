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
from collections.abc import Callable, Iterator, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import trio
from prometheus_client import REGISTRY, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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
