#!/usr/bin/env python3
"""Benchmark: elasticity (issue 6) -- how fast the cluster changes size, down to zero.

Scenarios (each is one function of SCENARIOS: it takes the Bench, runs its repetitions and
returns its figures; `--scenarios` picks them). Each uses a fresh cluster of one-member groups
over SeaweedFS, its write-back delay an hour so that every file written stays dirty, the files
written through NFS (libnfs, one client per node, in 8 directories) before any clock starts.
  up-64k  N dirty files of 64 KiB (1024; --quick 256) on one group; node 2 joins (1 -> 2),
          then nodes 3 and 4 one after the other, each started once the one before serves, as
          a StatefulSet with OrderedReady starts pods (2 -> 4). A join is timed from its node
          process's start until the coordinator (node 1) has logged the change (its log is
          polled every 10 ms); its figures also hold the coordinator's own duration of the
          change (the "ring version A -> B (join) in X s" line: no process start-up, no first
          election) and when the new node served (ready.json). Target: 1 -> 2 under 2 s.
  up-1m   the same with N files of 1 MiB (1024; not in --quick unless named: 32 files).
  down    N dirty files of 64 KiB on two groups; `objcache admin leave 2` timed from the
          command issued until it exits 0 (a leave writes back every dirty file first, then
          moves the rest; its reply gives the move's seconds), and until node 2 is gone.
          Checked untimed: the bucket holds every file byte for byte.
  drain   N dirty files of 64 KiB on three groups. Timed: `objcache admin drain` from the
          command issued until it exits 0 -- fence, write-back, verification of every object
          (size and ETag), every node told to stop -- and until every node process is gone;
          the drain's own phases (its status) are shown apart. Anchor, in the same run: the
          same files uploaded with boto3 directly (put_object from a thread pool as wide as
          the cluster's write-back, cache.flush_parallel) to another prefix of the same server.
          Checked untimed: the bucket holds every file byte for byte. Target: drain <= 1.5x
          the direct upload.
During every change but the drain, a client does small operations through node 1 (it stays):
write a 4 KiB file, stat it, read it, one at a time, 10 ms apart (elastic_tools.StallProbe);
the worst operation that overlapped the change is its stall. Target: none over 1 s. After the
joins of a repetition, `objcache admin fsck` and 64 files read back through the last node.
Before each timed change the bench waits until the nodes are idle (what writing left behind
is not timed with it). Admin commands run in an interpreter that imported the CLI beforehand
(elastic_tools.WarmCli), as the anchor makes its boto3 client before its clock starts; the
interpreter's start is measured apart and shown.

The S3 server runs on loopback without shaping (said in the output). Every repetition gets a
fresh cluster and a fresh bucket prefix. Prints a table, writes bench/results/elasticity.json
(figures, medians, parameters, machine, versions) and prints the key ratio last.

  python bench/elasticity.py            # 1024 files, 3 repetitions
  python bench/elasticity.py --quick    # 256 files, one repetition, no up-1m: under a minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from clusterproc import LocalCluster, _alive  # noqa: E402
from elastic_tools import (  # noqa: E402
    ProbeNfs,
    StallProbe,
    WarmCli,
    cli_start_s,
    errors_between,
    first_line_time,
    nfs_errors,
    ring_change,
    ring_steps,
    rss_sampler,
    stack_dump,
    wait_quiet,
)
from nfsclient import LibNfs  # noqa: E402
from s3server import ACCESS_KEY, SECRET_KEY, SeaweedServer  # noqa: E402
from serverproc import ServerError, peak_rss_kib, wait_for  # noqa: E402

from server.config import CacheConfig  # noqa: E402

KiB = 1 << 10
DIRS = 8
NODES = 3
TARGET_DRAIN_RATIO = 1.5
TARGET_SCALE_UP_S = 2.0  # 1 -> 2 groups with 1024 dirty 64 KiB files (the seed's best case)
TARGET_STALL_S = 1.0  # a client's worst operation during a change
PROBE_LEAD_S = 0.3
SLOW_EXIT_S = 5.0  # a node that left and is still running then: its threads are dumped


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer files, one repetition")
    p.add_argument("--files", type=int, help="dirty files (default 1024; --quick 256)")
    p.add_argument("--file-kib", type=int, default=64)
    p.add_argument("--big-files", type=int, help="up-1m's files (default 1024; --quick 32)")
    p.add_argument("--big-kib", type=int, default=1024)
    p.add_argument("--reps", type=int, help="repetitions (default 3; --quick 1)")
    p.add_argument("--parallel", type=int, default=CacheConfig().flush_parallel,
                   help="the direct upload's threads: the cluster's write-back width "
                        "(cache.flush_parallel, default %(default)s)")
    p.add_argument("--scenarios", help=f"comma-separated, of {', '.join(SCENARIOS)} (default: "
                   f"all; --quick: all but {', '.join(NOT_QUICK)})")
    p.add_argument("--work", type=Path, help="scratch directory (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "elasticity.json")
    a = p.parse_args(argv)
    a.files = a.files or (256 if a.quick else 1024)
    a.big_files = a.big_files or (32 if a.quick else 1024)
    a.reps = a.reps or (1 if a.quick else 3)
    a.scenarios = a.scenarios or ",".join(s for s in SCENARIOS if not (a.quick and s in NOT_QUICK))
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
    cli_start_s: float = 0.0  # an interpreter starting and importing the CLI (WarmCli)
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
        s3 = self.server.client(max_pool_connections=self.args.parallel)
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix) for o in page.get("Contents", ())]
        with ThreadPoolExecutor(self.args.parallel) as pool:
            bodies = pool.map(lambda k: s3.get_object(Bucket=bucket, Key=k)["Body"].read(), keys)
            return {k[len(prefix):]: body for k, body in zip(keys, bodies, strict=True)}

    def admin_argv(self, c: LocalCluster, *args: str, node_id: int = 1) -> list[str]:
        """`objcache admin ARGS` through node `node_id`, for WarmCli.run."""
        return ["admin", *args, "--node", f"{node_id}={c.nodes[node_id]['rpc']}",
                "--admin-token-file", str(c.root / "admin-token")]

    def quiet(self, c: LocalCluster) -> float:
        """Until c's node processes are idle (elastic_tools.wait_quiet); the seconds waited."""
        return wait_quiet([n["pid"] for n in c.nodes.values() if _alive(n["pid"])])

    def check_reads(self, c: LocalCluster, node: int, files: dict[str, bytes],
                    cli: WarmCli) -> None:
        """Untimed: fsck clean (through `cli`), and a sample of `files` read back byte for byte
        through `node`."""
        res = cli.run(self.admin_argv(c, "fsck", "--json", node_id=node), timeout_s=300)
        report = json.loads(res.stdout or "{}")
        if res.returncode != 0 or not report.get("ok"):
            raise RuntimeError(f"fsck after the change: {json.dumps(report)[:3000]}")
        nfs = ProbeNfs(c.url(node, "/"))
        try:
            for path in random.Random(node).sample(sorted(files), min(64, len(files))):
                if nfs.read_file(path, len(files[path])) != files[path]:
                    raise RuntimeError(f"{path} reads back wrong through node {node}")
        finally:
            nfs.close()


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
    cli = WarmCli()  # imports while the cluster starts
    c = b.cluster(f"drain{rep}", bucket, prefix.rstrip("/"))
    try:
        write_s = b.write_through_nfs(c, files)
        quiet_s = b.quiet(c)
        pids = {i: n["pid"] for i, n in c.nodes.items()}
        cli.wait_ready()
        with rss_sampler(pids) as peaks:
            t0 = time.perf_counter()
            res = cli.run(b.admin_argv(c, "drain", "--json", "--progress", "none"))
            drain_s = time.perf_counter() - t0
            if res.returncode != 0:
                raise RuntimeError(f"admin drain exited {res.returncode}:\n{res.stdout}\n"
                                   f"{res.stderr[-3000:]}\n{c.log_tails()}")
            wait_for(lambda: not any(_alive(p) for p in pids.values()), timeout_s=60,
                     what="every node to exit after the drain")
            gone_s = time.perf_counter() - t0
        doc = json.loads(res.stdout.strip().splitlines()[-1])
    finally:
        cli.close()
        c.down(check=False)
    got = b.bucket_tree(bucket, prefix)  # untimed: the drain's result, byte for byte
    want = {k[1:]: v for k, v in files.items()} | {f"d{i}/": b"" for i in range(DIRS)}
    if got != want:
        missing = sorted(set(want) - set(got))[:5]
        raise RuntimeError(f"the bucket does not hold the files after the drain (missing "
                           f"{missing}, {len(got)} of {len(want)} objects)")
    return {"write_s": round(write_s, 3), "quiet_s": quiet_s, "drain_s": round(drain_s, 3),
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
        "cli_start_s": b.cli_start_s,
        "ratio_with_cli_start": (drain_s + b.cli_start_s) / direct_s,
        "target_ratio": TARGET_DRAIN_RATIO,
        "meets_target": drain_s / direct_s <= TARGET_DRAIN_RATIO,
    }


