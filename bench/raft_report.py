"""The report of bench/raft.py: medians over repetitions, the issue-3 ratios, the printed
tables, and the machine facts and versions written with them to bench/results/raft.json.

The cell matrix lives here too, as the ratios and the table are defined over it: bench/raft.py
runs every (members, bytes, proposers) cell of GROUPS x SIZES x PROPOSERS.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[1]
SIZES = (64, 4096)
PROPOSERS = (1, 64)
GROUPS = (1, 3)


def medians(runs: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    return {k: {m: statistics.median(r[m] for r in rs) for m in rs[0]} for k, rs in runs.items()}


def versions() -> dict[str, str]:
    def cmd(*argv: str) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
            return out.split("\n")[0]
        except OSError:
            return "unavailable"

    from importlib.metadata import version

    import trio_websocket

    return {"python": platform.python_version(), "trio": trio.__version__,
            "trio_websocket": trio_websocket.__version__, "cbor2": version("cbor2"),
            "plyvel": version("plyvel"),
            "etcd": cmd("etcd", "--version"),
            "objcache_commit": cmd("git", "-C", str(REPO), "rev-parse", "--short", "HEAD")}


def machine(work: Path) -> dict[str, object]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "disk_of_data": subprocess.run(["df", "-T", str(work)], capture_output=True,
                                           text=True).stdout.splitlines()[-1],
            "note": "shared 2-core machine; loopback only"}


def compute_ratios(med: dict) -> dict[str, float]:
    ratios: dict[str, float] = {}
    for size in SIZES:
        fd = med[f"floor/{size}"]["fdatasync_p50_ms"]
        ratios[f"leveldb sync batch p50 / fdatasync p50 ({size} B)"] = (
            med[f"floor/{size}"]["leveldb_sync_p50_ms"] / fd)
        for name in ("objcache", "inproc"):
            m = med.get(f"{name}/1/{size}/1")
            if m:
                where = "3 processes' node" if name == "objcache" else "bench-process"
                ratios[f"{name} 1-member node p50 / fdatasync p50 ({size} B, {where})"] = (
                    m["node_p50_ms"] / fd)
        m = med.get(f"objcache/1/{size}/1")
        if m:
            ratios[f"objcache 1-member client-through-RPC p50 / fdatasync p50 ({size} B)"] = (
                m["p50_ms"] / fd)
            paced = med[f"floor/{size}"].get("fdatasync_paced_p50_ms")
            if paced:
                ratios[f"objcache 1-member node p50 / paced fdatasync p50 ({size} B, "
                       "reference)"] = m["node_p50_ms"] / paced
        for n in GROUPS:
            for k in PROPOSERS:
                oc, et = med.get(f"objcache/{n}/{size}/{k}"), med.get(f"etcd/{n}/{size}/{k}")
                if oc and et:
                    ratios[f"objcache/etcd commits/s {n} members {size} B {k} proposers"] = (
                        oc["commits_per_s"] / et["commits_per_s"])
    return ratios


def print_steps(steps: dict[str, dict[str, float]]) -> None:
    print("\none commit, one member, in process, one proposer: median µs since propose()")
    for size, row in steps.items():
        print(f"  {size} B: " + "; ".join(f"{k[2:] if k[0].isdigit() else k} {v:.0f}"
                                         for k, v in row.items()))


def print_table(med: dict, ratios: dict[str, float]) -> None:
    title = "cell (system/members/bytes/proposers)"
    print(f"\n{title:<38}{'commits/s':>10}{'client p50':>11}{'p99':>8}{'node p50':>10}{'p99':>8}")
    for key in sorted(k for k in med if not k.startswith("floor/")):
        m = med[key]
        node = (f"{m['node_p50_ms']:>10.2f}{m['node_p99_ms']:>8.2f}" if "node_p50_ms" in m else "")
        print(f"{key:<38}{m['commits_per_s']:>10.0f}{m['p50_ms']:>11.2f}{m['p99_ms']:>8.2f}{node}")
    for size in SIZES:
        f = med[f"floor/{size}"]
        for kind in ("fdatasync", "leveldb_sync", "fdatasync_paced"):
            print(f"{'floor ' + kind + ' ' + str(size) + ' B':<38}{'':>10}"
                  f"{f[kind + '_p50_ms']:>11.2f}{f[kind + '_p99_ms']:>8.2f}")
    print()
    for name, r in ratios.items():
        print(f"{r:8.2f}  {name}")
    print("\nissue-3 targets (medians of this run):")
    targets = (  # (ratio's name, what it is, met?), {size} filled in
        ("objcache 1-member node p50 / fdatasync p50 ({size} B, 3 processes' node)",
         "1-member commit p50 / one fsync, {size} B (target <= 1.5)", lambda r: r <= 1.5),
        ("objcache/etcd commits/s 3 members {size} B 64 proposers",
         "3-member commits/s vs etcd, 64 proposers, {size} B (target >= 1.0)",
         lambda r: r >= 1.0))
    for name, label, met in targets:
        for size in SIZES:
            r = ratios.get(name.format(size=size))
            if r is not None:
                print(f"{r:8.2f}  {label.format(size=size)}: {'met' if met(r) else 'NOT met'}")
