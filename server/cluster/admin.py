"""`objcache admin ...`: operator commands against a running cluster over the node RPC plane.

The admin client is a plane node of its own (a random id above every node id), authenticated
with the cluster secret like any node. It asks one node for the NodeList, then talks to each
group's leader through a GroupRouter, as a gateway would.

Exit codes: 0 done and healthy, 1 the check found problems, 2 usage or the cluster could not be
reached. drain: 0 every change is in the bucket, verified, and every node is shutting down; 1 the
drain failed (each path not in the bucket is listed with why; writes are unfenced again and the
nodes keep running with their data); 2 as above.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from pathlib import Path

import trio
from tqdm import tqdm

from server.cluster import admin_ring
from server.cluster import fsck as cluster_fsck
from server.cluster import protocol as p
from server.cluster.bucket_admin import (
    EvictRequest,
    FlushRequest,
    JobRequest,
    JobStatus,
    WarmRequest,
)
from server.cluster.drain import DrainPoll, DrainRequest, DrainStatus
from server.cluster.nodelist import NodeList
from server.cluster.router import GroupRouter
from server.cluster.status import NodeStatus, StatusRequest
from server.rpc.frames import RpcError
from server.rpc.plane import (
    ADMIN_ID_BASE,
    RpcConfig,
    RpcPlane,
)

DRAIN_POLL_S = 0.1  # the least time between drain polls (the node holds each up to that)
MIN_SECRET_BYTES = 16  # RpcConfig's floor for the cluster secret and the admin token


def add_parser(sub: argparse._SubParsersAction) -> None:
    p_admin = sub.add_parser("admin", help="operate a running cluster")
    admin_sub = p_admin.add_subparsers(dest="admin_command", required=True)
    f = command(admin_sub, "fsck", "check the namespace invariants across the cluster")
    f.add_argument("--vnodes", type=int, default=64, help="the cluster's cluster.vnodes")
    f.add_argument("--settle", type=float, default=10.0,
                   help="seconds to recheck what looks wrong (transactions in flight, changes "
                   "between the groups' scans) before reporting it")
    command(admin_sub, "status", "nodes, groups, leaders, ring version, dirty files and bytes, "
            "cache use")
    command(admin_sub, "drain", "scale to zero: write every change back, verify the bucket, "
            "then stop every node", node="it coordinates the drain", progress=True)
    admin_ring.add_parsers(admin_sub, command)
    for name, text in (("warm", "read a tree from the bucket into the cache ahead of use"),
                       ("evict", "drop the clean cached copies of a tree's files"),
                       ("flush", "write a tree's changes back to the bucket now")):
        w = command(admin_sub, name, text, node="it runs the job", progress=True)
        w.add_argument("path", nargs="?" if name == "flush" else None, default="/",
                       help="a path in the namespace (/ is the root)")


def command(admin_sub: argparse._SubParsersAction, name: str, text: str, *, node: str = "",
            progress: bool = False) -> argparse.ArgumentParser:
    """An admin subcommand with what every one takes: the node to ask, the credentials,
    --json (and --progress for the long ones)."""
    parser = admin_sub.add_parser(name, help=text)
    parser.add_argument("--node", required=True, metavar="ID=HOST:PORT",
                        help="any node's id and RPC address" + (f" ({node})" if node else ""))
    _credentials(parser)
    parser.add_argument("--json", action="store_true", help="one JSON document at the end")
    if progress:
        parser.add_argument("--progress", choices=["auto", "bar", "lines", "none"],
                            default="auto", help="auto: a bar on a terminal, plain lines "
                            "otherwise")
    return parser


def _credentials(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--admin-token-file", type=Path,
                     help="the cluster's admin token (cluster.admin_token_file)")
    who.add_argument("--cluster-secret-file", type=Path,
                     help="the cluster secret (when no admin token is configured)")


def run(args: argparse.Namespace) -> int:
    try:
        node_id_s, _, addr = args.node.partition("=")
        node_id = int(node_id_s)
        if not addr:
            raise ValueError
    except ValueError:
        print(f"objcache admin: --node: expected ID=HOST:PORT, got {args.node!r}",
              file=sys.stderr)
        return 2
    path = args.admin_token_file or args.cluster_secret_file
    try:
        secret = path.read_bytes().strip()
    except OSError as e:
        print(f"objcache admin: {path}: {e.strerror}", file=sys.stderr)
        return 2
    if len(secret) < MIN_SECRET_BYTES:  # what it holds is not shown: it may be a secret
        print(f"objcache admin: {path}: under {MIN_SECRET_BYTES} bytes: not a cluster secret "
              "or admin token", file=sys.stderr)
        return 2
    command = {"fsck": _fsck, "status": _status, "drain": _drain, "join": _join,
               "leave": _leave}.get(args.admin_command, _job)
    try:
        return trio.run(command, node_id, addr, secret, args)
    except* (RpcError, p.Unavailable, p.RingChanged) as group:
        # trio's nurseries wrap errors in groups; one line per failure is what a user needs.
        for e in group.exceptions:
            print(f"objcache admin: cluster unreachable: {e}", file=sys.stderr)
    return 2


async def _status(node_id: int, addr: str, secret: bytes, args: argparse.Namespace) -> int:
    """Ask every node of the cluster for its status; exit 0 when every node answered and
    every group has a leader, 1 otherwise."""
    plane = _admin_plane(node_id, addr, secret)
    rows: dict[int, NodeStatus | str] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(plane.run)
        nodelist = await _learn_nodes(plane, node_id)

        async def ask(nid: int) -> None:
            try:
                rows[nid] = await plane.call(nid, StatusRequest(), 10.0)
            except RpcError as e:
                rows[nid] = f"unreachable: {e}"

        async with trio.open_nursery() as asks:
            for n in nodelist.nodes:
                asks.start_soon(ask, n.node_id)
        nursery.cancel_scope.cancel()
    groups = {n.group for n in nodelist.nodes}
    led = {r.group for r in rows.values() if isinstance(r, NodeStatus) and r.leader}
    ok = all(isinstance(r, NodeStatus) for r in rows.values()) and groups <= led
    if args.json:
        print(json.dumps({
            "ok": ok, "ring_version": nodelist.version,
            "nodes": [{"node_id": nid, "rpc": n.rpc, "nfs": n.nfs,
                       **({"error": r} if isinstance(r, str) else _status_dict(r))}
                      for n in nodelist.nodes for nid in [n.node_id]
                      for r in [rows[nid]]]}))
        return 0 if ok else 1
    print(f"cluster: {len(nodelist.nodes)} nodes, {len(groups)} groups, ring version "
          f"{nodelist.version}" + ("" if ok else "  (NOT HEALTHY)"))
    print(f"{'node':>5} {'group':>5} {'role':<10} {'leader':>6} {'term':>5} {'commit':>8} "
          f"{'applied':>8} {'ring':>4} {'dirty':>6} {'dirty MiB':>9} {'cache MiB':>9}")
    for n in nodelist.nodes:
        r = rows[n.node_id]
        if isinstance(r, str):
            print(f"{n.node_id:>5} {n.group:>5} {r}")
            continue
        cache = dict(r.cache)
        used = (cache.get("clean_bytes", 0) + cache.get("pinned_bytes", 0)) / 2**20
        print(f"{r.node_id:>5} {r.group:>5} {r.role:<10} {r.leader:>6} {r.term:>5} "
              f"{r.commit:>8} {r.applied:>8} {r.ring_version:>4} {r.dirty_files:>6} "
              f"{r.dirty_bytes / 2**20:>9.1f} {used:>9.1f}")
    stores = sorted({u for r in rows.values() if isinstance(r, NodeStatus) for u in r.stores})
    for url in stores:
        print(f"bucket: {url}")
    return 0 if ok else 1


def _status_dict(r: NodeStatus) -> dict:
    return {"group": r.group, "role": r.role, "leader": r.leader, "term": r.term,
            "commit": r.commit, "applied": r.applied, "log_first": r.log_first,
            "ring_version": r.ring_version, "dirty_files": r.dirty_files,
            "dirty_bytes": r.dirty_bytes, "cache": dict(r.cache), "stores": list(r.stores)}


async def _learn_nodes(plane: RpcPlane, node_id: int) -> NodeList:
    """The cluster's NodeList from the node given, and every node added as a peer."""
    reply = await plane.call(node_id, p.GetNodeList(), 10.0)
    nodelist = NodeList.decode(reply.nodelist)
    for n in nodelist.nodes:
        if n.node_id != node_id:
            plane.add_peer(n.node_id, f"ws://{n.rpc}/")
    return nodelist


