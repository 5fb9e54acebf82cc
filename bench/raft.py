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
             `leveldb_sync` = one LevelDB write batch of one SIZE-byte put with sync=True
             (what a one-member commit must at least pay in this stack; shown for reference);
             `fdatasync_paced` = the fdatasync, each after the CPU idled PACE_S, as a commit
             does that arrives one client round trip after the last. On this VM an fsync that
             follows an idle pause costs 20-100 µs more than back-to-back ones; shown for
             reference, the target ratio keeps the back-to-back floor.

Both clients are Python trio programs in this process, so client overhead is alike. The
repetitions interleave the systems so drift on the shared machine hits both. Prints a table
and the issue-3 ratios, writes bench/results/raft.json (medians, machine facts, versions, RSS).

  python bench/raft.py            # full: 3 repetitions of 3 s per cell
  python bench/raft.py --quick    # 2 repetitions of 0.6 s per cell (under a minute)

Profiling a node under this load (py-spy is a benchmark-only tool, not a project dependency):
  .venv/bin/pip install py-spy; .venv/bin/py-spy record --gil -p <leader pid> -d 5 -f raw -o x
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import random  # noqa: E402

from serverproc import free_port  # noqa: E402

from raft.config import Config  # noqa: E402
from raft.driver import RaftDriver  # noqa: E402
from raft.node import RawNode, bootstrap_log  # noqa: E402
from server.raft_kv import KvClient, KvStateMachine, encode_put  # noqa: E402
from server.rpc.plane import RpcConfig, RpcPlane  # noqa: E402
from storage.kv import KvStore  # noqa: E402
from storage.raftlog import RaftLogStorage  # noqa: E402

SECRET = b"bench-raft-cluster-secret-0123456789"
SIZES = (64, 4096)
PROPOSERS = (1, 64)
GROUPS = (1, 3)


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


def free_ports(n: int) -> list[int]:
    """n free loopback ports (below the ephemeral range; tests/serverproc.py)."""
    base = free_port(count=n)
    return list(range(base, base + n))


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


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


# ---- clusters ----


class ObjcacheCluster:
    name = "objcache"

    def __init__(self, work: Path, n: int):
        self.ids = list(range(1, n + 1))
        self.ports = dict(zip(self.ids, free_ports(n), strict=True))
        (work / "secret").write_bytes(SECRET)
        peers = ",".join(f"{i}=ws://127.0.0.1:{p}/" for i, p in self.ports.items())
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "server.raft_kv", "--id", str(i), "--listen",
                 f"127.0.0.1:{self.ports[i]}", "--peers", peers, "--data-dir",
                 str(work / f"oc{n}-{i}"), "--secret-file", str(work / "secret")],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i in self.ids]

    async def connect(self, nursery: trio.Nursery) -> ObjcacheProposer:
        plane = RpcPlane(RpcConfig(node_id=1000, cluster_secret=SECRET,
                                   send_queue_frames=4096, max_concurrent_requests=256))
        await nursery.start(plane.run)
        for i, port in self.ports.items():
            plane.add_peer(i, f"ws://127.0.0.1:{port}/")
        client = KvClient(plane, self.ids)
        await client.put("warmup", b"x", timeout_s=60)  # waits out the first election
        for _ in range(200):  # warm the path (imports, caches, LevelDB files)
            await client.put("warmup", b"x" * 64)
        return ObjcacheProposer(client)

    def stop(self) -> dict[str, int]:
        rss = {f"node{i}": peak_rss_kib(p.pid) for i, p in zip(self.ids, self.procs, strict=True)}
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            p.wait(timeout=30)
        return rss


class ObjcacheProposer:
    def __init__(self, client: KvClient):
        self.client = client

    async def session(self):
        return self

    async def put(self, key: str, value: bytes) -> None:
        await self.client.put(key, value, timeout_s=30)

    async def take_node_latencies(self) -> list[float]:
        """The leader's in-process propose-to-applied times since the last call."""
        return list(await self.client.take_commit_latencies(self.client.leader_hint))


class InprocGroup:
    """A one-member group inside this process: driver + LevelDB log + state machine, no RPC.
    It separates what Raft and storage cost from what the RPC plane costs."""

    name = "inproc"

    def __init__(self, work: Path, n: int):
        assert n == 1
        self.path = work / "inproc"
        self.store: KvStore | None = None

    async def connect(self, nursery: trio.Nursery) -> InprocProposer:
        self.store = await KvStore.open(self.path)
        storage = await RaftLogStorage.open_on_store(self.store)
        await storage.save(*bootstrap_log([1]))
        sm = KvStateMachine(self.store, storage)
        node = RawNode(Config(id=1), storage, random.Random(1))
        driver = RaftDriver(node, storage, _NoPeers(), sm.apply)
        self.driver, self.storage = driver, storage
        await nursery.start(driver.run)
        with trio.fail_after(30):
            while not driver.is_leader():
                await trio.sleep(0.01)
        for _ in range(200):
            await driver.propose(encode_put("warmup", b"x" * 64))
        return InprocProposer(driver)

    def stop(self) -> dict[str, int]:
        if self.store is not None:
            self.store.close_sync()
        return {"bench_process": peak_rss_kib(os.getpid())}


