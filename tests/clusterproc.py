"""A local objcache cluster for tests and benchmarks: `objcache cluster up/down` (the real CLI,
separate node processes on loopback), plus what only tests do to it: kill -9 a node, restart
it from its data directory, and run `objcache admin fsck`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from serverproc import REPO, _join, free_port, nfs_url, wait_for

UP_TIMEOUT_S = 180.0
_LEADS = re.compile(r"group (\d+): node (\d+) leads in term (\d+)")


class ClusterError(RuntimeError):
    pass


def _cli(*args: str, timeout_s: float = UP_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True,
                          text=True, timeout=timeout_s, cwd=REPO, stdin=subprocess.DEVNULL)


class LocalCluster:
    def __init__(self, root: Path, nodes: int = 3, replicas: int = 1,
                 up_args: tuple[str, ...] = ()) -> None:
        self.root = Path(root)
        self.n = nodes
        self.replicas = replicas
        self.up_args = up_args  # more `cluster up` options (--store, --flush-delay, ...)
        self.nodes: dict[int, dict] = {}

    # -- life cycle -------------------------------------------------------------------------

    def up(self) -> LocalCluster:
        base = free_port(count=3 * self.n)
        res = _cli("cluster", "up", "--nodes", str(self.n), "--replicas", str(self.replicas),
                   "--base-port", str(base), "--data-dir", str(self.root), "--json",
                   *self.up_args)
        if res.returncode != 0:
            raise ClusterError(f"cluster up exited {res.returncode}:\n{res.stdout}\n"
                               f"{res.stderr[-5000:]}")
        self.nodes = {row["node_id"]: row for row in json.loads(res.stdout)["nodes"]}
        return self

    def down(self, *, check: bool = True) -> None:
        res = _cli("cluster", "down", "--data-dir", str(self.root), timeout_s=120)
        if check and res.returncode != 0:
            raise ClusterError(f"cluster down exited {res.returncode}:\n{res.stdout}\n"
                               f"{res.stderr}\n{self.log_tails()}")

    def kill9(self, node_id: int) -> None:
        pid = self.nodes[node_id]["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not _alive(pid), timeout_s=30, what=f"node {node_id} to die")

    def restart(self, node_id: int, timeout_s: float = 120.0) -> None:
        """Start a stopped node again from its data directory and config."""
        self.wait_ready(node_id, self.start(node_id), timeout_s)

    def start(self, node_id: int) -> subprocess.Popen:
        """Start node `node_id`'s process from its config (see wait_ready)."""
        node_dir = self.root / f"n{node_id}"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        with open(node_dir / "node.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "serve", "--config",
                 str(node_dir / "node.toml")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=REPO, start_new_session=True)
        self.nodes[node_id]["pid"] = proc.pid
        self._record_pid(node_id, proc.pid)
        return proc

    def wait_ready(self, node_id: int, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
        """Until the node started as `proc` serves (its ready.json names it)."""
        node_dir = self.root / f"n{node_id}"

        def ready() -> bool:
            if proc.poll() is not None:
                raise ClusterError(f"node {node_id} exited {proc.returncode} at restart:\n"
                                   f"{self.log_tail(node_id)}")
            try:
                info = json.loads((node_dir / "ready.json").read_text())
            except (OSError, ValueError):
                return False
            return info.get("pid") == proc.pid

        wait_for(ready, timeout_s=timeout_s, what=f"node {node_id} to start")

    def add_node(self, node_id: int, *, through: int = 1, group: int = 0,
                 timeout_s: float = 180.0, wait: bool = True,
                 await_join: bool = False) -> subprocess.Popen:
        """Start node `node_id` with `--join` through node `through`: it becomes a new
        one-member group, or a replica of `group` (ringchange.py); returns once it serves NFS
        (unless not `wait`). `await_join`: without `--join`, waiting for `objcache admin
        join` (not waited for: see wait_ready)."""
        import tomllib

        from server.cluster.launcher import CONFIG_FILE, NodePlan, node_toml

        base = free_port(count=3)
        plan = NodePlan(node_id, group or node_id, base, base + 1, base + 2)
        first = tomllib.loads((self.root / f"n{through}" / CONFIG_FILE).read_text())
        sections = {k: v for k, v in first.items()
                    if k not in ("node", "nfs", "metrics", "cluster")}
        plan.dir(self.root).mkdir(parents=True)
        (plan.dir(self.root) / CONFIG_FILE).write_text(
            node_toml(plan, [plan], self.root, sections,
                      join="" if await_join else self.nodes[through]["rpc"],
                      await_join=await_join))
        self.nodes[node_id] = {"node_id": node_id, "group": plan.group, "nfs": plan.nfs,
                               "rpc": plan.rpc, "metrics": plan.metrics, "pid": 0}
        path = self.root / "cluster.json"
        raw = json.loads(path.read_text())
        node_dir = plan.dir(self.root)
        raw["nodes"].append({**self.nodes[node_id], "dir": str(node_dir),
                             "config": str(node_dir / CONFIG_FILE),
                             "log": str(node_dir / "node.log")})
        path.write_text(json.dumps(raw, indent=2) + "\n")
        proc = self.start(node_id)
        if wait and not await_join:
            self.wait_ready(node_id, proc, timeout_s)
        return proc

    def wait_exit(self, node_id: int, timeout_s: float = 120.0) -> None:
        """Until node `node_id`'s process is gone (it left the cluster, or was drained)."""
        pid = self.nodes[node_id]["pid"]
        wait_for(lambda: not _alive(pid), timeout_s=timeout_s, what=f"node {node_id} to exit")

    def _record_pid(self, node_id: int, pid: int) -> None:
        """Keep cluster.json current, so `cluster down` stops the restarted process."""
        path = self.root / "cluster.json"
        raw = json.loads(path.read_text())
        for n in raw["nodes"]:
            if n["node_id"] == node_id:
                n["pid"] = pid
        path.write_text(json.dumps(raw, indent=2) + "\n")

    # -- access -----------------------------------------------------------------------------

    def nfs_port(self, node_id: int) -> int:
        return int(self.nodes[node_id]["nfs"].rsplit(":", 1)[1])

    def url(self, node_id: int, path: str = "/") -> str:
        """libnfs URL of `path` through node_id's gateway (export "/": see serverproc._join)."""
        port = self.nfs_port(node_id)
        return nfs_url(port, port, _join("/", path))

    def export_url(self, node_id: int) -> str:
        return self.url(node_id, "/")

    def fsck(self, timeout_s: float = 120.0, settle_s: float = 10.0) -> dict:
        """`objcache admin fsck --json` through the first node that runs."""
        node_id = next(i for i, n in sorted(self.nodes.items()) if _alive(n["pid"]))
        res = _cli("admin", "fsck", "--node", f"{node_id}={self.nodes[node_id]['rpc']}",
                   "--admin-token-file", str(self.root / "admin-token"), "--json",
                   "--settle", str(settle_s), timeout_s=timeout_s)
        if res.returncode not in (0, 1):
            raise ClusterError(f"admin fsck exited {res.returncode}:\n{res.stdout}\n"
                               f"{res.stderr}")
        return json.loads(res.stdout)

    def admin(self, command: str, *args: str, node_id: int = 1,
              timeout_s: float = 300.0) -> subprocess.CompletedProcess:
        """`objcache admin COMMAND ARGS --node ... --cluster-secret-file ...` (its exit code
        is the caller's to check)."""
        return _cli("admin", command, *args, "--node", f"{node_id}={self.nodes[node_id]['rpc']}",
                    "--admin-token-file", str(self.root / "admin-token"), timeout_s=timeout_s)

    def metric(self, node_id: int, name: str, label: str = "") -> float:
        """The sum of a metric's samples on one node's /metrics (those with `label`, e.g.
        'event="gets"', if given)."""
        import urllib.request

        with urllib.request.urlopen(f"http://{self.nodes[node_id]['metrics']}/metrics") as r:
            text = r.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name) and label in line)

    def leader(self, group: int) -> int:
        """The node that most recently became leader of `group` (from the nodes' logs)."""
        best = (0, 0)  # (term, node id)
        for node_id in self.nodes:
            try:
                text = (self.root / f"n{node_id}" / "node.log").read_text(errors="replace")
            except OSError:
                continue
            for m in _LEADS.finditer(text):
                if int(m.group(1)) == group:
                    best = max(best, (int(m.group(3)), int(m.group(2))))
        if not best[1]:
            raise ClusterError(f"no leader of group {group} in the logs")
        return best[1]

    def log_tail(self, node_id: int, lines: int = 40) -> str:
        try:
            text = (self.root / f"n{node_id}" / "node.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def log_tails(self, lines: int = 25) -> str:
        return "\n".join(f"--- node {i} ---\n{self.log_tail(i, lines)}" for i in self.nodes)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"