def _admin_plane(node_id: int, addr: str, secret: bytes) -> RpcPlane:
    me = ADMIN_ID_BASE + secrets.randbits(20)
    plane = RpcPlane(RpcConfig(node_id=me, cluster_secret=secret, host="127.0.0.1", port=0))
    plane.add_peer(node_id, f"ws://{addr}/")
    return plane


async def _job(node_id: int, addr: str, secret: bytes, args: argparse.Namespace) -> int:
    """warm / evict: start the job on the node, follow it to its end."""
    plane = _admin_plane(node_id, addr, secret)
    kinds = {"warm": WarmRequest, "evict": EvictRequest, "flush": FlushRequest}
    start = kinds[args.admin_command](args.path)
    async with trio.open_nursery() as nursery:
        await nursery.start(plane.run)
        status = await plane.call(node_id, start, 30.0)
        show = Progress(args.admin_command, args.progress)
        while not status.finished:
            show.update(status)
            await trio.sleep(0.2)
            status = await plane.call(node_id, JobRequest(status.job_id), 30.0)
        show.close(status)
        nursery.cancel_scope.cancel()
    if args.json:
        print(json.dumps({"ok": not status.errors, "files": status.files,
                          "total_bytes": status.total_bytes, "done_bytes": status.done_bytes,
                          "errors": list(status.errors)}))
    else:
        if args.admin_command == "flush":
            print(f"flush {args.path}: {status.done_bytes} files written or deleted"
                  + (f", {len(status.errors)} errors" if status.errors else ""))
        else:
            verb = "cached" if args.admin_command == "warm" else "freed"
            print(f"{args.admin_command} {args.path}: {status.files} files, "
                  f"{status.done_bytes / 2**20:.1f} MiB {verb}"
                  + (f", {len(status.errors)} errors" if status.errors else ""))
        for line in status.errors:
            print(f"  {line}")
    return 0 if not status.errors else 1


