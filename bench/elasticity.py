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
The scenarios and their shared setup live in bench/elastic_scenarios.py, the tables and key
lines in bench/elastic_report.py.

  python bench/elasticity.py            # 1024 files, 3 repetitions
  python bench/elasticity.py --quick    # 256 files, one repetition, no up-1m: under a minute
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from elastic_report import key_lines, machine, table, versions  # noqa: E402
from elastic_scenarios import NOT_QUICK, PROBE_LEAD_S, SCENARIOS, Bench  # noqa: E402
from elastic_tools import cli_start_s  # noqa: E402
from s3server import ACCESS_KEY, SECRET_KEY, SeaweedServer  # noqa: E402

from server.config import CacheConfig  # noqa: E402


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
