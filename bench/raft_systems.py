"""The systems bench/raft.py measures, each a cluster with `connect(nursery)` -> a proposer and
`stop()` -> peak RSS per process (KiB):

  ObjcacheCluster  `python -m server.raft_kv` processes on loopback; the client an RpcPlane node.
  InprocGroup      a one-member group inside the bench process (driver, LevelDB log, state
                   machine, no RPC).
  EtcdCluster      Debian `etcd` processes on loopback, through its HTTP/JSON gateway (HttpConn).

A proposer's `session()` gives what one proposer task puts through; objcache's and inproc's
proposers also give the leader's in-process commit latencies (`take_node_latencies`).
The caller (bench/raft.py) puts tests/ and the repository on sys.path before importing this,
the repository ahead of bench/ (else bench/raft.py would be taken for the `raft` package).
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import trio
from serverproc import free_port

from raft.config import Config
from raft.driver import RaftDriver
from raft.node import RawNode, bootstrap_log
from server.raft_kv import KvClient, KvStateMachine, encode_put
from server.rpc.plane import RpcConfig, RpcPlane
from storage.kv import KvStore
from storage.raftlog import RaftLogStorage

REPO = Path(__file__).resolve().parents[1]
SECRET = b"bench-raft-cluster-secret-0123456789"


def free_ports(n: int) -> list[int]:
    """n free loopback ports (below the ephemeral range; tests/serverproc.py)."""
    base = free_port(count=n)
    return list(range(base, base + n))


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


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
        return stop_members(self.procs, [f"node{i}" for i in self.ids])


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
        return stop_members(self.procs, [f"etcd{i}" for i in self.ids])


def stop_members(procs: list[subprocess.Popen], names: list[str]) -> dict[str, int]:
    """SIGTERM every member and wait for it; their peak RSS (KiB) by name, read before."""
    rss = {name: peak_rss_kib(p.pid) for name, p in zip(names, procs, strict=True)}
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
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