def join_one(b: Bench, c: LocalCluster, node: int, version: int) -> dict:
    """Start node `node` with --join (through node 1) and time it until the coordinator logs
    ring version `version` (module doc); then until the node serves."""
    coord_log = c.root / "n1" / "node.log"
    w0, t0 = time.time(), time.perf_counter()
    proc = c.add_node(node, through=1, wait=False)
    wait_for(lambda: ring_change(coord_log, version) is not None or proc.poll() is not None,
             timeout_s=900, what=f"ring version {version}", interval_s=0.01)
    t1 = time.perf_counter()
    c.wait_ready(node, proc, timeout_s=300)
    t2 = time.perf_counter()
    line = ring_change(coord_log, version)
    assert line is not None and line["kind"] == "join", (line, c.log_tails())
    own = c.root / f"n{node}" / "node.log"
    started, elected = (first_line_time(own, pat, w0) for pat in
                        (r"joining the cluster", rf"group {node}: node {node} leads in term"))
    return {"t0": t0, "t1": t1, "node": node, "version": version, "started_at": round(w0, 3),
            "complete_s": round(t1 - t0, 3), "serves_s": round(t2 - t0, 3),
            "change_s": line["seconds"], "moved_bytes": line["moved_bytes"],
            "steps_s": ring_steps(coord_log, version),
            "process_start_s": round(started - w0, 3) if started else None,
            "elected_s": round(elected - w0, 3) if elected else None}