class Progress:
    """A tqdm bar on a terminal, plain lines (one a second at most) otherwise."""

    def __init__(self, kind: str, mode: str) -> None:
        self.kind = kind
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode
        self.bar: tqdm | None = None
        self._last = 0.0

    def update(self, s: JobStatus) -> None:
        if self.mode == "bar":
            if self.bar is None and s.walked:
                self.bar = tqdm(total=s.total_bytes, unit="B", unit_scale=True,
                                desc=f"{self.kind} {s.path}", file=sys.stderr)
            if self.bar is not None:
                self.bar.update(s.done_bytes - self.bar.n)
        elif self.mode == "lines" and time.monotonic() - self._last >= 1.0:
            self._last = time.monotonic()
            stage = "walking" if not s.walked else f"{s.done_bytes}/{s.total_bytes} bytes"
            print(f"{self.kind} {s.path}: {s.files} files, {stage}", file=sys.stderr,
                  flush=True)

    def close(self, s: JobStatus) -> None:
        self.update(s)
        if self.bar is not None:
            self.bar.close()


async def _leave(node_id: int, addr: str, secret: bytes, args: argparse.Namespace) -> int:
    return await admin_ring.leave(_admin_plane(node_id, addr, secret), node_id, args)


async def _join(node_id: int, addr: str, secret: bytes, args: argparse.Namespace) -> int:
    return await admin_ring.join(lambda i, a: _admin_plane(i, a, secret), addr, args)


