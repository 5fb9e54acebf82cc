"""/metrics scraped by a real Prometheus (Debian's `prometheus`, on loopback) from two node
processes while libnfs tools use them; the samples are read back through Prometheus' HTTP API
(issue 6, Metrics and health), and every node's exposition passes `promtool check metrics`."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from clusterproc import LocalCluster
from serverproc import free_port, nfs_cat, nfs_cp, nfs_ls, run_client, wait_for

from server import metrics

pytestmark = pytest.mark.integration

SCRAPE_S = 0.5
WAIT_S = 60.0
FILE_BYTES = 100_000
FILES = 3
BUCKET_FILE_BYTES = 300_000  # in the bucket before the cluster starts: read, not written


class Prometheus:
    """`prometheus` scraping `targets` every SCRAPE_S, its TSDB in `root`."""

    def __init__(self, root: Path, targets: list[str]) -> None:
        self.root = root
        self.port = free_port()
        config = {  # JSON is YAML
            "global": {"scrape_interval": f"{int(SCRAPE_S * 1000)}ms",
                       "scrape_timeout": f"{int(SCRAPE_S * 1000)}ms"},
            "scrape_configs": [{"job_name": "objcache",
                                "static_configs": [{"targets": targets}]}],
        }
        root.mkdir(parents=True)
        (root / "prometheus.yml").write_text(json.dumps(config))
        self.log = root / "prometheus.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Prometheus:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["prometheus", f"--config.file={self.root / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.root / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        wait_for(self._ready, timeout_s=WAIT_S, what="prometheus to be ready", interval_s=0.2)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """An instant query: (labels, value) per series."""
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": promql}))
        with urllib.request.urlopen(url, timeout=10) as r:
            doc = json.loads(r.read())
        assert doc["status"] == "success", doc
        return [(s["metric"], float(s["value"][1])) for s in doc["data"]["result"]]

    def value(self, promql: str) -> float | None:
        """The value of a query that yields one series, or None while it yields none."""
        rows = self.query(promql)
        assert len(rows) <= 1, (promql, rows)
        return rows[0][1] if rows else None

    def wait(self, promql: str, ok, what: str) -> float:  # type: ignore[no-untyped-def]
        """Until the query's single value satisfies `ok`; returns it."""
        seen: list[float | None] = [None]

        def holds() -> bool:
            seen[0] = self.value(promql)
            return seen[0] is not None and ok(seen[0])

        try:
            wait_for(holds, timeout_s=WAIT_S, what=what, interval_s=SCRAPE_S)
        except Exception as e:
            raise AssertionError(f"{what}: {promql} is {seen[0]}") from e
        assert seen[0] is not None
        return seen[0]


def promtool_check(text: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60)


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        assert r.status == 200
        return r.read().decode()


@pytest.fixture
def tools() -> None:
    for tool in ("prometheus", "promtool"):
        assert shutil.which(tool), f"{tool} is missing: .ci/setup-host installs Debian's prometheus"


def test_a_real_prometheus_scrapes_the_new_metrics(tmp_path: Path, tools: None) -> None:
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    (bucket / "cold.bin").write_bytes(os.urandom(BUCKET_FILE_BYTES))
    c = LocalCluster(tmp_path / "c", nodes=2, up_args=(
        "--store", f"file://{bucket}", "--flush-delay", "3600"))
    c.up()
    prom = Prometheus(tmp_path / "prom", [c.nodes[n]["metrics"] for n in (1, 2)])
    try:
        prom.start()
        prom.wait('count(up{job="objcache"} == 1)', lambda v: v == 2, "both nodes scraped")
        drive_nfs(c, tmp_path)
        check_nfs(prom)
        check_node(prom, c)
        check_definitions(prom)
        for n in (1, 2):
            res = promtool_check(scrape(c.nodes[n]["metrics"]))
            assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), (
                n, res.returncode, res.stdout, res.stderr)
        # The check can fail: here, a counter without its _total suffix.
        bad = promtool_check("# HELP x_seconds a\n# TYPE x_seconds counter\nx_seconds 1\n")
        assert bad.returncode != 0 and '"_total" suffix' in bad.stdout + bad.stderr
    finally:
        prom.stop()
        c.down(check=False)


def drive_nfs(c: LocalCluster, tmp_path: Path) -> None:
    """Writes through both nodes, reads of a file only the bucket has, and a missing name."""
    src = tmp_path / "src"
    for i in range(FILES):
        src.write_bytes(bytes([i]) * FILE_BYTES)
        nfs_cp(src, c.url(1 + i % 2, f"f{i}"))
    names = {e.name for e in nfs_ls(c.url(2, "/"))}
    assert {"cold.bin", *(f"f{i}" for i in range(FILES))} <= names
    cold = (c.root.parent / "bucket" / "cold.bin").read_bytes()
    for node in (1, 1, 2):  # the first read misses the chunk cache; the next ones hit
        assert nfs_cat(c.url(node, "cold.bin")) == cold
    # A missing file: LOOKUP answers NFS3ERR_NOENT. A missing directory to list: libnfs
    # mounts the whole path, and MNT answers MNT3ERR_NOENT (no such export).
    assert run_client(["nfs-cat", c.url(1, "no-such-file")], check=False).returncode != 0
    assert nfs_ls(c.url(1, "no-such-dir"), check=False).returncode != 0