def scale_step(b: Bench, c: LocalCluster, nodes: list[int], version: int, tag: str) -> dict:
    """Nodes join one after the other (each once the one before serves), a client probing
    through node 1 meanwhile: from the first start until the last change is logged."""
    quiet_s = b.quiet(c)
    errors0 = nfs_errors(c.nodes[1]["metrics"])
    with StallProbe(c.url(1, "/"), tag) as probe:
        time.sleep(PROBE_LEAD_S)  # the probe's pace before the change, for comparison
        joins = [join_one(b, c, node, version + i) for i, node in enumerate(nodes)]
    t0, t1 = joins[0]["t0"], joins[-1]["t1"]
    stall = probe.window(t0, t1)
    stall["node1_nfs_errors"] = errors_between(errors0, nfs_errors(c.nodes[1]["metrics"]))
    for j in joins:
        j["stall"] = probe.window(j.pop("t0"), j.pop("t1"))
    return {"seconds": round(t1 - t0, 3), "change_s": round(sum(j["change_s"] for j in joins), 3),
            "moved_bytes": sum(j["moved_bytes"] for j in joins), "stall": stall,
            "joins": joins, "quiet_s": quiet_s}


def scale_up_once(b: Bench, rep: int, size_kib: int, files: dict[str, bytes]) -> dict:
    tag = f"up{size_kib}k-{rep}"
    cli = WarmCli()  # for the fsck; imports while the cluster starts
    c = b.cluster(tag, b.bucket(tag), "p", nodes=1)
    try:
        write_s = b.write_through_nfs(c, files)
        one_two = scale_step(b, c, [2], 2, "probe12")
        two_four = scale_step(b, c, [3, 4], 3, "probe24")
        b.check_reads(c, 4, files, cli)
        rss = {str(i): peak_rss_kib(n["pid"]) for i, n in sorted(c.nodes.items())}
    finally:
        cli.close()
        c.down(check=False)
        if not b.args.keep:  # a GiB a repetition with 1 MiB files
            shutil.rmtree(c.root, ignore_errors=True)
    return {"write_s": round(write_s, 3), "1-2": one_two, "2-4": two_four,
            "peak_rss_kib": rss}


