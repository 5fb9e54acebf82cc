"""A cluster node's metrics read when /metrics is scraped: Raft leader changes, the write-back's
backlog and progress, the chunk cache's hits, misses and evictions.

Rules:
- Nothing here runs on a request path. The components count in their own plain fields
  (RaftDriver.leader_changes, Flusher.stats, ChunkCache.stats) where the event happens; this
  collector reads them on the scraper's thread (plain reads of ints and dict sizes).
- Dirty files and bytes are the group's applied state (status.dirty_sync: a LevelDB scan of
  at most status.MAX_DIRTY_COUNTED inodes, off the trio thread as every scrape is). One scan
  at a time, and at most one per DIRTY_SAMPLE_S: a scrape in between gets the last figures.
  Every member of a group reports the same (its replica of the state): aggregate them with
  `max by (group)`, not a sum.
- The node calls `watch` once its parts run; the collector is registered on import, so a
  process never registers two (the latest node watched is the one exported).

PromQL for the ratios (rates over 5 minutes):
  hit ratio   sum(rate(objcache_cache_hits_total[5m]))
                / (sum(rate(objcache_cache_hits_total[5m]))
                   + sum(rate(objcache_cache_misses_total[5m])))
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from server.cluster.status import MAX_DIRTY_COUNTED, dirty_sync

if TYPE_CHECKING:
    from server.cluster.flush import Flusher
    from server.cluster.group import GroupRuntime

DIRTY_SAMPLE_S = 5.0


class NodeMetrics:
    def __init__(self, runtime: GroupRuntime, flusher: Flusher,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.runtime = runtime
        self.flusher = flusher
        self._clock = clock
        self._lock = threading.Lock()
        self._dirty: tuple[float, int, int] | None = None  # (when, files, bytes)

    def collect(self) -> Iterator[Metric]:
        yield from self._raft()
        yield from self._writeback()
        yield from self._cache()

    def dirty(self) -> tuple[int, int]:
        """(dirty files, their bytes) of this node's group, scanned at most every
        DIRTY_SAMPLE_S."""
        with self._lock:
            now = self._clock()
            if self._dirty is None or now - self._dirty[0] >= DIRTY_SAMPLE_S:
                self._dirty = (now, *dirty_sync(self.runtime))
            return self._dirty[1], self._dirty[2]

    def _raft(self) -> Iterator[Metric]:
        driver = self.runtime.driver
        yield CounterMetricFamily(
            "objcache_raft_leader_changes", "Times this node saw its group get a new leader "
            "(elections included; etcd's leader_changes_seen)", value=driver.leader_changes)
        yield CounterMetricFamily(
            "objcache_raft_dropped_messages", "Raft messages from peers dropped because the "
            "driver's inbox was full (Raft recovers from the loss)",
            value=driver.dropped_messages)
        storage = self.runtime.storage
        family = CounterMetricFamily(
            "objcache_raft_log_writes", "Raft log storage: saves asked for by the driver, "
            "LevelDB batches written, those fsynced (group commit: saves per synced batch), "
            "and those written on the event loop's thread rather than a worker thread",
            labels=["kind"])
        for kind, value in (("saves", storage.saves), ("batches", storage.batches_written),
                            ("synced_batches", storage.batches_synced),
                            ("inline_batches", storage.batches_inline)):
            family.add_metric([kind], value)
        yield family
        family = CounterMetricFamily(
            "objcache_kv_synced_writes", "Synced LevelDB batches of this node by how they were "
            "made durable: one direct write to the journal ring, or LevelDB's own log fsync "
            "(batches too large for a record); journal_wraps: times the ring started over",
            labels=["path"])
        for path, value in self.runtime.kv.synced_writes.items():
            family.add_metric([path], value)
        yield family

    def _writeback(self) -> Iterator[Metric]:
        group = [str(self.runtime.group)]
        files, nbytes = self.dirty()
        for name, doc, value in (
            ("objcache_dirty_files", "Files (inodes) of this group not yet in the bucket as "
             f"they are now (counted up to {MAX_DIRTY_COUNTED}; every member reports its "
             "replica: max by (group))", files),
            ("objcache_dirty_bytes", "Sizes of those files", nbytes),
        ):
            family = GaugeMetricFamily(name, doc, labels=["group"])
            family.add_metric(group, value)
            yield family
        stats = self.flusher.stats
        # The flusher's queue: the dirty inodes its rounds hold, waiting for their delay or
        # for an upload slot (flush.py keeps them by first sighting; only its leader's is not
        # empty).
        yield GaugeMetricFamily(
            "objcache_writeback_queue_inodes", "Dirty inodes this node's write-back holds, "
            "waiting for their flush delay or an upload slot",
            value=len(self.flusher._first_seen))
        for name, doc, key in (
            ("objcache_writeback_uploads", "Objects written to the bucket (PUT, multipart, "
             "CopyObject)", "uploads"),
            ("objcache_writeback_uploaded_bytes", "Bytes of files written to the bucket", "bytes"),
            ("objcache_writeback_upload_errors", "Write-backs of one inode that failed (it stays "
             "dirty; the next round tries again)", "errors"),
        ):
            yield CounterMetricFamily(name, doc, value=stats.get(key, 0))

    def _cache(self) -> Iterator[Metric]:
        reads = self.runtime.bucket
        if reads is None:
            return
        stats = reads.cache.stats
        yield CounterMetricFamily("objcache_cache_hits", "Chunk cache lookups that found the "
                                  "object version asked for", value=stats["hits"])
        yield CounterMetricFamily("objcache_cache_misses", "Chunk cache lookups that did not "
                                  "(the chunk is fetched from the bucket)", value=stats["misses"])
        evictions = CounterMetricFamily(
            "objcache_cache_evictions", "Clean chunk copies dropped: to make room (capacity) "
            "or because they were asked to go (forgotten: admin evict, bytes gone, a newer "
            "version)", labels=["reason"])
        evictions.add_metric(["capacity"], stats["evicted"])
        evictions.add_metric(["forgotten"], stats["forgotten"])
        yield evictions


class _Watched:
    def __init__(self) -> None:
        self.node: NodeMetrics | None = None

    def collect(self) -> Iterator[Metric]:
        node = self.node
        if node is not None:
            yield from node.collect()


_watched = _Watched()
REGISTRY.register(_watched)


def watch(runtime: GroupRuntime, flusher: Flusher) -> NodeMetrics:
    """Export this node's metrics on /metrics from now on."""
    _watched.node = NodeMetrics(runtime, flusher)
    return _watched.node


def gauges(runtime: GroupRuntime) -> dict[str, tuple[str, float]]:
    """The node's Raft and cache state, read when /metrics is scraped (metrics.export_gauges)."""
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
