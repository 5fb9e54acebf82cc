"""`objcache cluster up|down`: a local cluster of separate node processes on loopback.

    objcache cluster up --nodes 3 [--replicas 1] [--base-port 21000] --data-dir DIR [--json]
    objcache cluster down --data-dir DIR

Layout of DIR: `secret` (the cluster secret, mode 0600), `n<ID>/node.toml` (each node's
config), `n<ID>/node.log` (its stdout and stderr), `n<ID>/` also its data and, while it
serves, its `ready.json` (server/cluster/ready.py), and `cluster.json` (the running nodes and
their pids; written as soon as they are started, removed by `down`).

Rules:
- Node ids are 1..N; groups are R consecutive nodes: group = (id - 1) // R + 1. Node i takes
  three consecutive ports from the base: NFS P+3(i-1), RPC P+3(i-1)+1, metrics P+3(i-1)+2.
- Each node is `python -m server.cli serve --config DIR/n<ID>/node.toml` in its own session, so
  it outlives `up` and a ^C in the terminal. `up` returns once every node wrote its ready file
  (it serves NFS and its group has a leader); if a node exits first, or the wait times out, it
  prints that node's log tail, stops the others and exits 1.
- `down` sends SIGTERM to every recorded pid that is still that node (its command line names
  its node.toml), waits (bounded), then SIGKILLs the rest with a warning. It is idempotent.
- `up` on a DIR that holds a stopped cluster restarts it on its data; a cluster of another
  shape, or one still running, is refused.
- Exit codes: 0 done; 1 a node failed to start, or had to be killed; 2 usage (bad arguments,
  busy ports, a cluster already running).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from server.cluster.nodelist import MAX_GROUP_MEMBERS
from server.cluster.ready import Ready, read_ready, remove_ready

HOST = "127.0.0.1"
DEFAULT_BASE_PORT = 21000
PORTS_PER_NODE = 3
MAX_NODES = 64
CLUSTER_FILE = "cluster.json"
SECRET_FILE = "secret"
ADMIN_TOKEN_FILE = "admin-token"  # what `objcache admin` proves (not the cluster secret)
# A local cluster serves this machine: the whole tree to loopback clients, from any port
# (user-space clients such as libnfs run unprivileged) and without root squash (this machine's
# root is the cluster's operator), as `make run` does. `cluster up --exports FILE` replaces it.
LOCAL_EXPORTS: tuple[dict[str, Any], ...] = (
    {"path": "/", "clients": ["127.0.0.0/8", "::1/128"], "insecure": True,
     "root_squash": False},
)
CONFIG_FILE = "node.toml"
LOG_FILE = "node.log"
LOG_TAIL_LINES = 30
POLL_S = 0.1
KILL_WAIT_S = 10.0
REPO_ROOT = Path(__file__).resolve().parents[2]  # so `-m server.cli` works uninstalled too


class LaunchError(Exception):
    """A usage problem found before any node started (exit code 2)."""


@dataclass(frozen=True, slots=True)
class NodePlan:
    node_id: int
    group: int
    nfs_port: int
    rpc_port: int
    metrics_port: int

    @property
    def nfs(self) -> str:
        return f"{HOST}:{self.nfs_port}"

    @property
    def rpc(self) -> str:
        return f"{HOST}:{self.rpc_port}"

    @property
    def metrics(self) -> str:
        return f"{HOST}:{self.metrics_port}"

    def dir(self, root: Path) -> Path:
        return root / f"n{self.node_id}"


def plan(nodes: int, replicas: int, base_port: int) -> list[NodePlan]:
    if not 1 <= nodes <= MAX_NODES:
        raise LaunchError(f"--nodes {nodes}: expected 1 to {MAX_NODES}")
    if not 1 <= replicas <= MAX_GROUP_MEMBERS:
        raise LaunchError(f"--replicas {replicas}: a group has 1 to {MAX_GROUP_MEMBERS} members")
    if nodes % replicas:
        raise LaunchError(f"--nodes {nodes} is not a multiple of --replicas {replicas}: "
                          f"every group has {replicas} members")
    last = base_port + PORTS_PER_NODE * nodes - 1
    if base_port < 1024 or last > 65535:
        raise LaunchError(f"--base-port {base_port}: the ports {base_port}..{last} must lie "
                          "in 1024..65535")
    out = []
    for i in range(1, nodes + 1):
        port = base_port + PORTS_PER_NODE * (i - 1)
        out.append(NodePlan(i, (i - 1) // replicas + 1, port, port + 1, port + 2))
    return out


def node_toml(node: NodePlan, nodes: list[NodePlan], root: Path,
              sections: Mapping[str, Any] | None = None, join: str = "",
              await_join: bool = False) -> str:
    """One node's config: loopback addresses, no portmapper (one port 111 per machine);
    `sections`: more TOML tables every node gets ([store], [cache]; a list of tables is an
    array of tables: "exports", LOCAL_EXPORTS when not given; "cluster": more keys of the
    [cluster] table); `join`: a running member's RPC
    address, for a node that joins as a new group (`nodes` is then itself); `await_join`: it
    waits for `objcache admin join` to name that member instead."""
    q = json.dumps  # a JSON string is a TOML basic string (and JSON lists and bools are TOML)
    peers = ", ".join(q(f"{n.node_id}={n.rpc}") for n in nodes)
    more: list[str] = []
    tables = {"exports": LOCAL_EXPORTS, **(sections or {})}
    cluster = tables.pop("cluster", {})  # more keys of this node's [cluster] table
    for name, table in sorted(tables.items()):
        for t in (table if isinstance(table, list | tuple) else [table] if table else []):
            head = f"[[{name}]]" if isinstance(table, list | tuple) else f"[{name}]"
            more += [head, *(f"{k} = {q(v)}" for k, v in sorted(t.items())), ""]
    return "\n".join([
        f"# objcache cluster up: node {node.node_id} of {len(nodes)} (group {node.group})",
        "[node]", f"data_dir = {q(str(node.dir(root)))}", "",
        "[nfs]", f"listen = {q(node.nfs)}", 'portmap_listen = "off"', "",
        "[metrics]", f"listen = {q(node.metrics)}", "",
        "[cluster]", f"node_id = {node.node_id}", f"listen = {q(node.rpc)}",
        f"peers = [{peers}]", f"group = {node.group}", *([f"join = {q(join)}"] if join else []),
        *(["await_join = true"] if await_join else []),
        f"cluster_secret_file = {q(str(root / SECRET_FILE))}",
        f"admin_token_file = {q(str(root / ADMIN_TOKEN_FILE))}",
        *(f"{k} = {q(v)}" for k, v in sorted(cluster.items())), "",
        *more,
    ])


def serve_argv(config: Path) -> list[str]:
    return [sys.executable, "-m", "server.cli", "serve", "--config", str(config)]


# ---- processes -------------------------------------------------------------------------------

_children: dict[int, subprocess.Popen[bytes]] = {}  # started by this process: reaped by it


def _is_node(pid: int, config: Path) -> bool:
    """`pid` runs and is the node started with `config` (not a later process with its pid)."""
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[0] == "Z":  # exited; its parent has not reaped it yet
        return False
    return str(config).encode() in cmdline.split(b"\0")


def _spawn(argv: list[str], log_path: Path) -> int:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    _children[proc.pid] = proc
    return proc.pid


def _exit_status(pid: int) -> str:
    child = _children.get(pid)
    if child is None or child.returncode is None:
        return "exited"
    rc = child.returncode
    return f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with code {rc}"


def stop_pids(targets: list[tuple[int, Path]], timeout_s: float, err: TextIO) -> bool:
    """SIGTERM each (pid, config) still running, wait, then SIGKILL with a warning. True if
    every one stopped on SIGTERM."""
    running = [(pid, cfg) for pid, cfg in targets if _is_node(pid, cfg)]
    for pid, _ in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    left = _wait_gone(running, timeout_s)
    for pid, cfg in left:
        print(f"objcache cluster: node pid {pid} ({cfg.parent.name}) ignored SIGTERM for "
              f"{timeout_s:.0f} s; killing it", file=err)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid, cfg in _wait_gone(left, KILL_WAIT_S):
        print(f"objcache cluster: node pid {pid} ({cfg.parent.name}) survived SIGKILL",
              file=err)
    return not left


def _wait_gone(targets: list[tuple[int, Path]], timeout_s: float) -> list[tuple[int, Path]]:
    deadline = time.monotonic() + timeout_s
    left = list(targets)
    while left:
        left = [(pid, cfg) for pid, cfg in left if _is_node(pid, cfg)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    return left


# ---- up --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    plan: NodePlan
    pid: int
    dir: Path

    @property
    def config(self) -> Path:
        return self.dir / CONFIG_FILE

    @property
    def log(self) -> Path:
        return self.dir / LOG_FILE


def up(root: Path, nodes: int, replicas: int = 1, base_port: int = DEFAULT_BASE_PORT, *,
       timeout_s: float = 120.0, as_json: bool = False, out: TextIO = sys.stdout,
       err: TextIO = sys.stderr, node_argv: Callable[[Path], list[str]] = serve_argv,
       sections: Mapping[str, Any] | None = None) -> int:
    root = root.resolve()
    try:
        layout = plan(nodes, replicas, base_port)
        _prepare(root, layout, sections)
    except LaunchError as e:
        print(f"objcache cluster up: {e}", file=err)
        return 2
    started: list[Started] = []
    try:
        for n in layout:
            pid = _spawn(node_argv(n.dir(root) / CONFIG_FILE), n.dir(root) / LOG_FILE)
            started.append(Started(n, pid, n.dir(root)))
    except OSError as e:
        print(f"objcache cluster up: cannot start node {len(started) + 1}: {e}", file=err)
        stop_pids([(s.pid, s.config) for s in started], 30.0, err)
        return 1
    _write_cluster_file(root, started)
    try:
        ready = _wait_ready(started, timeout_s, err)
    except KeyboardInterrupt:
        ready = None
    if ready is None:
        stop_pids([(s.pid, s.config) for s in started], 30.0, err)
        (root / CLUSTER_FILE).unlink(missing_ok=True)
        return 1
    _report(root, started, ready, replicas, as_json, out)
    return 0


def _prepare(root: Path, layout: list[NodePlan],
             sections: Mapping[str, Any] | None = None) -> None:
    """Check DIR and the ports, then write the secret and every node's config."""
    if (root / CLUSTER_FILE).exists():
        if any(_is_node(pid, cfg) for pid, cfg in _recorded(root)):
            raise LaunchError(f"a cluster is running in {root}; stop it first with "
                              f"`objcache cluster down --data-dir {root}`")
        (root / CLUSTER_FILE).unlink()  # left by a cluster whose nodes are all gone
    for n in layout:
        existing = n.dir(root) / CONFIG_FILE
        if existing.exists() and existing.read_text() != node_toml(n, layout, root, sections):
            raise LaunchError(f"{root} holds a cluster of another shape (see {existing}); "
                              "use another --data-dir")
    extra = sorted(p.name for p in root.glob("n*") if (p / CONFIG_FILE).exists()
                   and p.name not in {n.dir(root).name for n in layout})
    if extra:
        raise LaunchError(f"{root} holds a cluster with more nodes ({', '.join(extra)}); "
                          "use another --data-dir")
    busy = [f"{p}" for n in layout for p in (n.nfs_port, n.rpc_port, n.metrics_port)
            if not _port_free(p, udp=p == n.nfs_port)]
    if busy:
        raise LaunchError(f"ports in use: {', '.join(busy)}; choose another --base-port")
    root.mkdir(parents=True, exist_ok=True)
    _write_secret(root / SECRET_FILE)
    _write_secret(root / ADMIN_TOKEN_FILE)
    for n in layout:
        n.dir(root).mkdir(exist_ok=True)
        remove_ready(n.dir(root))  # left by a node that was killed
        (n.dir(root) / CONFIG_FILE).write_text(node_toml(n, layout, root, sections))