def scale_up(b: Bench, size_kib: int, n: int) -> dict:
    files = files_of(n, size_kib * KiB, seed=size_kib)
    runs = []
    for rep in range(b.args.reps):
        runs.append(scale_up_once(b, rep, size_kib, files))
        r = runs[-1]
        print(f"  rep {rep + 1}: " + "; ".join(
            f"{k} groups {r[k]['seconds']:.2f}s (the change {r[k]['change_s']:.2f}s, "
            f"{r[k]['moved_bytes'] / (1 << 20):.0f} MiB moved, stall "
            f"{r[k]['stall']['max_s']:.2f}s)" for k in ("1-2", "2-4"))
            + f"; written in {r['write_s']:.1f}s", flush=True)
    return {"files": n, "file_bytes": size_kib * KiB, "runs": runs,
            "median": {k: step_medians([r[k] for r in runs]) for k in ("1-2", "2-4")},
            "target_s": TARGET_SCALE_UP_S if size_kib == 64 else None}


def step_medians(steps: list[dict]) -> dict:
    """Medians of a change's figures over repetitions; the worst stall of them all too."""
    med = {k: statistics.median(s[k] for s in steps)
           for k in ("seconds", "change_s", "moved_bytes")}
    joins = [s.get("joins") or [s] for s in steps]
    for k in ("complete_s", "serves_s", "process_start_s", "elected_s", "leave_s",
              "nodes_gone_s"):
        vals = [j[0][k] for j in joins if j[0].get(k) is not None]
        if vals:
            med[f"first_{k}"] = statistics.median(vals)
    summed = [{} for _ in joins]  # the coordinator's steps, over a step's joins
    for total, js in zip(summed, joins, strict=True):
        for j in js:
            for k, v in j.get("steps_s", {}).items():
                total[k] = total.get(k, 0.0) + v
    med["steps_s"] = {k: round(statistics.median(t.get(k, 0.0) for t in summed), 3)
                      for k in summed[0]}
    med["stall_max_s"] = statistics.median(s["stall"]["max_s"] for s in steps)
    med["stall_worst_s"] = max(s["stall"]["max_s"] for s in steps)
    med["stall_before_max_s"] = max(s["stall"]["before_max_s"] for s in steps)
    med["client_errors"] = sum(s["stall"]["error_count"] for s in steps)
    med["node1_nfs_errors"] = {}
    for s in steps:  # what the node answered the probe (and nobody else) in every repetition
        for k, v in s["stall"].get("node1_nfs_errors", {}).items():
            med["node1_nfs_errors"][k] = med["node1_nfs_errors"].get(k, 0) + v
    return med


def scale_down_once(b: Bench, rep: int, files: dict[str, bytes]) -> dict:
    """Two groups holding `files` dirty; node 2 leaves (module doc)."""
    tag = f"down-{rep}"
    bucket = b.bucket(tag)
    cli, fsck_cli = WarmCli(), WarmCli()  # they import while the cluster starts
    c = b.cluster(tag, bucket, "p", nodes=2)
    try:
        write_s = b.write_through_nfs(c, files)
        quiet_s = b.quiet(c)
        cli.wait_ready()
        errors0 = nfs_errors(c.nodes[1]["metrics"])
        with StallProbe(c.url(1, "/"), "probe21") as probe:
            time.sleep(PROBE_LEAD_S)
            t0 = time.perf_counter()
            res = cli.run(b.admin_argv(c, "leave", "2", "--json"))
            t1 = time.perf_counter()
        stall = probe.window(t0, t1)
        stall["node1_nfs_errors"] = errors_between(errors0, nfs_errors(c.nodes[1]["metrics"]))
        if res.returncode != 0:
            raise RuntimeError(f"admin leave exited {res.returncode}:\n{res.stdout}\n"
                               f"{res.stderr[-3000:]}\n{c.log_tails()}")
        pid, slow_exit = c.nodes[2]["pid"], ""
        try:
            wait_for(lambda: not _alive(pid), timeout_s=SLOW_EXIT_S, what="node 2 to exit")
        except ServerError:  # what it waits for, for the report
            slow_exit = stack_dump(pid)
            c.wait_exit(2)
        gone_s = time.perf_counter() - t0
        del c.nodes[2]
        doc = json.loads(res.stdout.strip().splitlines()[-1])
        b.check_reads(c, 1, files, fsck_cli)
    finally:
        cli.close()
        fsck_cli.close()
        c.down(check=False)
    got = b.bucket_tree(bucket, "p/")  # untimed: every file written back, byte for byte
    wrong = [k for k, v in files.items() if got.get(k[1:]) != v]
    if wrong:
        raise RuntimeError(f"{len(wrong)} files not in the bucket after the leave: {wrong[:5]}")
    return {"write_s": round(write_s, 3), "quiet_s": quiet_s, "seconds": round(t1 - t0, 3),
            "leave_s": round(t1 - t0, 3), "nodes_gone_s": round(gone_s, 3),
            "change_s": round(doc["seconds"], 3), "moved_bytes": doc["moved_bytes"],
            "writeback_s": round(t1 - t0 - doc["seconds"], 3), "ring_version": doc["ring_version"],
            "steps_s": ring_steps(c.root / "n1" / "node.log", doc["ring_version"]),
            "stall": stall, "slow_exit_stack": slow_exit}


