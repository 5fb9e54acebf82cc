"""The report of bench/elasticity.py: the printed tables, the key lines printed last (each
figure against its target), and the machine facts and versions written to the JSON.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

from elastic_scenarios import TARGET_DRAIN_RATIO, TARGET_SCALE_UP_S, TARGET_STALL_S, KiB

REPO = Path(__file__).resolve().parents[1]


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