def _port_free(port: int, *, udp: bool) -> bool:
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            try:
                s.bind((HOST, port))
            except OSError:
                return False
    return True


def _write_secret(path: Path) -> None:
    """32 random bytes, hex, readable by this user only; an existing secret is kept."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        return
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")


def _write_cluster_file(root: Path, started: list[Started]) -> None:
    nodes = [{"node_id": s.plan.node_id, "group": s.plan.group, "pid": s.pid,
              "nfs": s.plan.nfs, "rpc": s.plan.rpc, "metrics": s.plan.metrics,
              "dir": str(s.dir), "config": str(s.config), "log": str(s.log)} for s in started]
    tmp = root / f".{CLUSTER_FILE}.tmp"
    tmp.write_text(json.dumps({"format": 1, "secret": str(root / SECRET_FILE), "nodes": nodes},
                              indent=2) + "\n")
    tmp.replace(root / CLUSTER_FILE)


def _recorded(root: Path) -> list[tuple[int, Path]]:
    """(pid, config) of every node in DIR/cluster.json."""
    try:
        raw = json.loads((root / CLUSTER_FILE).read_text())
        return [(int(n["pid"]), Path(n["config"])) for n in raw["nodes"]]
    except (ValueError, KeyError, TypeError) as e:
        raise LaunchError(f"{root / CLUSTER_FILE}: not a cluster file ({e})") from None


def _wait_ready(started: list[Started], timeout_s: float, err: TextIO) -> list[Ready] | None:
    """Every node's ready file, or None (reported on `err`) if one exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    ready: dict[int, Ready] = {}
    while len(ready) < len(started):
        for s in started:
            if s.pid in ready:
                continue
            info = _read_ready_quietly(s.dir)
            if info is not None and info.pid == s.pid:
                ready[s.pid] = info
            elif not _is_node(s.pid, s.config):
                _tell_failure(s, f"{_exit_status(s.pid)} before it was ready", err)
                return None
        if len(ready) < len(started) and time.monotonic() > deadline:
            late = [s for s in started if s.pid not in ready]
            for s in late:
                _tell_failure(s, f"was not ready after {timeout_s:.0f} s", err)
            return None
        time.sleep(POLL_S)
    return [ready[s.pid] for s in started]


