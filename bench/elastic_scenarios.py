"""The scenarios of bench/elasticity.py (its module doc says what each measures) and the setup
they share (Bench: one SeaweedFS for the run, fresh clusters over fresh buckets, files written
through NFS, the untimed checks). SCENARIOS maps a name of `--scenarios` to its function: it
takes the Bench, runs its repetitions and returns its figures (they go to the JSON as they are).
The caller (bench/elasticity.py) puts tests/, bench/ and the repository on sys.path first.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from clusterproc import LocalCluster, _alive
from elastic_tools import (
    ProbeNfs,
    StallProbe,
    WarmCli,
    errors_between,
    first_line_time,
    nfs_errors,
    ring_change,
    ring_steps,
    rss_sampler,
    stack_dump,
    wait_quiet,
)
from nfsclient import LibNfs
from s3server import SeaweedServer
from serverproc import ServerError, peak_rss_kib, wait_for

KiB = 1 << 10
DIRS = 8
NODES = 3
TARGET_DRAIN_RATIO = 1.5
TARGET_SCALE_UP_S = 2.0  # 1 -> 2 groups with 1024 dirty 64 KiB files (the seed's best case)
TARGET_STALL_S = 1.0  # a client's worst operation during a change
PROBE_LEAD_S = 0.3
SLOW_EXIT_S = 5.0  # a node that left and is still running then: its threads are dumped


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