def scale_down(b: Bench) -> dict:
    a = b.args
    files = files_of(a.files, a.file_kib * KiB, seed=21)
    runs = []
    for rep in range(a.reps):
        runs.append(scale_down_once(b, rep, files))
        r = runs[-1]
        print(f"  rep {rep + 1}: 2 -> 1 groups {r['seconds']:.2f}s (the move {r['change_s']:.2f}s"
              f", write-back and the rest {r['writeback_s']:.2f}s; node gone "
              f"{r['nodes_gone_s']:.2f}s; stall {r['stall']['max_s']:.2f}s); written in "
              f"{r['write_s']:.1f}s", flush=True)
    med = step_medians(runs)
    med["writeback_s"] = statistics.median(r["writeback_s"] for r in runs)
    return {"files": a.files, "file_bytes": a.file_kib * KiB, "runs": runs, "median": med,
            "cli_start_s": b.cli_start_s}


SCENARIOS: dict[str, Callable[[Bench], dict]] = {
    "up-64k": lambda b: scale_up(b, b.args.file_kib, b.args.files),
    "up-1m": lambda b: scale_up(b, b.args.big_kib, b.args.big_files),
    "down": scale_down,
    "drain": drain,
}
NOT_QUICK = ("up-1m",)  # --quick must end within a minute on a shared 2-core machine


# ------------------------------------------------------------------------------- output ----


def scale_table(results: dict) -> list[str]:
    rows = [(name, step, r) for name in ("up-64k", "up-1m") if (r := results.get(name))
            for step in ("1-2", "2-4")]
    if (d := results.get("down")) is not None:
        rows.append(("down", "2-1", d))
    if not rows:
        return []
    lines = ["", "ring changes: seconds from the first new node's start (a leave: from the command "
             "issued, CLI pre-loaded) until the change is complete; medians of "
             f"{len(rows[0][2]['runs'])} repetitions",
             f"{'':<22}{'files':>6}{'seconds':>9}{'change':>8}{'MiB':>6}{'up':>6}{'elect':>6}"
             f"{'serves':>7}   client stall: median, worst, before; errors"]
    for name, step, r in rows:
        m = r["median"] if name == "down" else r["median"][step]
        label = f"{name} {step.replace('-', ' -> ')}"
        extra = (f"   write-back {m['writeback_s']:.2f}s, node gone {m['first_nodes_gone_s']:.2f}s"
                 if name == "down" else "")
        lines.append(
            f"{label:<22}{r['files']:>6}{m['seconds']:>9.2f}{m['change_s']:>8.2f}"
            f"{m['moved_bytes'] / (1 << 20):>6.0f}{_f(m.get('first_process_start_s')):>6}"
            f"{_f(m.get('first_elected_s')):>6}{_f(m.get('first_serves_s')):>7}   "
            f"{m['stall_max_s']:.2f}s, {m['stall_worst_s']:.2f}s, "
            f"{m['stall_before_max_s']:.2f}s; {m['client_errors']}{extra}")
    for name, step, r in rows:
        m = r["median"] if name == "down" else r["median"][step]
        if m["steps_s"]:
            lines.append(f"  {name} {step.replace('-', ' -> ')}: the change's steps "
                         + ", ".join(f"{k} {v:.2f}s" for k, v in m["steps_s"].items()))
    lines += ["  change: as the coordinator logs it (no process start, for 2 -> 4 both joins); "
              "MiB: moved; up, elect, serves: the (first) new node's", "  process logging, "
              "its group's first leader, its NFS service, from its start"]
    return lines


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def table(results: dict) -> str:
    lines = ["", "S3: SeaweedFS on loopback, unshaped (no added bandwidth limit or delay)"]
    lines += scale_table(results)
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
                  f"{'':>18}   without the admin CLI's RPC set-up and polling",
                  f"{'  ... with the CLI start':<28}"
                  f"{d['drain']['median_s'] + d['cli_start_s']:>9.2f}{'':>18}   + interpreter "
                  f"start and imports, {d['cli_start_s']:.2f}s (measured apart)",
                  f"{'  ... every node exited':<28}{d['drain']['median_nodes_gone_s']:>9.2f}"]
        peaks = d["drain"]["runs"][-1]["peak_rss_kib"]
        lines.append("  peak RSS per node (MiB): " + ", ".join(
            f"node {k} {v / 1024:.0f}" for k, v in peaks.items()))
    return "\n".join(lines)