def _read_ready_quietly(node_dir: Path) -> Ready | None:
    try:
        return read_ready(node_dir)
    except ValueError:
        return None  # not a file this launcher's node wrote; keep waiting for the real one


def _tell_failure(s: Started, what: str, err: TextIO) -> None:
    try:
        lines = s.log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError:
        lines = ["(no log)"]
    print(f"objcache cluster up: node {s.plan.node_id} (pid {s.pid}) {what}; "
          f"the end of {s.log}:", file=err)
    for line in lines:
        print(f"  {line}", file=err)


def mount_command(nfs: str) -> str:
    host, _, port = nfs.rpartition(":")
    return f"mount -t nfs -o vers=3,proto=tcp,port={port},mountport={port},nolock {host}:/ /mnt"


def _report(root: Path, started: list[Started], ready: list[Ready], replicas: int,
            as_json: bool, out: TextIO) -> None:
    rows = [{"node_id": r.node_id, "group": r.group, "nfs": r.nfs, "rpc": r.rpc,
             "metrics": r.metrics, "pid": r.pid, "log": str(s.log)}
            for s, r in zip(started, ready, strict=True)]
    mount = mount_command(ready[0].nfs)
    if as_json:
        json.dump({"data_dir": str(root), "nodes": rows, "mount": mount}, out, indent=2)
        out.write("\n")
        return
    groups = len(started) // replicas
    out.write(f"objcache cluster: {len(started)} nodes in {groups} group"
              f"{'s' if groups > 1 else ''} of {replicas}, data in {root}\n")
    out.write(f"{'node':>4}  {'group':>5}  {'NFS':<21}  {'RPC':<21}  {'metrics':<21}  pid\n")
    for r in rows:
        out.write(f"{r['node_id']:>4}  {r['group']:>5}  {r['nfs']:<21}  {r['rpc']:<21}  "
                  f"{r['metrics'] or '-':<21}  {r['pid']}\n")
    out.write(f"mount node 1:  {mount}\n")
    out.write(f"stop with:     objcache cluster down --data-dir {root}\n")


