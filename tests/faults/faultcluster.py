"""A cluster whose nodes run in network namespaces (faultnet.py), over a real S3 server reached
through a fault proxy (tools/s3faultproxy.py) on the bridge.

It keeps LocalCluster's layout (DIR/n<ID>/node.toml, node.log, ready.json, DIR/cluster.json,
DIR/admin-token), so LocalCluster's kill9, wait_ready, fsck, admin, metric, leader and log
tails work unchanged; what differs is how a node is started (`ip netns exec`), its addresses
(each node its own IP, the same ports on every node) and its config (below).

Optionally a node's cache directory (DATA/chunks, where chunk files live) is a small tmpfs, so
that the campaign can fill it; `down()` unmounts them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from clusterproc import ClusterError, LocalCluster, _alive
from faultnet import FaultNet
from serverproc import REPO, _join, nfs_url, wait_for

NFS_PORT, RPC_PORT, METRICS_PORT = 2049, 2050, 9100
CHUNK_BYTES = 256 << 10  # small chunks: multi-chunk files (spread over groups) stay cheap


def _q(v: object) -> str:
    return json.dumps(v)  # a JSON string or number is a TOML one


class NetnsCluster(LocalCluster):
    def __init__(self, root: Path, net: FaultNet, *, replicas: int, store_url: str,
                 s3_endpoint: str, access: tuple[str, str], flush_delay_s: float = 2.0,
                 tmpfs_cache: dict[int, int] | None = None) -> None:
        super().__init__(root, nodes=net.nodes, replicas=replicas)
        self.net = net
        self.store_url = store_url
        self.s3_endpoint = s3_endpoint
        self.access = access
        self.flush_delay_s = flush_delay_s
        self.tmpfs_cache = tmpfs_cache or {}  # node id -> tmpfs size in bytes
        self.procs: dict[int, subprocess.Popen] = {}
        self.mounts: list[Path] = []

    # -- configs ----------------------------------------------------------------------------

    def group_of(self, node_id: int) -> int:
        return (node_id - 1) // self.replicas + 1

    def members(self, group: int) -> list[int]:
        return [i for i in range(1, self.n + 1) if self.group_of(i) == group]

    def node_toml(self, node_id: int) -> str:
        a = self.net.addr(node_id)
        peers = ", ".join(_q(f"{i}={self.net.addr(i)}:{RPC_PORT}") for i in range(1, self.n + 1))
        return "\n".join([
            f"# fault campaign: node {node_id} in netns {self.net.ns(node_id)}",
            "[node]", f"data_dir = {_q(str(self.root / f'n{node_id}'))}", "",
            "[nfs]", f"listen = {_q(f'{a}:{NFS_PORT}')}", 'portmap_listen = "off"', "",
            "[metrics]", f"listen = {_q(f'{a}:{METRICS_PORT}')}", "",
            "[storage]", f"chunk_size_bytes = {CHUNK_BYTES}", "",
            "[cluster]", f"node_id = {node_id}", f"listen = {_q(f'{a}:{RPC_PORT}')}",
            f"peers = [{peers}]", f"group = {self.group_of(node_id)}",
            f"cluster_secret_file = {_q(str(self.root / 'secret'))}",
            f"admin_token_file = {_q(str(self.root / 'admin-token'))}",
            "request_timeout_s = 8.0", "",
            "[store]", f"url = {_q(self.store_url)}", f"s3_endpoint = {_q(self.s3_endpoint)}",
            'region = "us-east-1"', f"access_key_id = {_q(self.access[0])}",
            f"secret_access_key = {_q(self.access[1])}", "max_attempts = 3", "timeout_s = 5.0",
            "",
            "[cache]", f"flush_delay_s = {self.flush_delay_s}", "ttl_s = 3600.0",
            # the clean+dirty cache stays under this; a tmpfs cache disk is made larger, so
            # that only the campaign's ballast fills it
            "capacity_bytes = 4194304", "",
            "[[exports]]", 'path = "/"', 'clients = ["10.0.0.0/8", "127.0.0.0/8"]',
            "insecure = true", "root_squash = false", "",  # the clients are root on the host
        ])

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for name in ("secret", "admin-token"):
            path = self.root / name
            if not path.exists():
                path.write_text(secrets.token_hex(32) + "\n")
                path.chmod(0o600)
        rows = []
        for i in range(1, self.n + 1):
            d = self.root / f"n{i}"
            d.mkdir(exist_ok=True)
            (d / "node.toml").write_text(self.node_toml(i))
            if i in self.tmpfs_cache:
                self._mount_tmpfs(d / "chunks", self.tmpfs_cache[i])
            a = self.net.addr(i)
            self.nodes[i] = {"node_id": i, "group": self.group_of(i), "pid": 0,
                             "nfs": f"{a}:{NFS_PORT}", "rpc": f"{a}:{RPC_PORT}",
                             "metrics": f"{a}:{METRICS_PORT}"}
            rows.append({**self.nodes[i], "dir": str(d), "config": str(d / "node.toml"),
                         "log": str(d / "node.log")})
        (self.root / "cluster.json").write_text(json.dumps({"format": 1, "nodes": rows}))

    def _mount_tmpfs(self, path: Path, size: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       check=True, capture_output=True)
        self.mounts.append(path)

    # -- life cycle -------------------------------------------------------------------------

    def up(self, timeout_s: float = 180.0) -> NetnsCluster:
        self._prepare()
        started = {i: self.start(i) for i in range(1, self.n + 1)}
        for i, proc in started.items():
            self.wait_ready(i, proc, timeout_s)
        return self

    def start(self, node_id: int) -> subprocess.Popen:
        node_dir = self.root / f"n{node_id}"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        argv = self.net.exec_argv(node_id, [sys.executable, "-m", "server.cli", "serve",
                                            "--config", str(node_dir / "node.toml")])
        with open(node_dir / "node.log", "ab") as log:
            # `ip netns exec` execs the command: the pid is the node's own.
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                    start_new_session=True)
        self.procs[node_id] = proc
        self.nodes[node_id]["pid"] = proc.pid
        self._record_pid(node_id, proc.pid)
        return proc

    def alive(self, node_id: int) -> bool:
        return _alive(self.nodes[node_id]["pid"]) if self.nodes[node_id]["pid"] else False

    def running(self) -> list[int]:
        return [i for i in sorted(self.nodes) if self.alive(i)]

    def stop_node(self, node_id: int, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait, SIGKILL; the exit code (None if it had to be killed)."""
        proc = self.procs.get(node_id)
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None

    def kill9(self, node_id: int) -> None:
        super().kill9(node_id)
        proc = self.procs.get(node_id)
        if proc is not None:
            proc.wait(10)

    def down(self, *, check: bool = False) -> None:
        for i in list(self.procs):
            proc = self.procs[i]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.unmount()

    def unmount(self) -> None:
        for path in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
        self.mounts.clear()

    # -- access -----------------------------------------------------------------------------

    def url(self, node_id: int, path: str = "/") -> str:
        return nfs_url(NFS_PORT, NFS_PORT, _join("/", path), host=self.net.addr(node_id))

    def export_url(self, node_id: int) -> str:
        return self.url(node_id, "/")

    def fsck(self, timeout_s: float = 120.0) -> dict:
        if not self.running():
            raise ClusterError("no node runs: nothing to fsck")
        return super().fsck(timeout_s)

    def wait_exit(self, node_id: int, timeout_s: float = 120.0) -> None:
        pid = self.nodes[node_id]["pid"]
        wait_for(lambda: not _alive(pid), timeout_s=timeout_s, what=f"node {node_id} to exit")
        proc = self.procs.get(node_id)
        if proc is not None:
            proc.wait(10)
