"""Fault campaigns: a cluster in network namespaces over SeaweedFS, NFS clients doing random
file operations, faults injected while they work, and then the checks.

    python tests/faults/campaign.py [--quick] [--seed N] [--only NAME ...] [--keep DIR]
    make faults                      # every scenario, the long way

Each scenario:
1. A fresh bucket, a FaultNet (a namespace per node), the S3 fault proxy on the bridge, the
   cluster up (NetnsCluster), the clients' directories made, the clients started.
2. For its duration, faults from its list at random moments (faultinject.py); some scenarios
   also run the stale data directory check (below).
3. Faults lifted (links healed, S3 back, ballast removed, every node running again); then the
   checks, each a failure if it does not hold:
   - the cluster serves again (every node, within a deadline);
   - every acknowledged write reads back, every acknowledged delete or rename left nothing
     behind, no name appeared that the workload never made (faultload.Client.observe);
   - `objcache admin fsck` finds the namespace consistent;
   - `objcache admin drain` succeeds, every node exits, and the bucket then holds exactly the
     tree the cluster served (which agrees with the model on every acknowledged path).
The stale data directory check: node X is killed and its data directory copied; X restarts
and the workload goes on; then X is killed again and started on the old copy. It must refuse
to serve: exit non-zero saying its data directory is older than what a peer saw. Then it is
started on its real directory again and must serve.

The report at the end: scenarios run, faults injected by kind, operations acknowledged and
not, reads checked, and every failure (with the scenario, the seed and where its logs are).
Exit status 1 if anything failed.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
for p in (HERE, HERE.parent, HERE.parent.parent):  # tests/faults, tests, the repo
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import faultinject  # noqa: E402
from faultcluster import NetnsCluster  # noqa: E402
from faultload import Client, OpLog, Stats, digest  # noqa: E402
from faultnet import FaultNet, sweep  # noqa: E402
from faultnfs import FaultNfs  # noqa: E402
from s3server import ACCESS_KEY, SECRET_KEY, SeaweedServer  # noqa: E402
from serverproc import nfs_ls  # noqa: E402
from tools.s3faultproxy import FaultProxy  # noqa: E402

RECOVER_S = 120.0  # the cluster serves again after the faults are lifted
STALE_REFUSE_S = 90.0  # a node on an old data directory exits with the reason within this


@dataclass(frozen=True)
class Scenario:
    name: str
    nodes: int
    replicas: int
    faults: tuple[str, ...]
    duration_s: float
    clients: int = 3
    stale: int = 0  # node whose data directory is replaced by an old copy (0: none)
    tmpfs_cache: tuple[tuple[int, int], ...] = ()  # (node, bytes): a small cache disk
    each_once: bool = False  # every fault once, in a random order (else random ones until
    # the duration is over)


LONG = (
    Scenario("kill9", 3, 1, ("kill9",), 90),
    Scenario("partitions", 3, 3, ("cut", "isolate_leader"), 90),
    Scenario("s3", 3, 1, ("s3_down", "s3_throttle", "s3_slow"), 90),
    Scenario("disk-full", 3, 1, ("disk_full",), 60, tmpfs_cache=((2, 8 << 20),)),
    Scenario("stale-one-member", 3, 1, (), 20, stale=2),
    Scenario("stale-replica", 3, 3, (), 20, stale=3),
    Scenario("mixed", 6, 3, ("kill9", "cut", "isolate_leader", "s3_down", "s3_throttle",
                             "s3_slow", "disk_full"), 150, clients=4,
             tmpfs_cache=((5, 8 << 20),)),
)
QUICK = (
    Scenario("quick", 3, 3, ("kill9", "isolate_leader", "disk_full", "s3_down", "s3_throttle"),
             50, stale=2, tmpfs_cache=((3, 8 << 20),), each_once=True),
)


@dataclass
class Report:
    scenarios: list[str] = field(default_factory=list)
    faults: Counter = field(default_factory=Counter)
    ops: Counter = field(default_factory=Counter)
    unacknowledged: Counter = field(default_factory=Counter)
    reads_checked: int = 0
    failures: list[str] = field(default_factory=list)
    client_crashes: list[str] = field(default_factory=list)  # the NFS client, not objcache
    seconds: float = 0.0

    def text(self) -> str:
        lines = ["", "=" * 72, "fault campaign report", "=" * 72,
                 f"scenarios run:        {len(self.scenarios)} ({', '.join(self.scenarios)})",
                 f"faults injected:      {sum(self.faults.values())} "
                 f"({', '.join(f'{k} {v}' for k, v in sorted(self.faults.items()))})",
                 f"operations acknowledged: {sum(self.ops.values())} "
                 f"({', '.join(f'{k} {v}' for k, v in sorted(self.ops.items()))})",
                 f"operations not acknowledged (errors, timeouts): "
                 f"{sum(self.unacknowledged.values())}",
                 f"reads checked against the model: {self.reads_checked}",
                 f"failures found:       {len(self.failures)}",
                 *(f"  - {f}" for f in self.failures),
                 f"client crashes (libnfs; the paths of the op under way unchecked): "
                 f"{len(self.client_crashes)}",
                 *(f"  - {f}" for f in self.client_crashes),
                 f"wall time:            {self.seconds:.0f} s", "=" * 72]
        return "\n".join(lines)


class Run:
    """One scenario's cluster, clients and faults."""

    def __init__(self, sc: Scenario, root: Path, s3: SeaweedServer, seed: int,
                 report: Report) -> None:
        self.sc = sc
        self.root = root
        self.s3 = s3
        self.seed = seed
        self.rng = random.Random(seed)
        self.report = report
        self.stats = Stats()
        self.bucket = f"camp-{sc.name}-{seed}".lower()
        self.net = FaultNet(sc.nodes, seed=seed)
        self.proxy: FaultProxy | None = None
        self.cluster: NetnsCluster | None = None
        self.clients: list[Client] = []
        root.mkdir(parents=True, exist_ok=True)
        self.log = OpLog(root / "ops.jsonl")
        self.failures: list[str] = []

    def fail(self, text: str) -> None:
        self.failures.append(text)
        self.note(f"FAILURE: {text}")
        print(f"  FAILURE: {text}", flush=True)

    def note(self, text: str) -> None:
        self.log.note(text)
        print(f"  [{self.sc.name}] {text}", flush=True)

    # -- set up -------------------------------------------------------------------------------

    def start(self) -> None:
        self.s3.create_bucket(self.bucket)
        self.net.create()
        self.proxy = FaultProxy(self.s3.endpoint, seed=self.seed).start(host=self.net.host_addr)
        self.cluster = NetnsCluster(
            self.root / "cluster", self.net, replicas=self.sc.replicas,
            store_url=f"s3://{self.bucket}/fs", s3_endpoint=self.proxy.endpoint,
            access=(ACCESS_KEY, SECRET_KEY), tmpfs_cache=dict(self.sc.tmpfs_cache))
        self.cluster.up()
        urls = [self.cluster.export_url(i) for i in range(1, self.sc.nodes + 1)]
        self.clients = [Client(k, self.seed * 100 + k, urls, self.log, self.stats)
                        for k in range(self.sc.clients)]
        for cl in self.clients:
            cl.setup()
        for cl in self.clients:
            cl.start()

    def restart(self, node: int) -> None:
        try:
            self.cluster.restart(node, timeout_s=RECOVER_S)
        except Exception as e:  # a node that cannot come back is a finding
            self.fail(f"node {node} did not restart: {e}")

    # -- faults ---------------------------------------------------------------------------------

    def inject(self) -> None:
        deadline = time.monotonic() + self.sc.duration_s
        if self.sc.stale:
            self.stale_check(self.sc.stale)
        order = self.rng.sample(self.sc.faults, len(self.sc.faults)) if self.sc.each_once \
            else None
        while self.sc.faults and time.monotonic() < deadline:
            if order is not None and not order:
                break
            name = order.pop() if order is not None else self.rng.choice(self.sc.faults)
            try:
                what = faultinject.FAULTS[name](self, self.rng)
            except Exception as e:
                self.fail(f"injecting {name}: {e!r}")
                self.lift()
                continue
            self.report.faults[name] += 1
            self.note(f"fault done: {what}")
            time.sleep(self.rng.uniform(0.5, 3))
        while time.monotonic() < deadline:  # no faults: the workload runs its time
            time.sleep(0.5)

    def stale_check(self, node: int) -> None:
        """Restart `node` on an old copy of its data directory: it must refuse (module doc)."""
        c = self.cluster
        d = c.root / f"n{node}"
        old, new = d.with_name(d.name + ".old"), d.with_name(d.name + ".new")
        time.sleep(3)
        c.kill9(node)
        shutil.copytree(d, old, symlinks=True)
        self.note(f"node {node}: data directory copied")
        self.restart(node)
        time.sleep(12)  # the workload goes on; the node's state moves past the copy
        c.kill9(node)
        d.rename(new)
        old.rename(d)
        (d / "ready.json").unlink(missing_ok=True)
        self.note(f"node {node}: started on the old copy of its data directory")
        proc = c.start(node)
        self.report.faults["stale_data_dir"] += 1
        try:
            code = proc.wait(STALE_REFUSE_S)
        except Exception:
            code = None
        log = c.log_tail(node, 15)
        if code is None:
            self.fail(f"node {node} started on an old copy of its data directory and kept "
                      f"running for {STALE_REFUSE_S:.0f} s (it must refuse)")
            c.kill9(node)
        elif code == 0 or "older than" not in log:
            self.fail(f"node {node} on an old data directory exited {code} without saying "
                      f"why:\n{log}")
        else:
            self.note(f"node {node} refused the old data directory (exit {code})")
        shutil.rmtree(d)
        new.rename(d)
        self.restart(node)

    def lift(self) -> None:
        """Every fault off, every node running."""
        self.net.heal_all()
        if self.proxy is not None:
            self.proxy.delay_s = 0.0
            self.proxy.set_rates(slowdown=0.0, reset=0.0, reset_after=0.0, stall=0.0)
        for node, _ in self.sc.tmpfs_cache:
            (self.cluster.root / f"n{node}" / "chunks" / "ballast").unlink(missing_ok=True)
        for node in range(1, self.sc.nodes + 1):
            if not self.cluster.alive(node):
                self.note(f"node {node} is down after the faults; restarting it")
                self.restart(node)

    # -- checks ---------------------------------------------------------------------------------

    def check(self) -> None:
        for cl in self.clients:
            cl.stop.set()
        for cl in self.clients:
            cl.finish(90)
            if cl.crashed:
                self.note(cl.crashed)
                self.report.client_crashes.append(f"[{self.sc.name} seed {self.seed}] "
                                                  f"{cl.crashed}")
        self.lift()
        tree = self.observe()
        if tree is None:
            return
        fsck = self.cluster.fsck()
        if not fsck.get("ok"):
            self.fail(f"fsck: {fsck.get('problems')}")
        self.drain_and_compare(tree)

    def observe(self) -> dict[str, bytes] | None:
        """The served tree (checked against the model), once every node serves again."""
        deadline = time.monotonic() + RECOVER_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            failures: list[str] = []
            try:
                tree: dict[str, bytes] = {}
                for node in range(1, self.sc.nodes + 1):  # every node serves
                    FaultNfs(self.cluster.export_url(node), timeout_ms=10_000).close()
                node = self.rng.randrange(1, self.sc.nodes + 1)
                nfs = FaultNfs(self.cluster.export_url(node))
                try:
                    for cl in self.clients:
                        part = cl.observe(nfs, lambda d, n=node: self.listed(n, d), failures)
                        tree.update({f"c{cl.k}/{k}": v for k, v in part.items()})
                finally:
                    nfs.close()
            except (OSError, AssertionError) as e:
                last = e
                time.sleep(1)
                continue
            for f in failures:
                self.fail(f)
            return tree
        self.fail(f"the cluster did not serve again within {RECOVER_S:.0f} s: {last}")
        return None

    def listed(self, node: int, directory: str) -> set[str]:
        return {e.name for e in nfs_ls(self.cluster.url(node, directory), timeout_s=30)}

    def drain_and_compare(self, tree: dict[str, bytes]) -> None:
        c = self.cluster
        node = c.running()[0]
        res = c.admin("drain", "--json", node_id=node, timeout_s=300)
        if res.returncode != 0:
            self.fail(f"drain exited {res.returncode}: {res.stdout[-1500:]} {res.stderr[-800:]}")
            return
        for i in range(1, self.sc.nodes + 1):
            try:
                c.wait_exit(i, timeout_s=60)
            except Exception:
                self.fail(f"node {i} still runs after the drain")
        s3 = self.s3.admin_client()
        held: dict[str, bytes] = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                 Prefix="fs/"):
            for o in page.get("Contents", []):
                key = o["Key"][3:]
                if not key.endswith("/"):
                    held[key] = s3.get_object(Bucket=self.bucket, Key=o["Key"])["Body"].read()
        for key in sorted(set(held) | set(tree)):
            if held.get(key) != tree.get(key):
                h, t = held.get(key), tree.get(key)
                self.fail(f"bucket after drain: {key}: "
                          f"{'missing' if h is None else f'{len(h)} bytes {digest(h)}'}; "
                          f"served {'nothing' if t is None else f'{len(t)} bytes {digest(t)}'}")
        self.note(f"bucket holds {len(held)} files, as served")

    # -- the whole scenario ---------------------------------------------------------------------

    def run(self) -> None:
        t0 = time.monotonic()
        print(f"scenario {self.sc.name} (seed {self.seed}, {self.sc.nodes} nodes, "
              f"groups of {self.sc.replicas}, faults {', '.join(self.sc.faults) or 'none'}"
              f"{', stale data dir' if self.sc.stale else ''}); logs in {self.root}", flush=True)
        try:
            self.start()
            self.inject()
            self.check()
        except Exception as e:
            self.fail(f"the harness failed: {e!r}")
        finally:
            for cl in self.clients:
                cl.stop.set()
                if cl.proc.is_alive():
                    cl.proc.join(30)
                if cl.proc.is_alive():
                    cl.proc.kill()
            self.teardown()
        r = self.report
        r.scenarios.append(self.sc.name)
        r.ops.update(self.stats.ops)
        r.unacknowledged.update(self.stats.failed_ops)
        r.reads_checked += self.stats.reads_checked
        for f in self.stats.failures + self.failures:
            r.failures.append(f"[{self.sc.name} seed {self.seed}] {f.splitlines()[0]}")
        if self.failures or self.stats.failures:
            (self.root / "failures.txt").write_text("\n\n".join(self.stats.failures
                                                                + self.failures))
        print(f"scenario {self.sc.name}: {sum(self.stats.ops.values())} operations "
              f"acknowledged, {len(self.failures) + len(self.stats.failures)} failures, "
              f"{time.monotonic() - t0:.0f} s", flush=True)

    def teardown(self) -> None:
        if self.cluster is not None:
            self.cluster.down()
        if self.proxy is not None:
            self.proxy.stop()
        self.net.destroy()
        self.log.close()
        try:
            self.s3.delete_bucket(self.bucket)
        except Exception as e:  # the bucket's state is already checked
            print(f"  (could not remove bucket {self.bucket}: {e!r})")