class _NoPeers:
    def send(self, to: int, message: object) -> bool:
        return False


class InprocProposer:
    def __init__(self, driver: RaftDriver):
        self.driver = driver

    async def session(self) -> InprocProposer:
        return self

    async def put(self, key: str, value: bytes) -> None:
        await self.driver.propose(encode_put(key, value))

    async def take_node_latencies(self) -> list[float]:
        samples = list(self.driver.commit_latencies_s)
        self.driver.commit_latencies_s.clear()
        return samples


class EtcdCluster:
    name = "etcd"

    def __init__(self, work: Path, n: int):
        self.ids = list(range(1, n + 1))
        ports = free_ports(2 * n)
        self.client_ports = dict(zip(self.ids, ports[:n], strict=True))
        peer_ports = dict(zip(self.ids, ports[n:], strict=True))
        initial = ",".join(f"e{i}=http://127.0.0.1:{p}" for i, p in peer_ports.items())
        self.procs = []
        for i in self.ids:
            self.procs.append(subprocess.Popen(
                ["etcd", "--name", f"e{i}", "--data-dir", str(work / f"etcd{n}-{i}"),
                 "--listen-client-urls", f"http://127.0.0.1:{self.client_ports[i]}",
                 "--advertise-client-urls", f"http://127.0.0.1:{self.client_ports[i]}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peer_ports[i]}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_ports[i]}",
                 "--initial-cluster", initial, "--initial-cluster-state", "new",
                 "--initial-cluster-token", f"bench{n}", "--logger", "zap",
                 "--log-level", "error"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.leader_port = 0

    async def connect(self, nursery: trio.Nursery) -> EtcdProposer:
        with trio.fail_after(60):
            while not self.leader_port:
                for port in self.client_ports.values():
                    try:
                        conn = await HttpConn.open(port)
                        st = json.loads(await conn.post("/v3/maintenance/status", b"{}"))
                        await conn.close()
                    except (OSError, ValueError):
                        continue
                    if st.get("leader") and st["leader"] == st["header"]["member_id"]:
                        self.leader_port = port
                await trio.sleep(0.1)
        proposer = EtcdProposer(self.leader_port)
        s = await proposer.session()
        await s.put("warmup", b"x")
        return proposer

    def stop(self) -> dict[str, int]:
        rss = {f"etcd{i}": peak_rss_kib(p.pid) for i, p in zip(self.ids, self.procs, strict=True)}
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            p.wait(timeout=30)
        return rss


class HttpConn:
    """A minimal HTTP/1.1 keep-alive client (the bench needs only POST with JSON)."""

    def __init__(self, stream: trio.SocketStream, port: int):
        self.stream, self.port, self.buf = stream, port, bytearray()

    @classmethod
    async def open(cls, port: int) -> HttpConn:
        return cls(await trio.open_tcp_stream("127.0.0.1", port), port)

    async def close(self) -> None:
        await self.stream.aclose()

    async def post(self, path: str, body: bytes) -> bytes:
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        await self.stream.send_all(head.encode() + body)
        header = await self._read_until(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        pairs = (ln.partition(":") for ln in lines[1:])
        fields = {k.strip().lower(): v.strip() for k, _, v in pairs}
        if fields.get("transfer-encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int((await self._read_until(b"\r\n")).split(b";")[0], 16)
                chunk = await self._read_exactly(size + 2)
                if size == 0:
                    break
                data += chunk[:-2]
        else:
            data = await self._read_exactly(int(fields.get("content-length", "0")))
        if status != 200:
            raise OSError(f"HTTP {status}: {bytes(data)[:200]!r}")
        return bytes(data)

    async def _fill(self) -> None:
        more = await self.stream.receive_some(65536)
        if not more:
            raise OSError("connection closed")
        self.buf += more

    async def _read_until(self, sep: bytes) -> bytes:
        while (i := self.buf.find(sep)) < 0:
            await self._fill()
        out = bytes(self.buf[:i])
        del self.buf[:i + len(sep)]
        return out

    async def _read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


class EtcdProposer:
    def __init__(self, port: int):
        self.port = port

    async def session(self) -> EtcdSession:
        return EtcdSession(await HttpConn.open(self.port))


class EtcdSession:
    def __init__(self, conn: HttpConn):
        self.conn = conn

    async def put(self, key: str, value: bytes) -> None:
        body = json.dumps({"key": base64.b64encode(key.encode()).decode(),
                           "value": base64.b64encode(value).decode()}).encode()
        await self.conn.post("/v3/kv/put", body)


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
    for size in SIZES:
        name = f"objcache 1-member node p50 / fdatasync p50 ({size} B, 3 processes' node)"
        if name in ratios:
            r = ratios[name]
            print(f"{r:8.2f}  1-member commit p50 / one fsync, {size} B (target <= 1.5): "
                  f"{'met' if r <= 1.5 else 'NOT met'}")
    for size in SIZES:
        name = f"objcache/etcd commits/s 3 members {size} B 64 proposers"
        if name in ratios:
            r = ratios[name]
            print(f"{r:8.2f}  3-member commits/s vs etcd, 64 proposers, {size} B (target >= 1.0): "
                  f"{'met' if r >= 1.0 else 'NOT met'}")


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
