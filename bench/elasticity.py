#!/usr/bin/env python3
"""Benchmark: elasticity (issue 6) -- how fast the cluster changes size, down to zero.

Scenarios (each is one function of SCENARIOS: it takes the Bench, runs its repetitions and
returns its figures; `--scenarios` picks them):
  drain   N dirty files of 64 KiB (1024; --quick 256) written through NFS (libnfs, one client
          per node, in 8 directories) to a 3-node cluster (three one-member groups) over
          SeaweedFS, the write-back delay an hour so every file is dirty. Timed: `objcache admin
          drain` from its start until it exits 0 -- fence, write-back, verification of every
          object (size and ETag), every node told to stop -- and until every node process is
          gone; the drain's own phases (its status) are shown apart from the CLI's start.
          Anchor, in the same run: the same files uploaded with boto3 directly (put_object
          from a thread pool as wide as the cluster's write-back, cache.flush_parallel) to
          another prefix of the same server. Checked untimed: the bucket holds every file
          byte for byte. Target: drain <= 1.5x the direct upload.
  Scale-up (1 -> 2 and 2 -> 4 groups with N dirty files of 64 KiB and of 1 MiB), scale-down
  (2 -> 1) and a client's worst stall during each change belong here as further scenarios:
  write `def scale_up(b: Bench) -> dict`, add it to SCENARIOS, and give its key ratio in
  key_lines().

The S3 server runs on loopback without shaping (said in the output). Every repetition gets a
fresh cluster and a fresh bucket prefix. Prints a table, writes bench/results/elasticity.json
(figures, medians, parameters, machine, versions) and prints the key ratio last.

  python bench/elasticity.py            # 1024 files, 3 repetitions
  python bench/elasticity.py --quick    # 256 files, one repetition, under a minute
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from clusterproc import LocalCluster, _alive  # noqa: E402
from nfsclient import LibNfs  # noqa: E402
from s3server import ACCESS_KEY, SECRET_KEY, SeaweedServer  # noqa: E402
from serverproc import peak_rss_kib, wait_for  # noqa: E402

from server.config import CacheConfig  # noqa: E402

KiB = 1 << 10
DIRS = 8
NODES = 3
TARGET_DRAIN_RATIO = 1.5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="256 files, one repetition")
    p.add_argument("--files", type=int, help="dirty files (default 1024; --quick 256)")
    p.add_argument("--file-kib", type=int, default=64)
    p.add_argument("--reps", type=int, help="repetitions (default 3; --quick 1)")
    p.add_argument("--parallel", type=int, default=CacheConfig().flush_parallel,
                   help="the direct upload's threads: the cluster's write-back width "
                        "(cache.flush_parallel, default %(default)s)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--work", type=Path, help="scratch directory (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "elasticity.json")
    a = p.parse_args(argv)
    a.files = a.files or (256 if a.quick else 1024)
    a.reps = a.reps or (1 if a.quick else 3)
    a.scenario_names = [s for s in a.scenarios.split(",") if s]
    unknown = [s for s in a.scenario_names if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenarios {unknown} (known: {', '.join(SCENARIOS)})")
    return a


# ----------------------------------------------------------------------- the shared setup ----


@dataclass
class Bench:
    """What every scenario shares: the arguments, a scratch directory, one SeaweedFS for the
    whole run, and helpers to start clusters over fresh buckets and fill them through NFS."""

    args: argparse.Namespace
    work: Path
    server: SeaweedServer
    _buckets: int = 0
    clusters: list[LocalCluster] = field(default_factory=list)

    def bucket(self, tag: str) -> str:
        self._buckets += 1
        name = f"el-{tag}-{self._buckets}"
        self.server.create_bucket(name)
        return name

    def cluster(self, tag: str, bucket: str, prefix: str, *, nodes: int = NODES,
                replicas: int = 1, extra: tuple[str, ...] = ()) -> LocalCluster:
        """A fresh cluster over s3://bucket/prefix, every change dirty for an hour."""
        c = LocalCluster(self.work / f"cluster-{tag}", nodes=nodes, replicas=replicas,
                         up_args=("--store", f"s3://{bucket}/{prefix}", "--s3-endpoint",
                                  self.server.endpoint, "--flush-delay", "3600", *extra))
        self.clusters.append(c)
        return c.up()

    def write_through_nfs(self, c: LocalCluster, files: dict[str, bytes]) -> float:
        """Write `files` (path -> bytes; their directories made first) through libnfs, one
        client per node, in parallel; the seconds it took."""
        t0 = time.perf_counter()
        dirs = sorted({path.rsplit("/", 1)[0] for path in files} - {""})
        nfs = LibNfs(c.url(1, "/"))
        for d in dirs:
            nfs.mkdir(d)
        nfs.close()
        per_node: dict[int, list[str]] = {}
        for i, path in enumerate(sorted(files)):
            per_node.setdefault(1 + i % len(c.nodes), []).append(path)

        def client(node: int) -> None:
            nfs = LibNfs(c.url(node, "/"))
            try:
                for path in per_node[node]:
                    nfs.write_file(path, files[path])
            finally:
                nfs.close()

        with ThreadPoolExecutor(len(per_node)) as pool:
            list(pool.map(client, per_node))
        return time.perf_counter() - t0

    def bucket_tree(self, bucket: str, prefix: str) -> dict[str, bytes]:
        s3 = self.server.client()
        out: dict[str, bytes] = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", ()):
                out[o["Key"][len(prefix):]] = s3.get_object(Bucket=bucket, Key=o["Key"])[
                    "Body"].read()
        return out

    def admin(self, c: LocalCluster, *args: str, node_id: int = 1,
              timeout_s: float = 600.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "server.cli", "admin", *args, "--node",
             f"{node_id}={c.nodes[node_id]['rpc']}", "--admin-token-file",
             str(c.root / "admin-token")],
            capture_output=True, text=True, timeout=timeout_s, cwd=REPO,
            stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def rss_sampler(pids: dict[int, int], interval_s: float = 0.1) -> Iterator[dict[int, int]]:
    """Peak RSS (VmHWM, KiB) of each process, sampled until the block ends or it exits."""
    peaks: dict[int, int] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for node, pid in pids.items():
                rss = peak_rss_kib(pid)
                if rss is not None:
                    peaks[node] = max(rss, peaks.get(node, 0))
            stop.wait(interval_s)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield peaks
    finally:
        stop.set()
        t.join()


