"""Prometheus metrics: the registry and the /metrics endpoint.

prometheus-client serves /metrics from its own small HTTP server thread; scraping never runs
on the trio loop, so a slow scraper cannot stall NFS requests.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import CounterMetricFamily

log = logging.getLogger("objcache.metrics")


def start_http(host: str, port: int) -> None:
    """Serve /metrics on host:port (daemon thread; it ends with the process)."""
    start_http_server(port, addr=host)
    log.info("metrics on http://%s:%d/metrics", host, port)


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