# ---- down ------------------------------------------------------------------------------------


def down(root: Path, *, timeout_s: float = 30.0, out: TextIO = sys.stdout,
         err: TextIO = sys.stderr) -> int:
    root = root.resolve()
    if not (root / CLUSTER_FILE).exists():
        print(f"objcache cluster down: no cluster running in {root}", file=out)
        return 0
    try:
        targets = _recorded(root)
    except LaunchError as e:
        print(f"objcache cluster down: {e}", file=err)
        return 2
    clean = stop_pids(targets, timeout_s, err)
    for _, cfg in targets:
        remove_ready(cfg.parent)  # a killed node could not remove its own
    (root / CLUSTER_FILE).unlink(missing_ok=True)
    print(f"objcache cluster down: {len(targets)} nodes stopped"
          f"{'' if clean else ' (some had to be killed)'}", file=out)
    return 0 if clean else 1


# ---- command line ----------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cluster", help="start or stop a local cluster of node processes")
    cmds = p.add_subparsers(dest="cluster_command", required=True)
    u = cmds.add_parser("up", help="start N nodes on loopback and wait until they serve")
    u.add_argument("--nodes", type=int, required=True, metavar="N")
    u.add_argument("--replicas", type=int, default=1, metavar="R",
                   help="members per group (N/R groups; default 1)")
    u.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT, metavar="P",
                   help=f"node i: NFS P+3(i-1), RPC +1, metrics +2 (default {DEFAULT_BASE_PORT})")
    u.add_argument("--data-dir", type=Path, required=True, metavar="DIR")
    u.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="how long to wait for every node to serve (default 120)")
    u.add_argument("--json", action="store_true", help="print the addresses as JSON")
    b = u.add_argument_group("the bucket (every node gets the same [store] and [cache])")
    b.add_argument("--store", metavar="URL",
                   help="file:///PATH or s3://BUCKET/PREFIX (credentials: the AWS environment)")
    b.add_argument("--s3-endpoint", metavar="URL", help="e.g. http://127.0.0.1:8333")
    b.add_argument("--cache-capacity", type=int, metavar="BYTES",
                   help="clean cached bytes per node (cache.capacity_bytes)")
    b.add_argument("--flush-delay", type=float, metavar="SECONDS",
                   help="write-back delay after a change (cache.flush_delay_s)")
    b.add_argument("--ttl", type=float, metavar="SECONDS",
                   help="revalidate listings after this (cache.ttl_s)")
    u.add_argument("--lease-s", type=float, metavar="SECONDS",
                   help="how long other nodes' gateways may answer a group's inodes from a "
                   "reply (cluster.lease_s; 0: never)")
    u.add_argument("--bulk-reads", choices=("on", "off"),
                   help="chunk bytes for other nodes' READs over plain TCP beside the plane "
                   "(cluster.bulk_reads; default on)")
    u.add_argument("--exports", type=Path, metavar="FILE",
                   help="a TOML file of [[exports]] tables every node serves (default: / to "
                   "loopback clients, insecure, no root squash)")
    d = cmds.add_parser("down", help="stop the cluster started in DIR")
    d.add_argument("--data-dir", type=Path, required=True, metavar="DIR")
    d.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long to wait after SIGTERM before SIGKILL (default 30)")