def files_of(n: int, size: int, seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"/d{i % DIRS}/f{i:05d}.bin": rng.randbytes(size) for i in range(n)}


# ------------------------------------------------------------------------- the scenarios ----


def direct_upload(b: Bench, bucket: str, prefix: str, files: dict[str, bytes]) -> float:
    """The anchor: put_object of every file from a pool of b.args.parallel threads (one
    boto3 client, its connection pool as wide; made before the clock starts)."""
    s3 = b.server.client(max_pool_connections=b.args.parallel)
    with ThreadPoolExecutor(b.args.parallel) as pool:
        t0 = time.perf_counter()
        list(pool.map(lambda kv: s3.put_object(Bucket=bucket, Key=prefix + kv[0][1:],
                                               Body=kv[1]), files.items()))
        seconds = time.perf_counter() - t0
    return seconds


def drain_once(b: Bench, rep: int, bucket: str, files: dict[str, bytes]) -> dict:
    """One repetition: a fresh cluster, the files written through NFS, then the drain."""
    prefix = f"drain{rep}/"
    c = b.cluster(f"drain{rep}", bucket, prefix.rstrip("/"))
    try:
        write_s = b.write_through_nfs(c, files)
        pids = {i: n["pid"] for i, n in c.nodes.items()}
        with rss_sampler(pids) as peaks:
            t0 = time.perf_counter()
            res = b.admin(c, "drain", "--json", "--progress", "none")
            drain_s = time.perf_counter() - t0
            if res.returncode != 0:
                raise RuntimeError(f"admin drain exited {res.returncode}:\n{res.stdout}\n"
                                   f"{res.stderr[-3000:]}\n{c.log_tails()}")
            wait_for(lambda: not any(_alive(p) for p in pids.values()), timeout_s=60,
                     what="every node to exit after the drain")
            gone_s = time.perf_counter() - t0
        doc = json.loads(res.stdout.strip().splitlines()[-1])
    finally:
        c.down(check=False)
    got = b.bucket_tree(bucket, prefix)  # untimed: the drain's result, byte for byte
    want = {k[1:]: v for k, v in files.items()} | {f"d{i}/": b"" for i in range(DIRS)}
    if got != want:
        missing = sorted(set(want) - set(got))[:5]
        raise RuntimeError(f"the bucket does not hold the files after the drain (missing "
                           f"{missing}, {len(got)} of {len(want)} objects)")
    return {"write_s": round(write_s, 3), "drain_s": round(drain_s, 3),
            "nodes_gone_s": round(gone_s, 3), "phase_s": doc.get("phase_s", {}),
            "flushed": doc["flushed"], "verified": doc["verified"],
            "peak_rss_kib": {str(k): v for k, v in sorted(peaks.items())}}