def check_nfs(prom: Prometheus) -> None:
    nfs = 'job="objcache",program="nfs"'
    # nfs-cp writes each file in WRITEs; one per file at least.
    prom.wait(f'sum(objcache_nfs_op_seconds_count{{{nfs},proc="WRITE"}})',
              lambda v: v >= FILES, "WRITEs counted")
    prom.wait('sum(objcache_nfs_op_seconds_count{program="mount",proc="MNT"})',
              lambda v: v >= FILES, "MOUNT MNTs counted")
    prom.wait(f'sum(objcache_nfs_op_errors_total{{{nfs},proc="LOOKUP",error="NFS3ERR_NOENT"}})',
              lambda v: v >= 1, "the missing file's NFS3ERR_NOENT")
    prom.wait('sum(objcache_nfs_op_errors_total{program="mount",proc="MNT",'
              'error="MNT3ERR_NOENT"})', lambda v: v >= 1, "the missing export's MNT3ERR_NOENT")
    assert prom.value(f'sum(objcache_nfs_op_errors_total{{{nfs},proc="WRITE"}})') is None
    # The histogram is one: buckets cumulative up to +Inf = _count, and a quantile exists.
    p50 = prom.wait(
        f'histogram_quantile(0.5, sum by (le) (rate(objcache_nfs_op_seconds_bucket'
        f'{{{nfs},proc="WRITE"}}[1m])))', lambda v: math.isfinite(v), "WRITE latency p50")
    assert 0 < p50 < 10
    inf = prom.value(f'sum(objcache_nfs_op_seconds_bucket{{{nfs},proc="READ",le="+Inf"}})')
    assert inf is not None and inf == prom.value(
        f'sum(objcache_nfs_op_seconds_count{{{nfs},proc="READ"}})') and inf >= 1
    # Every procedure of RFC 1813 has its series on each node from the start.
    assert prom.value(f'count(objcache_nfs_op_seconds_count{{{nfs}}})') == 2 * 22
    assert prom.value('sum(objcache_rpc_rejected_total)') == 0


def check_node(prom: Prometheus, c: LocalCluster) -> None:
    # Each one-member group elected its node once.
    prom.wait("sum(objcache_raft_leader_changes_total)", lambda v: v >= 2, "leader changes")
    # Each log holds the entries of the writes above, and each entry its stored bytes.
    prom.wait("min(objcache_raft_log_entries)", lambda v: v >= 2, "log entries")
    prom.wait("min(objcache_raft_log_bytes / objcache_raft_log_entries)", lambda v: v >= 16,
              "log bytes")
    # Dirty: the files written, not yet in the bucket (a member per group: max by group).
    dirty_files = "sum(max by (group) (objcache_dirty_files))"
    prom.wait(dirty_files, lambda v: v == FILES, "dirty files")
    prom.wait("sum(max by (group) (objcache_dirty_bytes))", lambda v: v == FILES * FILE_BYTES,
              "dirty bytes")
    # The chunk cache: a miss (and a fetch) for the cold file, then hits.
    prom.wait("sum(objcache_cache_misses_total)", lambda v: v >= 1, "cache misses")
    prom.wait("sum(objcache_cache_hits_total)", lambda v: v >= 1, "cache hits")
    assert prom.value('count(objcache_cache_evictions_total{reason="capacity"})') == 2
    res = c.admin("flush", "/", node_id=1)
    assert res.returncode == 0, res.stderr
    prom.wait("sum(objcache_writeback_uploads_total)", lambda v: v >= FILES, "uploads")
    prom.wait("sum(objcache_writeback_uploaded_bytes_total)",
              lambda v: v >= FILES * FILE_BYTES, "uploaded bytes")
    prom.wait(dirty_files, lambda v: v == 0, "nothing dirty after the flush")
    assert prom.value("sum(objcache_writeback_upload_errors_total)") == 0
    assert prom.value("sum(objcache_writeback_queue_inodes)") is not None


def check_definitions(prom: Prometheus) -> None:
    """Transactions (with the two-phase share the help text gives), retries, membership."""
    prom.wait('sum(objcache_txn_total{outcome="commit"})', lambda v: v >= FILES,
              "committed transactions")
    share = prom.wait(metrics.TWO_PHASE_SHARE, lambda v: math.isfinite(v), "the two-phase share")
    assert 0 <= share <= 1
    assert prom.value("count(objcache_txn_retries_total)") == 2 * 3  # reasons, per node
    kinds = prom.query("sum by (kind) (objcache_membership_changes_total)")
    assert {m["kind"]: v for m, v in kinds} == {
        "join": 0, "leave": 0, "replica_add": 0, "replica_remove": 0}
    assert prom.value("sum(objcache_migrated_bytes_total)") == 0
