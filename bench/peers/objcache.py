"""objcache itself, as a cluster caching the model bucket, read through libnfs (nfsread.c; the
kernel NFS client cannot be used on this host).

One repetition:
  cold        a fresh cluster (`objcache cluster up ... --store s3://BUCKET/`), the first read of
              the model through node 1's gateway
  warm        a second reader, through node 2's gateway, after the first
  admin-warm  a fresh cluster; `objcache admin warm /PREFIX` (timed, reported apart), then a
              read through node 1
Cluster start-up is not counted (as a FUSE tool's mount is not). The nodes get the S3 keys in
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Every CLI call is in one function below
(cluster_up_argv, admin_warm_argv), to be matched with the CLI as it lands.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    Figure,
    PeerError,
    S3Target,
    fresh_dir,
    peak_rss_kib,
    run,
)
from .reader import NfsSource

REPO = Path(__file__).resolve().parents[2]
NFSREAD_SOURCE = Path(__file__).with_name("nfsread.c")
PORTS_PER_NODE = 3  # the launcher's layout: NFS P+3(i-1), RPC +1, metrics +2


def cluster_up_argv(s3: S3Target, root: Path, nodes: int, base_port: int | str) -> list[str]:
    return [sys.executable, "-m", "server.cli", "cluster", "up", "--nodes", str(nodes),
            "--base-port", str(base_port), "--data-dir", str(root), "--json",
            "--store", f"s3://{s3.bucket}/", "--s3-endpoint", s3.endpoint]


def admin_warm_argv(root: Path, node_id: int, rpc: str, path: str) -> list[str]:
    # Any node's RPC address runs the job; --json prints one status line at the end.
    return [sys.executable, "-m", "server.cli", "admin", "warm", path, "--node",
            f"{node_id}={rpc}", "--admin-token-file", str(root / "admin-token"), "--json",
            "--progress", "none"]


def cluster_down_argv(root: Path) -> list[str]:
    return [sys.executable, "-m", "server.cli", "cluster", "down", "--data-dir", str(root)]


def build_nfsread() -> Path:
    """Compile nfsread.c against libnfs and libcrypto (cached by source hash); return the path."""
    digest = hashlib.sha256(NFSREAD_SOURCE.read_bytes()).hexdigest()[:12]
    exe = Path(tempfile.gettempdir()) / f"objcache-nfsread-{digest}"
    if not exe.exists():
        headers = ("/usr/include/nfsc/libnfs.h", "/usr/include/openssl/evp.h")
        if not all(Path(h).exists() for h in headers) or not shutil.which("gcc"):
            raise PeerError("nfsread needs gcc, libnfs-dev and libssl-dev (OBJCACHE_BENCH_DEPS=1 "
                            ".ci/setup-host installs them)")
        tmp = exe.with_suffix(f".tmp{os.getpid()}")
        run(["gcc", "-O2", "-Wall", "-o", str(tmp), str(NFSREAD_SOURCE), "-lnfs", "-lcrypto"],
            timeout_s=120)
        tmp.replace(exe)
    return exe


class Objcache:
    name = "objcache"
    modes = ("cold", "warm", "admin-warm")
    cold_means = "first read through node 1 of a fresh cluster over the bucket"
    warm_means = "a second reader on another node (node 2), after the first"
    admin_warm_means = ("fresh cluster, `objcache admin warm` (timed apart), then a read "
                        "through node 1")

    def __init__(self, s3: S3Target, work: Path, nodes: int, base_port_fn) -> None:
        self.s3, self.work, self.n = s3, work, nodes
        self.base_port_fn = base_port_fn  # (n) -> a base with n free ports
        self.root: Path | None = None
        self.nodes: dict[int, dict] = {}
        self.env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY,
                        AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION=REGION)
        self.rss_kib: dict[str, int | None] = {}

    def version(self) -> str:
        res = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True)
        return f"objcache {res.stdout.strip() or '?'}"

    def _cli(self, argv: list[str], timeout_s: float = 300.0) -> str:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                             cwd=REPO, env=self.env, stdin=subprocess.DEVNULL)
        if res.returncode != 0:  # the last lines say why (argparse's error is the last one)
            tail = (res.stderr.strip() or res.stdout.strip()).splitlines()[-3:]
            raise PeerError(f"`objcache {' '.join(argv[3:5])}` exited {res.returncode}: "
                            + " / ".join(tail)[-1200:])
        return res.stdout

    def start(self, tag: str) -> None:
        self.root = fresh_dir(self.work / f"cluster-{tag}")  # `up` on old data would restart
        base_port = self.base_port_fn(PORTS_PER_NODE * self.n)
        self.nodes = {}
        out = self._cli(cluster_up_argv(self.s3, self.root, self.n, base_port))
        self.nodes = {row["node_id"]: row for row in json.loads(out)["nodes"]}

    def stop(self) -> None:
        if self.root is not None and (self.root / "cluster.json").exists():
            for i, node in self.nodes.items():
                rss = peak_rss_kib(node["pid"])
                if rss is not None:
                    self.rss_kib[f"node{i}"] = max(rss, self.rss_kib.get(f"node{i}") or 0)
            self._cli(cluster_down_argv(self.root), timeout_s=120)
        self.root = None

    def source(self, node_id: int) -> NfsSource:
        port = int(self.nodes[node_id]["nfs"].rsplit(":", 1)[1])
        url = f"nfs://127.0.0.1/?version=3&nfsport={port}&mountport={port}"
        return NfsSource(build_nfsread(), url, "/" + self.s3.prefix.rstrip("/"))

    def cold(self, read) -> Figure:
        r = read(self.source(1))
        return Figure(r.seconds, r.seconds, 0.0, r.bytes)

    def warm(self, read) -> Figure:
        r = read(self.source(2 if self.n > 1 else 1))
        return Figure(r.seconds, r.seconds, 0.0, r.bytes)

    def admin_warm(self, read) -> Figure:
        assert self.root is not None
        t0 = time.perf_counter()
        out = self._cli(admin_warm_argv(self.root, 1, self.nodes[1]["rpc"],
                                        "/" + self.s3.prefix.rstrip("/")), timeout_s=3600)
        warm_s = time.perf_counter() - t0
        status = json.loads(out.strip().splitlines()[-1])
        r = read(self.source(1))
        return Figure(r.seconds, r.seconds, 0.0, r.bytes,
                      (("admin_warm_s", round(warm_s, 3)), ("warmed_files", status["files"]),
                       ("warmed_bytes", status["done_bytes"])))

    def one_rep(self, read) -> dict[str, Figure | PeerError]:
        """cold and warm on one cluster, admin-warm on another; a failure of the last one
        (say, `admin warm` not there yet) leaves the first two standing."""
        self.work.mkdir(parents=True, exist_ok=True)
        figs: dict[str, Figure | PeerError] = {}
        try:
            self.start("a")
            figs["cold"] = self.cold(read)
            figs["warm"] = self.warm(read)
        finally:
            self.stop()
        try:
            self.start("b")
            figs["admin-warm"] = self.admin_warm(read)
        except PeerError as e:
            figs["admin-warm"] = e
        finally:
            self.stop()
        return figs

    def describe(self) -> dict:
        return {"cold": self.cold_means, "warm": self.warm_means,
                "admin-warm": self.admin_warm_means,
                "command": ["objcache", *cluster_up_argv(self.s3, Path("DIR"), self.n, "P")[3:]],
                "admin_warm_command": ["objcache", *admin_warm_argv(Path("DIR"), 1, "HOST:PORT",
                                                                    "/PATH")[3:]],
                "peak_rss_kib": self.rss_kib}