def drain(b: Bench) -> dict:
    a = b.args
    files = files_of(a.files, a.file_kib * KiB, seed=6)
    bucket = b.bucket("drain")
    direct_runs: list[float] = []
    drain_runs: list[dict] = []
    for rep in range(a.reps):  # alternated, so that drift on a shared machine hits both
        direct_runs.append(direct_upload(b, bucket, f"direct{rep}/", files))
        print(f"  rep {rep + 1}: direct upload {direct_runs[-1]:.2f}s", flush=True)
        drain_runs.append(drain_once(b, rep, bucket, files))
        r = drain_runs[-1]
        print(f"  rep {rep + 1}: drain {r['drain_s']:.2f}s (nodes gone {r['nodes_gone_s']:.2f}s;"
              f" phases {r['phase_s']}; written through NFS in {r['write_s']:.1f}s)", flush=True)
    direct_s = statistics.median(direct_runs)
    drain_s = statistics.median(r["drain_s"] for r in drain_runs)
    phases = {ph: statistics.median(r["phase_s"].get(ph, 0.0) for r in drain_runs)
              for ph in drain_runs[0]["phase_s"]}
    inside_s = statistics.median(sum(r["phase_s"].values()) for r in drain_runs)
    return {
        "files": a.files, "file_bytes": a.file_kib * KiB, "parallel": a.parallel,
        "nodes": NODES, "groups": NODES,
        "direct": {"runs_s": [round(t, 3) for t in direct_runs], "median_s": direct_s},
        "drain": {"runs": drain_runs, "median_s": drain_s, "median_phase_s": phases,
                  "median_inside_s": inside_s,
                  "median_nodes_gone_s": statistics.median(r["nodes_gone_s"]
                                                           for r in drain_runs)},
        "ratio_drain_over_direct": drain_s / direct_s,
        "ratio_inside_over_direct": inside_s / direct_s,
        "target_ratio": TARGET_DRAIN_RATIO,
        "meets_target": drain_s / direct_s <= TARGET_DRAIN_RATIO,
    }


SCENARIOS: dict[str, Callable[[Bench], dict]] = {"drain": drain}


# ------------------------------------------------------------------------------- output ----


