"""server/cluster/node_metrics.py: what a scrape reads from the node's parts, and how often it
scans the dirty inodes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from server.cluster import node_metrics


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def parts() -> tuple[Any, Any]:
    cache = SimpleNamespace(stats={"hits": 7, "misses": 3, "admitted": 3, "evicted": 2,
                                   "forgotten": 1, "refused": 0})
    runtime = SimpleNamespace(group=4, driver=SimpleNamespace(leader_changes=2,
                                                              dropped_messages=0),
                              storage=SimpleNamespace(saves=9, batches_written=4,
                                                      batches_synced=3, batches_inline=2),
                              kv=SimpleNamespace(synced_writes={"journal": 6, "leveldb": 1,
                                                                "journal_wraps": 0}),
                              bucket=SimpleNamespace(cache=cache))
    flusher = SimpleNamespace(stats={"uploads": 5, "bytes": 12345, "errors": 1},
                              _first_seen={10: 1.0, 11: 2.0})
    return runtime, flusher


def scrape(nm: node_metrics.NodeMetrics) -> dict[str, float]:
    """'name{labels}' -> value, from the exposition text."""
    registry = CollectorRegistry()
    registry.register(nm)
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The dirty scans made (each answers 3 files of 4096 bytes)."""
    made: list[int] = []

    def fake_dirty_sync(runtime: Any) -> tuple[int, int]:
        made.append(runtime.group)
        return 3, 4096

    monkeypatch.setattr(node_metrics, "dirty_sync", fake_dirty_sync)
    return made


def test_a_scrape_reads_every_part(scans: list[int]) -> None:
    runtime, flusher = parts()
    got = scrape(node_metrics.NodeMetrics(runtime, flusher, Clock()))
    assert got["objcache_raft_leader_changes_total"] == 2
    assert got['objcache_raft_log_writes_total{kind="saves"}'] == 9
    assert got['objcache_raft_log_writes_total{kind="batches"}'] == 4
    assert got['objcache_raft_log_writes_total{kind="synced_batches"}'] == 3
    assert got['objcache_raft_log_writes_total{kind="inline_batches"}'] == 2
    assert got['objcache_kv_synced_writes_total{path="journal"}'] == 6
    assert got['objcache_kv_synced_writes_total{path="leveldb"}'] == 1
    assert got['objcache_kv_synced_writes_total{path="journal_wraps"}'] == 0
    assert got['objcache_dirty_files{group="4"}'] == 3
    assert got['objcache_dirty_bytes{group="4"}'] == 4096
    assert got["objcache_writeback_queue_inodes"] == 2
    assert got["objcache_writeback_uploads_total"] == 5
    assert got["objcache_writeback_uploaded_bytes_total"] == 12345
    assert got["objcache_writeback_upload_errors_total"] == 1
    assert got["objcache_cache_hits_total"] == 7 and got["objcache_cache_misses_total"] == 3
    assert got['objcache_cache_evictions_total{reason="capacity"}'] == 2
    assert got['objcache_cache_evictions_total{reason="forgotten"}'] == 1


def test_without_a_bucket_there_is_no_cache(scans: list[int]) -> None:
    runtime, flusher = parts()
    runtime.bucket = None
    got = scrape(node_metrics.NodeMetrics(runtime, flusher, Clock()))
    assert "objcache_cache_hits_total" not in got and "objcache_raft_leader_changes_total" in got


def test_dirty_inodes_are_scanned_at_most_every_sample_interval(scans: list[int]) -> None:
    runtime, flusher = parts()
    clock = Clock()
    nm = node_metrics.NodeMetrics(runtime, flusher, clock)
    assert nm.dirty() == (3, 4096) and nm.dirty() == (3, 4096)
    assert len(scans) == 1
    clock.t += node_metrics.DIRTY_SAMPLE_S
    nm.dirty()
    assert len(scans) == 2


def test_the_watched_node_is_on_the_process_registry(scans: list[int]) -> None:
    runtime, flusher = parts()
    node_metrics.watch(runtime, flusher)
    try:
        text = generate_latest(node_metrics.REGISTRY).decode()
        assert 'objcache_dirty_files{group="4"} 3.0' in text
    finally:
        node_metrics._watched.node = None