def run_campaign(scenarios: tuple[Scenario, ...], root: Path, seed: int,
                 s3: SeaweedServer | None = None) -> Report:
    """Every scenario in turn (seeds seed, seed+1, ...), on `s3` or a SeaweedFS of its own."""
    sweep()
    report = Report()
    t0 = time.monotonic()
    own = s3 is None
    if s3 is None:
        (root / "seaweedfs").mkdir(parents=True, exist_ok=True)
        s3 = SeaweedServer(root / "seaweedfs").start()
    try:
        for i, sc in enumerate(scenarios):
            Run(sc, root / sc.name, s3, seed + i, report).run()
    finally:
        if own:
            s3.stop(kill=True)
        sweep()
    report.seconds = time.monotonic() - t0
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the short scenario of make test")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--only", nargs="*", default=None, metavar="NAME")
    ap.add_argument("--keep", type=Path, default=None, metavar="DIR",
                    help="put logs here and keep them (default: a temporary directory, "
                         "kept only if something failed)")
    ap.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 20)
    scenarios = QUICK if args.quick else LONG
    if args.only:
        scenarios = tuple(s for s in LONG + QUICK if s.name in args.only)
    root = args.keep or Path(tempfile.mkdtemp(prefix="objcache-faults-"))
    print(f"fault campaign: seed {seed}, logs in {root}", flush=True)
    report = run_campaign(scenarios, root, seed)
    print(report.text(), flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            "seed": seed, "scenarios": report.scenarios, "faults": dict(report.faults),
            "ops": dict(report.ops), "unacknowledged": dict(report.unacknowledged),
            "reads_checked": report.reads_checked, "failures": report.failures,
            "client_crashes": report.client_crashes,
            "seconds": round(report.seconds)}, indent=2))
    if not report.failures and args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if report.failures else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # the scenarios' finally blocks clean up


if __name__ == "__main__":
    threading.current_thread().name = "campaign"
    # SIGTERM, and SIGINT even when started in the background (where it is ignored), stop
    # the campaign through its clean-up: nodes, namespaces and tmpfs mounts.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    sys.exit(main())