async def _drain(node_id: int, addr: str, secret: bytes, args: argparse.Namespace) -> int:
    """Start the drain on the node, follow it to its end (server/cluster/drain.py)."""
    plane = _admin_plane(node_id, addr, secret)
    async with trio.open_nursery() as nursery:
        await nursery.start(plane.run)
        status = await plane.call(node_id, DrainRequest(), 30.0)
        show = DrainProgress(args.progress)
        while not status.finished:
            show.update(status)
            asked = trio.current_time()
            status = await plane.call(node_id, DrainPoll(status.drain_id), 30.0)
            if not status.finished:  # the node holds a poll until the end (or 0.1 s); one
                await trio.sleep_until(asked + DRAIN_POLL_S)  # that does not: paced
        show.close(status)
        nursery.cancel_scope.cancel()
    if args.json:
        print(json.dumps({"ok": status.ok, "drain_id": status.drain_id, "phase": status.phase,
                          "flushed": status.flushed, "verified": status.verified,
                          "problem_count": status.problem_count,
                          "phase_s": dict(status.timings),
                          "problems": [{"path": path, "why": why}
                                       for path, why in status.problems]}))
    elif status.ok:
        print(f"drain: {status.flushed} files written back or deleted, {status.verified} "
              "objects verified in the bucket; every node is shutting down")
    else:
        print(f"drain FAILED ({status.problem_count} problems): writes are unfenced again and "
              "every node keeps running with its data")
        for path, why in status.problems:
            print(f"  {path or '(drain)'}: {why}")
        if status.problem_count > len(status.problems):
            print(f"  ... and {status.problem_count - len(status.problems)} more")
    return 0 if status.ok else 1


class DrainProgress:
    """A tqdm bar per phase on a terminal, plain lines (one a second at most) otherwise."""

    def __init__(self, mode: str) -> None:
        self.mode = "bar" if mode == "auto" and sys.stderr.isatty() else (
            "lines" if mode == "auto" else mode)
        self.bar: tqdm | None = None
        self.phase = ""
        self._last = 0.0

    def update(self, s: DrainStatus) -> None:
        done, total = ((s.verified, s.to_verify) if s.phase == "verifying" else
                       (s.flushed, s.to_flush))
        if self.mode == "bar":
            if s.phase != self.phase:
                self._close_bar(passed=s.phase != "failed")
                if s.phase in ("flushing", "verifying"):
                    self.bar = tqdm(total=total, unit="file", desc=f"drain: {s.phase}",
                                    file=sys.stderr)
            if self.bar is not None:
                self.bar.total = total
                self.bar.update(done - self.bar.n)
        elif self.mode == "lines" and (time.monotonic() - self._last >= 1.0
                                       or s.phase != self.phase):
            self._last = time.monotonic()
            print(f"drain: {s.phase} {done}/{total}", file=sys.stderr, flush=True)
        self.phase = s.phase

    def _close_bar(self, *, passed: bool) -> None:
        """The bar of the phase that ended: full if it passed (the last poll may have come
        before its last files)."""
        if self.bar is None:
            return
        if passed and self.bar.total is not None:
            self.bar.update(self.bar.total - self.bar.n)
        self.bar.close()
        self.bar = None

    def close(self, s: DrainStatus) -> None:
        self.update(s)
        self._close_bar(passed=s.ok)


async def _fsck(node_id: int, addr: str, secret: bytes, args: argparse.Namespace) -> int:
    plane = _admin_plane(node_id, addr, secret)
    me = plane.config.node_id
    async with trio.open_nursery() as nursery:
        await nursery.start(plane.run)
        nodelist = await _learn_nodes(plane, node_id)
        router = GroupRouter(plane, me, nodelist, None, vnodes=args.vnodes,
                             request_timeout_s=30.0)
        await nursery.start(router.run)
        problems, per_group = await cluster_fsck.fsck(router, args.vnodes,
                                                      settle_s=args.settle)
        nursery.cancel_scope.cancel()
    info = cluster_fsck.summary(per_group)
    if args.json:
        print(json.dumps({"ok": not problems, "problems": problems, **info}))
    else:
        spread = ", ".join(f"{g}: {n}" for g, n in info["inodes_per_group"].items())
        print(f"fsck: {info['groups']} groups, {info['inodes']} inodes ({spread}), "
              f"{info['entries']} entries: " + ("consistent" if not problems else
                                                 f"{len(problems)} problems"))
        for line in problems:
            print(f"  {line}")
    return 0 if not problems else 1
