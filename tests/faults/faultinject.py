"""The faults a campaign injects, each a function of (Run, rng) that injects one fault, holds
it a while and lifts it, and returns a line for the report. They run in the fault thread
while the clients keep working.

- kill9: SIGKILL a random running node at a random moment, restart it from its data directory
  a moment later (it must come back and serve).
- cut: refuse every packet between two random nodes for a while (faultnet.cut).
- isolate_leader: the leader of a 3-member group, with at most one node of another group, is
  cut off from everyone else (a minority with a leader), long enough for the majority to elect
  another; then healed (the old leader must step down, not serve stale answers).
- s3_down / s3_throttle / s3_slow: the S3 proxy resets every request, answers half of them
  503 SlowDown, or holds each one 1.5 s; the write-back must retry, not lose or mark clean.
- disk_full: the cache directory (a small tmpfs) of a node is filled with a ballast file
  while clients write; then the ballast goes.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def kill9(run: Any, rng: random.Random) -> str:
    victims = run.cluster.running()
    node = rng.choice(victims)
    time.sleep(rng.uniform(0, 2))
    run.cluster.kill9(node)
    run.note(f"kill -9 node {node}")
    time.sleep(rng.uniform(0.5, 3))
    run.restart(node)
    return f"kill -9 node {node}, restarted"


def cut(run: Any, rng: random.Random) -> str:
    a, b = rng.sample(range(1, run.cluster.n + 1), 2)
    run.net.cut(a, b)
    run.note(f"cut {a}-{b}")
    time.sleep(rng.uniform(3, 8))
    run.net.heal_all()
    return f"link cut between nodes {a} and {b}"


def isolate_leader(run: Any, rng: random.Random) -> str:
    c = run.cluster
    groups = sorted({c.group_of(i) for i in range(1, c.n + 1) if len(c.members(c.group_of(i)))
                     >= 3})
    assert groups, "isolate_leader needs a group of 3 members"
    group = rng.choice(groups)
    leader = c.leader(group)
    side = {leader}
    others = [i for i in range(1, c.n + 1) if c.group_of(i) != group]
    if others and rng.random() < 0.5:
        side.add(rng.choice(others))
    rest = set(range(1, c.n + 1)) - side
    run.net.partition(side, rest)
    run.note(f"partition {sorted(side)} | {sorted(rest)} (leader {leader} of group {group})")
    time.sleep(rng.uniform(6, 10))
    run.net.heal_all()
    return f"leader {leader} of group {group} isolated with {sorted(side - {leader}) or 'no one'}"


def _s3(mode: str, **rates: float) -> Callable[[Any, random.Random], str]:
    def fault(run: Any, rng: random.Random) -> str:
        proxy = run.proxy
        if mode == "slow":
            proxy.delay_s = 1.5
        else:
            proxy.set_rates(**rates)
        run.note(f"S3 {mode}")
        time.sleep(rng.uniform(4, 8))
        proxy.delay_s = 0.0
        proxy.set_rates(slowdown=0.0, reset=0.0, reset_after=0.0, stall=0.0)
        return f"S3 {mode}"

    fault.__name__ = f"s3_{mode}"
    return fault


s3_down = _s3("down", reset=1.0)
s3_throttle = _s3("throttle", slowdown=0.5)
s3_slow = _s3("slow")


def fill(ballast: Path) -> None:
    """Write `ballast` until its file system is full (to the last block)."""
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for step in (64 << 10, 4096, 512, 1):
            block = b"\0" * step
            while True:
                try:
                    if os.write(fd, block) < step:
                        break
                except OSError:
                    break
    finally:
        os.close(fd)


def disk_full(run: Any, rng: random.Random) -> str:
    c = run.cluster
    node = rng.choice(sorted(c.tmpfs_cache))
    chunks = Path(c.root / f"n{node}" / "chunks")
    st = os.statvfs(chunks)
    ballast = chunks / "ballast"
    fill(ballast)
    run.note(f"cache of node {node} full ({st.f_blocks * st.f_frsize} bytes)")
    time.sleep(rng.uniform(5, 9))
    ballast.unlink()
    return f"cache disk of node {node} full"


FAULTS = {f.__name__: f for f in (kill9, cut, isolate_leader, s3_down, s3_throttle, s3_slow,
                                   disk_full)}