def run(args: argparse.Namespace) -> int:
    if args.cluster_command == "up":
        store = {k: v for k, v in (("url", args.store), ("s3_endpoint", args.s3_endpoint))
                 if v is not None}
        cache = {k: v for k, v in (("capacity_bytes", args.cache_capacity),
                                   ("flush_delay_s", args.flush_delay), ("ttl_s", args.ttl))
                 if v is not None}
        sections: dict[str, Any] = {"store": store, "cache": cache}
        cluster = {k: v for k, v in (
            ("lease_s", args.lease_s),
            ("bulk_reads", None if args.bulk_reads is None else args.bulk_reads == "on"))
            if v is not None}
        if cluster:
            sections["cluster"] = cluster
        if args.exports is not None:
            try:
                sections["exports"] = _read_exports(args.exports)
            except LaunchError as e:
                print(f"objcache cluster up: {e}", file=sys.stderr)
                return 2
        return up(args.data_dir, args.nodes, args.replicas, args.base_port,
                  timeout_s=args.timeout, as_json=args.json, sections=sections)
    return down(args.data_dir, timeout_s=args.timeout)


def _read_exports(path: Path) -> list[dict[str, Any]]:
    """The [[exports]] tables of `path` (each node's config checks them when it starts)."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise LaunchError(f"--exports {path}: {e}") from None
    exports = raw.get("exports")
    if set(raw) != {"exports"} or not isinstance(exports, list) or not exports:
        raise LaunchError(f"--exports {path}: expected [[exports]] tables and nothing else")
    return exports
