#!/usr/bin/env python3
"""Benchmark: objcache's NFS gateway against nfs-ganesha (VFS) through the same clients.

Workloads (each repeated; medians reported):
  seq-write   fio, ioengine=nfs (libnfs), 1 MiB writes of one 1 GiB file
  seq-read    fio, ioengine=nfs, 1 MiB reads of that file
  rand-read   fio, ioengine=nfs, 4 KiB random reads of that file for 30 s
  (fio keeps --iodepth requests in flight, default 1: the figures then measure round trips)
  meta        nfsmeta (tests/tools/nfsmeta.c over libnfs, one synchronous request at a time):
              create 10 000 small files, stat each, remove each (fio cannot do NFS metadata)

The metadata phase is not like for like on durability: RFC 1813 §1.6 makes CREATE, REMOVE and
COMMIT synchronous, and objcache syncs each (two synced LevelDB writes per create+write+commit,
one per remove), while ganesha's VFS backend syncs only COMMIT (strace of a 1 000-file run,
2026-12-01: 1 000 fsync, none after openat/unlinkat, ext4 journals those later).

Both servers run at once on loopback, their data on the same disk (one parent directory), and
the repetitions interleave them so that drift on the shared machine hits both alike. Prints a
table with MiB/s, ops/s, the ratio objcache/ganesha and each server's peak RSS (VmHWM), writes
bench/results/nfs_gateway.json, and prints the key ratios last.

  python bench/nfs_gateway.py            # full run
  python bench/nfs_gateway.py --quick    # small version, under a minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from serverproc import (  # noqa: E402
    SHARED_TOOLS,
    GaneshaServer,
    ObjcacheServer,
    build_nfsmeta,
    nfsmeta,
    peak_rss_kib,
)

MiB = 1 << 20
OUR_CODE = re.compile(r"\((server|nfs_gateway|storage|raft|txn)/")
FIO_BUILD = SHARED_TOOLS / "build-fio-nfs.sh"
WORKLOADS = ("seq-write", "seq-read", "rand-read", "create", "stat", "remove")
UNITS = {
    "seq-write": "MiB/s", "seq-read": "MiB/s", "rand-read": "IOPS",
    "create": "ops/s", "stat": "ops/s", "remove": "ops/s",
}  # fmt: skip
CLIENTS = {
    "seq-write": "fio ioengine=nfs (libnfs)", "seq-read": "fio ioengine=nfs (libnfs)",
    "rand-read": "fio ioengine=nfs (libnfs)", "create": "nfsmeta (libnfs sync API)",
    "stat": "nfsmeta (libnfs sync API)", "remove": "nfsmeta (libnfs sync API)",
}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    p.add_argument("--reps", type=int, help="repetitions (default 3; --quick 1)")
    p.add_argument("--size-mib", type=int, help="sequential file size (default 1024; quick 64)")
    p.add_argument("--randread-s", type=int, help="random-read duration (default 30; quick 5)")
    p.add_argument("--files", type=int, help="metadata file count (default 10000; quick 500)")
    p.add_argument("--file-bytes", type=int, default=1024, help="bytes in each small file")
    p.add_argument(
        "--iodepth", type=int, default=1,
        help="fio requests in flight (8 crashed fio 3.33's nfs engine reading from ganesha)",
    )  # fmt: skip
    p.add_argument("--servers", default="objcache,ganesha", help="comma list")
    p.add_argument("--workdir", type=Path, help="parent of both servers' data (default: /var/tmp)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "nfs_gateway.json")
    p.add_argument(
        "--profile", action="store_true", help="sample objcache with py-spy; print the hot spots"
    )
    a = p.parse_args(argv)
    quick = a.quick
    a.reps = a.reps or (1 if quick else 3)
    a.size_mib = a.size_mib or (64 if quick else 1024)
    a.randread_s = a.randread_s or (5 if quick else 30)
    a.files = a.files or (500 if quick else 10_000)
    a.servers = [s for s in a.servers.split(",") if s]
    return a


# ------------------------------------------------------------------------------ clients ----


def build_fio() -> Path:
    out = subprocess.run(["bash", str(FIO_BUILD)], capture_output=True, text=True, timeout=1200)
    if out.returncode != 0:
        sys.exit(f"bench: build-fio-nfs.sh failed:\n{out.stderr[-3000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def run_fio(fio: Path, url: str, name: str, rw: str, bs: str, size_mib: int,
            runtime_s: int | None = None, iodepth: int = 1) -> dict:  # fmt: skip
    argv = [
        str(fio), f"--name={name}", "--ioengine=nfs", f"--nfs_url={url}", f"--rw={rw}",
        f"--bs={bs}", f"--size={size_mib}m", f"--filename={name}.bin", "--output-format=json",
        f"--iodepth={iodepth}",
    ]  # fmt: skip
    if runtime_s:
        argv += ["--time_based", f"--runtime={runtime_s}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"fio {rw} exited {out.returncode}: {out.stderr[-1500:]}")
    job = json.loads(out.stdout[out.stdout.index("{") :])["jobs"][0]
    if job.get("error"):
        raise RuntimeError(f"fio {rw} error {job['error']}")
    return job["write" if "write" in rw else "read"]


# ------------------------------------------------------------------------------ py-spy ----


def start_profiler(pid: int, out: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)
    argv = [str(exe), "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
            "--output", str(out), "--nonblocking"]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profiler(proc: subprocess.Popen, out: Path, top: int = 15) -> dict[str, list]:
    """Stop py-spy (SIGINT makes it write its file) and summarise the collapsed stacks."""
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    self_t: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():  # py-spy 0.4 ends its file with a blank line
            continue
        n = int(count)
        # per function, not per line: "f (pkg/mod.py:12)" -> "f (pkg/mod.py)"
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        total += n
        self_t[frames[-1]] = self_t.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n

    def head(d: dict[str, int]) -> list:
        return [[f, round(100 * n / total, 1)] for f, n in sorted(d.items(), key=lambda x: -x[1])][
            :top
        ]

    ours = {f: n for f, n in incl.items() if OUR_CODE.search(f)}
    return {
        "samples": total,
        "self_pct": head(self_t),
        "inclusive_pct": head(incl),
        "inclusive_pct_objcache_code": head(ours),
    }


def print_profile(profile: dict) -> None:
    print(f"\npy-spy on objcache ({profile['samples']} samples), self time:")
    for frame, pct in profile["self_pct"]:
        print(f"  {pct:5.1f}%  {frame}")
    print("inclusive time in objcache's own functions:")
    for frame, pct in profile["inclusive_pct_objcache_code"]:
        print(f"  {pct:5.1f}%  {frame}")


# ---------------------------------------------------------------------------- the runs ----


def one_repetition(server, rep: int, a: argparse.Namespace, fio: Path) -> dict[str, float]:
    """All workloads once against `server`; figures in the units of UNITS."""
    url, fig = server.export_url(), {}
    name = f"seq-{rep}"
    # Each workload starts with the disk quiet (os.sync): dirty pages left by the previous
    # one -- say, the other server's unstable 1 GiB write -- would otherwise be written back
    # during the next, slowing its fsyncs (the metadata phase syncs every create).
    os.sync()
    w = run_fio(fio, url, name, "write", "1m", a.size_mib, iodepth=a.iodepth)
    fig["seq-write"] = w["bw_bytes"] / MiB
    os.sync()
    r = run_fio(fio, url, name, "read", "1m", a.size_mib, iodepth=a.iodepth)
    fig["seq-read"] = r["bw_bytes"] / MiB
    os.sync()
    rr = run_fio(fio, url, name, "randread", "4k", a.size_mib, a.randread_s, a.iodepth)
    fig["rand-read"] = rr["iops"]
    os.sync()
    phases = nfsmeta(url, "meta", f"/meta-{rep}", a.files, a.file_bytes, timeout_s=1800)
    for phase in ("create", "stat", "remove"):
        fig[phase] = phases[phase]["ops"] / phases[phase]["seconds"]
    return fig


def start_servers(names: list[str], work: Path) -> dict:
    servers = {}
    for name in names:
        if name == "objcache":
            srv = ObjcacheServer(work / "objcache-data", log_path=work / "objcache.log")
        elif name == "ganesha":
            srv = GaneshaServer(work / "ganesha-export")
        else:
            sys.exit(f"bench: unknown server {name}")
        servers[name] = srv.start()
    return servers


def run_all(a: argparse.Namespace, fio: Path, work: Path) -> tuple[dict, dict, dict, dict]:
    runs: dict[str, list[dict]] = {n: [] for n in a.servers}
    errors: dict[str, list[str]] = {n: [] for n in a.servers}
    servers = start_servers(a.servers, work)
    rss: dict[str, int | None] = {}
    profile: dict = {}
    prof_out = work / "objcache.pyspy.txt"
    profiler = None
    if a.profile and "objcache" in servers:
        profiler = start_profiler(servers["objcache"].pid, prof_out)
    try:
        for rep in range(a.reps):
            for name, srv in servers.items():
                t0 = time.monotonic()
                try:
                    fig = one_repetition(srv, rep, a, fio)
                except Exception as e:  # a failing server is a result to report, not a crash
                    errors[name].append(f"rep {rep}: {e}")
                    print(f"  {name} rep {rep}: FAILED: {e}", flush=True)
                    continue
                runs[name].append(fig)
                shown = ", ".join(f"{k} {v:,.0f}" for k, v in fig.items())
                print(f"  {name} rep {rep}: {shown} ({time.monotonic() - t0:.0f}s)", flush=True)
        for name, srv in servers.items():
            rss[name] = peak_rss_kib(srv.pid)
        if profiler is not None:
            profile = stop_profiler(profiler, prof_out)
    finally:
        for srv in servers.values():
            try:
                srv.stop(check=False)
            except Exception as e:
                print(f"bench: stopping {srv!r}: {e}", file=sys.stderr)
    return runs, errors, rss, profile


# ------------------------------------------------------------------------------ report ----


def medians(runs: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    return {
        name: {w: statistics.median(r[w] for r in rs) for w in WORKLOADS}
        for name, rs in runs.items()
        if rs
    }


def ratios(med: dict[str, dict[str, float]]) -> dict[str, float]:
    if "objcache" not in med or "ganesha" not in med:
        return {}
    return {w: med["objcache"][w] / med["ganesha"][w] for w in WORKLOADS if med["ganesha"][w]}


def print_table(a, med, rat, rss) -> None:
    names = list(med)
    head = f"{'workload':<11} {'unit':<6}" + "".join(f"{n:>14}" for n in names)
    print("\n" + head + (f"{'ratio':>9}" if rat else ""))
    for w in WORKLOADS:
        row = f"{w:<11} {UNITS[w]:<6}" + "".join(f"{med[n][w]:>14,.1f}" for n in names)
        print(row + (f"{rat[w]:>8.2f}x" if w in rat else ""))
    print(
        f"{'peak RSS':<11} {'MiB':<6}"
        + "".join(f"{(rss.get(n) or 0) / 1024:>14,.1f}" for n in names)
    )
    print(
        f"\nmedians of {a.reps} repetitions; seq file {a.size_mib} MiB, rand-read "
        f"{a.randread_s}s 4 KiB, fio iodepth {a.iodepth}, "
        f"metadata {a.files} files of {a.file_bytes} B"
    )
    print("clients: fio ioengine=nfs (libnfs) for seq/rand; nfsmeta (libnfs sync) for metadata")


def print_key(rat: dict[str, float]) -> None:
    """The key ratios, printed last."""
    if rat:
        print(
            "KEY objcache/ganesha: "
            + ", ".join(f"{w} {rat[w]:.2f}x" for w in WORKLOADS if w in rat)
        )
    else:
        print("KEY objcache/ganesha: n/a (a server produced no complete repetition)")


def parameters(a: argparse.Namespace) -> dict[str, object]:
    return {
        "reps": a.reps,
        "seq_size_mib": a.size_mib,
        "seq_bs": "1m",
        "randread_s": a.randread_s,
        "randread_bs": "4k",
        "iodepth": a.iodepth,
        "files": a.files,
        "file_bytes": a.file_bytes,
        "quick": a.quick,
    }


def versions(fio: Path) -> dict[str, str]:
    def cmd(*argv: str) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            return out.stdout.strip()
        except OSError:
            return ""

    return {
        "python": platform.python_version(),
        "fio": cmd(str(fio), "--version"),
        "nfs-ganesha": cmd("dpkg-query", "-W", "-f", "${Version}", "nfs-ganesha"),
        "libnfs": cmd("dpkg-query", "-W", "-f", "${Version}", "libnfs13"),
        "objcache_commit": cmd("git", "-C", str(REPO), "rev-parse", "HEAD"),
        # the server runs from the work tree: uncommitted changes are part of what is measured
        "objcache_worktree_changes": cmd(
            "git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"
        ),
    }


def machine(work: Path) -> dict[str, object]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    df = subprocess.run(["df", "-P", str(work)], capture_output=True, text=True).stdout
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "mem_total_mib": mem_kib // 1024,
        "kernel": platform.release(),
        "workdir": str(work),
        "workdir_device": df.splitlines()[-1].split()[0] if df else "",
        "loadavg_at_start": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    print("bench: building/locating clients (fio with libnfs, nfsmeta) ...", flush=True)
    fio = build_fio()
    build_nfsmeta()
    parent = a.workdir or Path("/var/tmp")
    work = Path(tempfile.mkdtemp(prefix="objcache-bench-", dir=parent))
    facts = machine(work)
    vers = versions(fio)  # before the run: the commit measured, not the one at the end
    started = time.time()
    print(f"bench: servers {a.servers}, {a.reps} repetitions, data under {work}", flush=True)
    try:
        runs, errors, rss, profile = run_all(a, fio, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = medians(runs)
    rat = ratios(med)
    if med:
        print_table(a, med, rat, rss)
    if profile:
        print_profile(profile)
    for name, errs in errors.items():
        for e in errs:
            print(f"ERROR {name}: {e}")
    result = {
        "benchmark": "nfs_gateway",
        "started_unix": started,
        "duration_s": time.time() - started,
        "parameters": parameters(a),
        "units": UNITS,
        "clients": CLIENTS,
        "runs": runs,
        "medians": med,
        "ratio_objcache_to_ganesha": rat,
        "peak_rss_kib": rss,
        "errors": errors,
        "profile_objcache": profile,
        "machine": facts,
        "versions": vers,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {a.out}")
    print_key(rat)
    return 1 if any(errors.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
