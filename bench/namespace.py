#!/usr/bin/env python3
"""Benchmark: namespace operations on an objcache cluster of one group and of three groups,
against nfs-ganesha (VFS), through the same libnfs client.

Workload: create, stat, rename and remove of --files files (10 000), split among 1 and 16
concurrent clients (separate processes of tests/tools/nfsmeta.c `ns` mode, each in its own
directory, one synchronous request at a time). On a cluster, client i talks to node i mod N's
gateway, as clients of an elastic cluster spread over its nodes.

Figures per setup, clients and phase: ops/s (all clients' operations over the phase's window,
from the first client's start of it to the last client's end, on one monotonic clock), p99
latency (the worst client's p99), and for objcache the share of transactions that needed
two-phase commit (from the nodes' /metrics: objcache_txn_total by kind).

The setups run in rounds (--reps, default 3): each round starts every setup afresh, one after
the other, so a round's setups see the same machine; this VM's speed drifts by tens of percent
within minutes. Rates are medians over rounds; a ratio is the median of the rounds' ratios.
Targets (issue 4): three groups >= 1.5x the create rate of one group with 16 clients, and
>= 0.5x ganesha. Not like for like in durability: ganesha's VFS FSAL acknowledges creates,
renames and removes before they are on disk (strace of 1 000 files: openat, renameat and
unlinkat 1 000 times each, no fsync; ext4 commits its journal within 5 s), while objcache
syncs the group's Raft log before every reply.
Writes bench/results/namespace.json; prints the key ratios last.

  python bench/namespace.py            # full run
  python bench/namespace.py --quick    # small version, one round, under a minute
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from clusterproc import LocalCluster  # noqa: E402
from serverproc import GaneshaServer, build_nfsmeta  # noqa: E402

PHASES = ("create", "stat", "rename", "remove")
TXN_METRIC = re.compile(r'^objcache_txn_total\{kind="(\w+)",outcome="(\w+)"\} ([0-9.e+]+)$',
                        re.M)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 000 files, one round")
    p.add_argument("--files", type=int, default=10_000)
    p.add_argument("--reps", type=int, help="rounds of every setup (default 3; --quick 1)")
    p.add_argument("--clients", default="1,16", help="comma-separated client counts")
    p.add_argument("--setups", default="objcache-1g,objcache-3g,ganesha")
    p.add_argument("--work", type=Path, help="scratch directory (default: a temp dir)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "namespace.json")
    a = p.parse_args(argv)
    if a.quick:
        a.files = min(a.files, 1_000)
    a.reps = a.reps or (1 if a.quick else 3)
    if a.reps < 1:
        p.error("--reps must be at least 1")
    a.client_counts = [int(c) for c in a.clients.split(",")]
    a.setup_names = a.setups.split(",")
    return a


# ------------------------------------------------------------------------------ servers ----


class Cluster:
    """`objcache cluster up/down` with N one-member groups (tests/clusterproc.py)."""

    def __init__(self, nodes: int, work: Path) -> None:
        self.local = LocalCluster(work / f"cluster-{nodes}", nodes=nodes)

    def start(self) -> Cluster:
        self.local.up()
        return self

    def stop(self) -> None:
        self.local.down(check=False)

    def urls(self) -> list[str]:
        return [self.local.export_url(i) for i in sorted(self.local.nodes)]

    def txn_counts(self) -> dict[str, float]:
        counts: dict[str, float] = {}
        for n in self.local.nodes.values():
            if not n.get("metrics"):
                continue
            text = urllib.request.urlopen(f"http://{n['metrics']}/metrics", timeout=10).read()
            for kind, _outcome, value in TXN_METRIC.findall(text.decode()):
                counts[kind] = counts.get(kind, 0.0) + float(value)
        return counts


class Ganesha:
    def __init__(self, work: Path) -> None:
        self.srv = GaneshaServer(work / "ganesha-export")

    def start(self) -> Ganesha:
        self.srv.start()
        return self

    def stop(self) -> None:
        self.srv.stop(check=False)

    def urls(self) -> list[str]:
        return [self.srv.export_url()]

    def txn_counts(self) -> dict[str, float]:
        return {}


# --------------------------------------------------------------------------------- runs ----


def run_clients(urls: list[str], tag: str, files: int, clients: int) -> dict[str, dict]:
    exe = build_nfsmeta()
    per = max(files // clients, 1)

    def one(i: int) -> dict[str, dict]:
        url = urls[i % len(urls)]
        res = subprocess.run([str(exe), url, "ns", f"/{tag}-{i}", str(per)],
                             capture_output=True, text=True, timeout=3600)
        if res.returncode != 0:
            raise RuntimeError(f"client {i}: {res.stderr.strip()}")
        return {d["phase"]: d for d in map(json.loads, res.stdout.splitlines())}

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(clients)))
    out = {}
    for phase in PHASES:
        rows = [r[phase] for r in results]
        # The window, not the longest client: clients start and end a phase at different times
        seconds = max(r["end"] for r in rows) - min(r["start"] for r in rows)
        out[phase] = {
            "ops": sum(r["ops"] for r in rows),
            "seconds": seconds,
            "ops_per_s": sum(r["ops"] for r in rows) / seconds,
            "p99_ms": max(r["p99_us"] for r in rows) / 1000,
            "p50_ms": sorted(r["p50_us"] for r in rows)[len(rows) // 2] / 1000,
        }
    return out


def run_setup(name: str, a: argparse.Namespace, work: Path) -> dict:
    server = Cluster(1, work) if name == "objcache-1g" else (
        Cluster(3, work) if name == "objcache-3g" else Ganesha(work))
    server.start()
    results = {}
    try:
        for c in a.client_counts:
            before = server.txn_counts()
            t0 = time.monotonic()
            phases = run_clients(server.urls(), f"{name}-c{c}", a.files, c)
            after = server.txn_counts()
            delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
            total = sum(delta.values())
            results[str(c)] = {
                "phases": phases,
                "txns": delta,
                "two_phase_share": (delta.get("two_phase", 0) / total) if total else None,
            }
            shown = ", ".join(f"{p} {phases[p]['ops_per_s']:,.0f}/s" for p in PHASES)
            print(f"  {name} {c:>2} clients: {shown} ({time.monotonic() - t0:.0f}s)",
                  flush=True)
    finally:
        server.stop()
    return results


def summarize(rounds: list[dict]) -> dict:
    """One setup's and client count's rounds: median ops/s and p99 per phase, median 2PC share."""
    phases = {
        p: {
            "ops_per_s": statistics.median(r["phases"][p]["ops_per_s"] for r in rounds),
            "p99_ms": statistics.median(r["phases"][p]["p99_ms"] for r in rounds),
        } for p in PHASES
    }
    shares = [r["two_phase_share"] for r in rounds if r["two_phase_share"] is not None]
    return {"phases": phases, "two_phase_share": statistics.median(shares) if shares else None}


def round_ratios(rounds: list[dict[str, dict]], c: int) -> dict[str, list[float]]:
    """Per round, 3 groups' create rate over one group's and over ganesha's (same round)."""
    out: dict[str, list[float]] = {"create_3g_over_1g": [], "create_3g_over_ganesha": []}
    for rnd in rounds:
        rate = {name: by_c[str(c)]["phases"]["create"]["ops_per_s"]
                for name, by_c in rnd.items()}
        if "objcache-3g" not in rate:
            continue
        if "objcache-1g" in rate:
            out["create_3g_over_1g"].append(rate["objcache-3g"] / rate["objcache-1g"])
        if "ganesha" in rate:
            out["create_3g_over_ganesha"].append(rate["objcache-3g"] / rate["ganesha"])
    return {k: v for k, v in out.items() if v}


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    work = a.work or Path(tempfile.mkdtemp(prefix="objcache-bench-ns-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"bench/namespace.py: {a.files} files, clients {a.client_counts}, {a.reps} rounds, "
          f"work in {work}")
    rounds = []
    for r in range(a.reps):
        print(f"round {r + 1} of {a.reps}", flush=True)
        rounds.append({name: run_setup(name, a, work / f"round-{r}") for name in a.setup_names})
    summary = {name: {str(c): summarize([rnd[name][str(c)] for rnd in rounds])
                      for c in a.client_counts} for name in a.setup_names}

    print(f"\nmedians of {a.reps} rounds")
    print(f"{'setup':<13}{'clients':>8}" + "".join(f"{p + ' /s':>12}" for p in PHASES)
          + f"{'create p99':>12}{'2PC share':>11}")
    for name, by_c in summary.items():
        for c, r in by_c.items():
            ph = r["phases"]
            share = r["two_phase_share"]
            print(f"{name:<13}{c:>8}" + "".join(f"{ph[p]['ops_per_s']:>12,.0f}" for p in PHASES)
                  + f"{ph['create']['p99_ms']:>10.2f}ms"
                  + (f"{share:>10.1%}" if share is not None else f"{'-':>11}"))

    cmax = max(a.client_counts)
    per_round = round_ratios(rounds, cmax)
    ratios = {k: statistics.median(v) for k, v in per_round.items()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({
        "files": a.files, "clients": a.client_counts, "reps": a.reps, "rounds": rounds,
        "medians": summary, "ratios": ratios, "round_ratios": per_round,
        "cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, indent=2))
    print(f"\nwrote {a.out}")
    for k, v in ratios.items():
        target = 1.5 if k == "create_3g_over_1g" else 0.5
        rs = ", ".join(f"{x:.2f}" for x in per_round[k])
        print(f"{k} ({cmax} clients): {v:.2f}x (rounds: {rs}; target >= {target}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
