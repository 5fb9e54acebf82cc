"""Prometheus metrics: the registry and the /metrics endpoint.

prometheus-client serves /metrics from its own small HTTP server thread; scraping never runs
on the trio loop, so a slow scraper cannot stall NFS requests.
"""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

log = logging.getLogger("objcache.metrics")


def start_http(host: str, port: int) -> None:
    """Serve /metrics on host:port (daemon thread; it ends with the process)."""
    start_http_server(port, addr=host)
    log.info("metrics on http://%s:%d/metrics", host, port)
