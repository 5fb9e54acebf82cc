#!/usr/bin/env python3
"""Benchmark: Raft commits through objcache's stack against etcd, with the disk's fsync as floor.

Workload: proposers each put a fresh key with a value of SIZE bytes, one request at a time,
for DURATION seconds; a put counts when the leader answered (applied on the leader). Cells:
groups of 1 and 3 members on loopback x 64 B and 4 KiB values x 1 and 64 proposers.

Two latencies per objcache cell, both reported:
  node     commit latency as issue 3 defines it: from propose() to the entry committed and
           applied at the leader, measured inside the leader's process (RaftDriver
           .commit_latencies_s, fetched with kv.commit_latencies after the cell). This is the
           figure compared with one fsync.
  client   the put as the bench client sees it, through the RPC plane (encode, WebSocket,
           loopback TCP, decode, both directions); the only latency etcd offers, so the
           etcd comparison uses it.

  objcache   `python -m server.raft_kv` processes (RpcPlane WebSocket+CBOR, LevelDB log with
             group commit, the sans-I/O core + trio driver); the client is an RpcPlane node.
  etcd       Debian `etcd` (3.4), same member counts on loopback, through its HTTP/JSON gateway
             (POST /v3/kv/put, one keep-alive connection per proposer), requests to the leader.
  inproc     a one-member group inside the bench process (driver, LevelDB log and state
             machine, no RPC): what Raft and storage cost without the plane.
  floor      on the same disk, between the cells: `fdatasync` = os.write of SIZE bytes to an
             appended file + os.fdatasync ("one fsync", the denominator of the latency ratio);
             `leveldb_sync` = one synced KvStore batch of one SIZE-byte put (since
             2026-12-01 the journal's one direct write, storage/journal.py, then LevelDB
             unsynced): what a one-member commit must at least pay in this stack; shown
             for reference;
             `fdatasync_paced` = the fdatasync, each after the CPU idled PACE_S, as a commit
             does that arrives one client round trip after the last. On this VM an fsync that
             follows an idle pause costs 20-100 µs more than back-to-back ones; shown for
             reference, the target ratio keeps the back-to-back floor.

Both clients are Python trio programs in this process, so client overhead is alike. The
repetitions interleave the systems so drift on the shared machine hits both. Prints a table
and the issue-3 ratios, writes bench/results/raft.json (medians, machine facts, versions, RSS).
The systems live in bench/raft_systems.py, the ratios, table and facts in bench/raft_report.py.

  python bench/raft.py            # full: 3 repetitions of 3 s per cell
  python bench/raft.py --quick    # 2 repetitions of 0.6 s per cell (under a minute)

Profiling a node under this load (py-spy is a benchmark-only tool, not a project dependency):
  .venv/bin/pip install py-spy; .venv/bin/py-spy record --gil -p <leader pid> -d 5 -f raw -o x
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

import trio

REPO = Path(__file__).resolve().parents[1]
# bench/ goes behind the repository: the `raft` package, not this script, is `raft`.
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from raft_report import (  # noqa: E402
    GROUPS,
    PROPOSERS,
    SIZES,
    compute_ratios,
    machine,
    medians,
    print_steps,
    print_table,
    versions,
)
from raft_systems import EtcdCluster, EtcdSession, InprocGroup, ObjcacheCluster  # noqa: E402

from server.raft_kv import encode_put  # noqa: E402
from storage.kv import KvStore  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--duration", type=float, default=None)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--no-etcd", action="store_true")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "raft.json")
    a = p.parse_args(argv)
    a.duration = a.duration or (0.6 if a.quick else 3.0)
    a.reps = a.reps or (2 if a.quick else 3)
    return a


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


# ---- the disk's floor ----

PACE_S = 0.0005  # the idle pause before a paced fsync: about a one-proposer client round trip


def floor_latencies(work: Path, size: int, n: int = 200) -> dict[str, float]:
    """One appended write + fdatasync, and one synced LevelDB batch, each n times, interleaved
    (so both see the same moment of the shared disk)."""
    path = work / f"fsync-{size}.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    store = KvStore.open_sync(work / f"floor-db-{size}")
    data = os.urandom(size)
    raw, ldb, paced = [], [], []
    try:
        for i in range(n):
            t = time.perf_counter()
            os.write(fd, data)
            os.fdatasync(fd)
            raw.append(time.perf_counter() - t)
            t = time.perf_counter()
            store.write_sync([(b"floor/%d" % i, data)], sync=True)
            ldb.append(time.perf_counter() - t)
            time.sleep(PACE_S)
            t = time.perf_counter()
            os.write(fd, data)
            os.fdatasync(fd)
            paced.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        path.unlink()
        store.close_sync()
        shutil.rmtree(work / f"floor-db-{size}", ignore_errors=True)
    return {"fdatasync_p50_ms": percentile(raw, 0.5) * 1e3,
            "fdatasync_p99_ms": percentile(raw, 0.99) * 1e3,
            "leveldb_sync_p50_ms": percentile(ldb, 0.5) * 1e3,
            "leveldb_sync_p99_ms": percentile(ldb, 0.99) * 1e3,
            "fdatasync_paced_p50_ms": percentile(paced, 0.5) * 1e3,
            "fdatasync_paced_p99_ms": percentile(paced, 0.99) * 1e3}


# ---- where one commit's time goes (one member, in process, one proposer) ----


async def breakdown(group: InprocGroup, size: int, n: int = 400) -> dict[str, float]:
    """Median µs from propose() to each step of one commit, by wrapping the instances' methods
    (the library is not changed). The steps, in order: the Ready loop takes the proposal
    (ready()), a worker thread starts the synced LevelDB batch, the batch returns in the
    thread, save() returns in the loop, the Ready with the committed entry is built, the state
    machine has applied it, propose() returns to the caller."""
    driver, storage, node = group.driver, group.storage, group.driver.node
    marks: dict[str, float] = {}

    def mark(name: str) -> None:
        marks.setdefault(name, time.perf_counter())

    write_sync, ready, save, apply = storage._write_sync, node.ready, storage.save, driver._apply

    def timed_write(ops, sync):  # type: ignore[no-untyped-def]
        mark("2 thread starts synced write")
        write_sync(ops, sync)
        mark("3 synced write done (in thread)")

    def timed_ready():  # type: ignore[no-untyped-def]
        mark("5 committed Ready built" if "1 loop takes proposal (ready)" in marks
             else "1 loop takes proposal (ready)")
        return ready()

    async def timed_save(*args):  # type: ignore[no-untyped-def]
        await save(*args)
        mark("4 save() back in loop")

    async def timed_apply(entries):  # type: ignore[no-untyped-def]
        await apply(entries)
        mark("6 applied")

    storage._write_sync, node.ready, storage.save, driver._apply = (
        timed_write, timed_ready, timed_save, timed_apply)
    rows = []
    value = os.urandom(size)
    try:
        for i in range(n):
            marks.clear()
            start = time.perf_counter()
            await driver.propose(encode_put(f"b{size}-{i}", value))
            mark("7 propose() returns")
            rows.append({k: (t - start) * 1e6 for k, t in marks.items()})
            await trio.lowlevel.checkpoint()  # back to back, as in the 1-proposer cell
    finally:
        del storage._write_sync, node.ready, storage.save
        driver._apply = apply
    return {k: statistics.median(r[k] for r in rows if k in r) for k in sorted(rows[0])}


async def breakdowns(group: InprocGroup, work: Path, reps: int) -> dict[str, dict[str, float]]:
    """breakdown() `reps` times per size, each next to an fdatasync floor; medians per step."""
    runs: dict[str, list[dict[str, float]]] = {}
    for _ in range(max(3, reps)):
        for size in SIZES:
            row = await breakdown(group, size, n=200)
            row["fdatasync p50 (same minute)"] = floor_latencies(work, size, n=100)[
                "fdatasync_p50_ms"] * 1e3
            runs.setdefault(f"{size}", []).append(row)
    return {size: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            for size, rows in runs.items()}


# ---- the workload ----


async def run_cell(proposer, size: int, proposers: int, duration: float, tag: str) -> dict:
    value = os.urandom(size)
    latencies: list[float] = []
    sessions = [await proposer.session() for _ in range(proposers)]
    in_node = hasattr(proposer, "take_node_latencies")
    if in_node:
        await proposer.take_node_latencies()  # drop what came before this cell
    deadline = trio.current_time() + duration

    async def one(p: int) -> None:
        s, n = sessions[p], 0
        while trio.current_time() < deadline:
            t = time.perf_counter()
            await s.put(f"{tag}-{p}-{n}", value)
            latencies.append(time.perf_counter() - t)
            n += 1

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for p in range(proposers):
            nursery.start_soon(one, p)
    elapsed = time.perf_counter() - start
    for s in sessions:
        if isinstance(s, EtcdSession):
            await s.conn.close()
    r = {"commits_per_s": len(latencies) / elapsed, "p50_ms": percentile(latencies, 0.5) * 1e3,
         "p99_ms": percentile(latencies, 0.99) * 1e3, "commits": len(latencies)}
    if in_node:
        node = await proposer.take_node_latencies()
        r |= {"node_p50_ms": percentile(node, 0.5) * 1e3,
              "node_p99_ms": percentile(node, 0.99) * 1e3}
    return r


async def run_all(a: argparse.Namespace, work: Path) -> tuple[dict, dict, dict]:
    runs: dict[str, list[dict]] = {}
    rss: dict[str, dict[str, int]] = {}
    steps: dict[str, dict[str, float]] = {}
    systems = [ObjcacheCluster] + ([] if a.no_etcd else [EtcdCluster])
    for n in GROUPS:
        clusters = [cls(work, n) for cls in systems] + ([InprocGroup(work, n)] if n == 1 else [])
        try:
            async with trio.open_nursery() as nursery:
                proposers = {c.name: await c.connect(nursery) for c in clusters}
                for c in clusters:  # first: no cell's writes are still being compacted
                    if isinstance(c, InprocGroup):
                        steps = await breakdowns(c, work, a.reps)
                for rep in range(a.reps):
                    for size in SIZES:
                        # The floor is measured between the cells too: other users' I/O on the
                        # shared disk moves it, and a ratio needs both from the same minutes.
                        runs.setdefault(f"floor/{size}", []).append(floor_latencies(work, size))
                        for k in PROPOSERS:
                            for name, prop in proposers.items():
                                key = f"{name}/{n}/{size}/{k}"
                                r = await run_cell(prop, size, k, a.duration, f"r{rep}{size}{k}")
                                runs.setdefault(key, []).append(r)
                                node = (f" node p50 {r['node_p50_ms']:6.2f} ms"
                                        if "node_p50_ms" in r else "")
                                print(f"  {key:<22} rep {rep}: {r['commits_per_s']:9.0f}/s "
                                      f"client p50 {r['p50_ms']:7.2f} ms p99 {r['p99_ms']:7.2f}"
                                      f" ms{node}", flush=True)
                nursery.cancel_scope.cancel()
        finally:
            for c in clusters:
                rss[f"{c.name}/{n}"] = c.stop()
    return runs, rss, steps


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if not a.no_etcd and shutil.which("etcd") is None:
        print("etcd not found (Debian etcd-server); run with --no-etcd or install it")
        return 2
    # On the repo's disk (var/ when present), where a node's data would live.
    base = REPO / "var" if (REPO / "var").is_dir() else REPO / "bench"
    work = Path(tempfile.mkdtemp(prefix="bench-raft-", dir=base))
    try:
        runs, rss, steps = trio.run(run_all, a, work)
        med = medians(runs)
        ratios = compute_ratios(med)
        result = {"benchmark": "raft", "parameters": {"duration_s": a.duration, "reps": a.reps,
                  "sizes_bytes": SIZES, "proposers": PROPOSERS, "members": GROUPS},
                  "latency_definitions": {
                      "node_p50_ms": "propose() to applied at the leader, in its process",
                      "p50_ms": "client put through the RPC plane (etcd: HTTP/JSON gateway)",
                      "ratio_floor": "fdatasync of an appended file (floor/*/fdatasync_*)"},
                  "medians": med, "runs": runs, "ratios": ratios,
                  "one_member_commit_steps_us": steps,
                  "peak_rss_kib": rss, "machine": machine(work), "versions": versions()}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {a.out}")
        print_steps(steps)
        print_table(med, ratios)  # the key ratios come last
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