def table(results: dict) -> str:
    lines = ["", "S3: SeaweedFS on loopback, unshaped (no added bandwidth limit or delay)"]
    d = results.get("drain")
    if d:
        mib = d["files"] * d["file_bytes"] / (1 << 20)
        lines += [f"drain: {d['files']} dirty files x {d['file_bytes'] // KiB} KiB "
                  f"({mib:.0f} MiB) on {d['nodes']} nodes / {d['groups']} groups; "
                  f"{len(d['direct']['runs_s'])} repetitions, medians",
                  f"{'':<28}{'seconds':>9}{'files/s':>10}{'MiB/s':>8}",
                  f"{'direct boto3 put_object':<28}{d['direct']['median_s']:>9.2f}"
                  f"{d['files'] / d['direct']['median_s']:>10.0f}"
                  f"{mib / d['direct']['median_s']:>8.1f}   {d['parallel']} threads",
                  f"{'objcache admin drain':<28}{d['drain']['median_s']:>9.2f}"
                  f"{d['files'] / d['drain']['median_s']:>10.0f}"
                  f"{mib / d['drain']['median_s']:>8.1f}   phases "
                  + ", ".join(f"{k} {v:.2f}s" for k, v in d["drain"]["median_phase_s"].items()),
                  f"{'  ... its phases alone':<28}{d['drain']['median_inside_s']:>9.2f}"
                  f"{'':>18}   without the admin CLI's start and polling",
                  f"{'  ... every node exited':<28}{d['drain']['median_nodes_gone_s']:>9.2f}"]
        peaks = d["drain"]["runs"][-1]["peak_rss_kib"]
        lines.append("  peak RSS per node (MiB): " + ", ".join(
            f"node {k} {v / 1024:.0f}" for k, v in peaks.items()))
    return "\n".join(lines)


def key_lines(results: dict) -> list[str]:
    out = []
    d = results.get("drain")
    if d:
        r = d["ratio_drain_over_direct"]
        out.append(f"KEY drain vs direct boto3 upload ({d['files']} x {d['file_bytes'] // KiB} "
                   f"KiB): {r:.2f}x ({d['drain']['median_s']:.2f}s as the admin CLI sees it, "
                   f"{d['ratio_inside_over_direct']:.2f}x its phases alone, vs "
                   f"{d['direct']['median_s']:.2f}s; target <= {TARGET_DRAIN_RATIO}x)")
    return out


def versions() -> dict[str, str]:
    import boto3

    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    weed = subprocess.run([str(Path(sys.executable).parent / "weed"), "version"],
                          capture_output=True, text=True)
    return {"objcache": git.stdout.strip() or "?", "boto3": boto3.__version__,
            "seaweedfs": (weed.stdout.strip().splitlines() or ["?"])[0],
            "python": platform.python_version()}


def machine() -> dict:
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "machine": platform.machine(),
            "mem_total_kib": int(Path("/proc/meminfo").read_text().split()[1]),
            "load_avg_at_start": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    work = a.work or Path(tempfile.mkdtemp(prefix="objcache-bench-elastic-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    facts = machine()
    print(f"bench/elasticity.py: scenarios {a.scenario_names}, {a.files} files, {a.reps} "
          f"repetitions, work in {work}", flush=True)
    server = SeaweedServer(work / "seaweedfs").start()
    b = Bench(a, work, server)
    results: dict[str, dict] = {}
    try:
        for name in a.scenario_names:
            print(f"== {name}", flush=True)
            results[name] = SCENARIOS[name](b)
    finally:
        for c in b.clusters:
            c.down(check=False)
        server.stop(kill=True)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    doc = {"benchmark": "elasticity", "quick": a.quick, "reps": a.reps,
           "parameters": {"files": a.files, "file_kib": a.file_kib, "parallel": a.parallel,
                          "scenarios": a.scenario_names, "s3": "SeaweedFS weed mini, "
                          "loopback, unshaped"},
           "results": results, "machine": facts, "versions": versions(),
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "wall_s": round(time.perf_counter() - started, 1)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwrote {a.out} (wall {doc['wall_s']}s)")
    for line in key_lines(results):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