def key_lines(results: dict) -> list[str]:
    out = []
    if (u := results.get("up-64k")) is not None:
        m, m24 = u["median"]["1-2"], u["median"]["2-4"]
        out.append(f"KEY scale-up 1 -> 2 groups with {u['files']} dirty {u['file_bytes'] // KiB} "
                   f"KiB files: {m['seconds']:.2f}s from the node's start "
                   f"({m['seconds'] / TARGET_SCALE_UP_S:.2f}x the {TARGET_SCALE_UP_S:.0f} s "
                   f"target), the change itself {m['change_s']:.2f}s; 2 -> 4 "
                   f"{m24['seconds']:.2f}s")
    changes = [(f"{name} {step}", m) for name in ("up-64k", "up-1m", "down")
               if (r := results.get(name)) for step, m in
               (r["median"].items() if name != "down" else [("2-1", r["median"])])]
    if changes:
        worst = max(changes, key=lambda c: c[1]["stall_worst_s"])
        answered: dict[str, float] = {}
        for _, m in changes:
            for k, v in m["node1_nfs_errors"].items():
                answered[k] = answered.get(k, 0) + v
        said = ", ".join(f"{k} x{v:.0f}" for k, v in answered.items())
        out.append(f"KEY worst client stall during a change: {worst[1]['stall_worst_s']:.2f}s "
                   f"({worst[0]}; target <= {TARGET_STALL_S:.0f} s); "
                   f"{sum(m['client_errors'] for _, m in changes)} errors reached the client "
                   f"(node 1 answered {said or 'no error'})")
    d = results.get("drain")
    if d:
        r = d["ratio_drain_over_direct"]
        out.append(f"KEY drain vs direct boto3 upload ({d['files']} x {d['file_bytes'] // KiB} "
                   f"KiB): {r:.2f}x ({d['drain']['median_s']:.2f}s from the command issued "
                   f"to its exit, {d['ratio_with_cli_start']:.2f}x with the CLI's start, "
                   f"{d['ratio_inside_over_direct']:.2f}x its phases alone, vs "
                   f"{d['direct']['median_s']:.2f}s; target <= {TARGET_DRAIN_RATIO}x)")
    return out


def versions() -> dict[str, str]:
    import boto3

    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    # The nodes run the code in REPO: say if it differs from the commit (a shared checkout),
    # or which commit a copy without .git came from (OBJCACHE_REV, e.g. a `git archive`).
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", ".",
                            ":!bench"], capture_output=True, text=True).stdout.split("\n")
    weed = subprocess.run([str(Path(sys.executable).parent / "weed"), "version"],
                          capture_output=True, text=True)
    return {"objcache": git.stdout.strip() or os.environ.get("OBJCACHE_REV", "?"),
            "uncommitted": ", ".join(line[3:] for line in dirty if line.strip()),
            "boto3": boto3.__version__,
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
    b.cli_start_s = round(statistics.median(cli_start_s() for _ in range(a.reps)), 3)
    results: dict[str, dict] = {}
    try:
        for name in a.scenario_names:
            print(f"== {name}", flush=True)
            t0 = time.perf_counter()
            results[name] = SCENARIOS[name](b)
            results[name]["wall_s"] = round(time.perf_counter() - t0, 1)
    finally:
        for c in b.clusters:
            c.down(check=False)
        server.stop(kill=True)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    doc = {"benchmark": "elasticity", "quick": a.quick, "reps": a.reps,
           "parameters": {"files": a.files, "file_kib": a.file_kib, "big_files": a.big_files,
                          "big_kib": a.big_kib, "parallel": a.parallel,
                          "probe": {"bytes": 4096, "pause_s": 0.01, "lead_s": PROBE_LEAD_S},
                          "cli_start_s": b.cli_start_s,
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
