"""Namespace invariants across the whole cluster (`objcache admin fsck`).

Each group's leader hands out its replicated state in pages (protocol.ScanState); the union is
checked with the single-node rules (server/fs/fsck.py: entries point at live inodes of their
type, cookie index, link counts, one name per directory and its `..`, inline bytes), plus what
only a cluster can get wrong:
- every inode lives in the group the ring places it in;
- every chunk mark (keys.MATERIALIZED, in the chunk's group) belongs to an inode that exists;
- each group's inode counter equals the inodes it holds;
- no transaction is left holding locks or a prepared record, and no decision is left
  unfinished.

Clients may go on working while fsck runs. Each group's pages show one moment of its state
(state_scan.py), but the groups are scanned side by side, not at one instant: a transaction
across groups can show its half in one group and not yet in another, and a workload that just
ended may still be finishing a few transactions. So while anything looks wrong, fsck scans
again after a pause, until `settle_s` has passed; it reports only the problems every scan
found (a real fault stays put, a passing transaction does not) and the open transaction
records of the last scan.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import trio

from server.cluster import state_scan
from server.cluster.nodelist import NodeList
from server.cluster.router import GroupRouter
from server.fs import fsck as fs_fsck
from server.fs import keys
from server.fs.keys import decode_u64

PAGE = 5_000
TXN_OPEN = (b"txn/lock/", b"txn/prep/", b"txn/dec/")


async def scan_group(router: GroupRouter, group: int) -> list[tuple[bytes, bytes]]:
    """The group's state at one moment (state_scan.py)."""
    return await state_scan.scan(lambda req: router.call(group, req), page=PAGE)


async def scan_cluster(router: GroupRouter) -> dict[int, list[tuple[bytes, bytes]]]:
    """Every group's state, scanned at once so the moments they show lie close together."""
    out: dict[int, list[tuple[bytes, bytes]]] = {}

    async def one(g: int) -> None:
        out[g] = await scan_group(router, g)

    async with trio.open_nursery() as nursery:
        for g in sorted(router.nodelist.groups()):
            nursery.start_soon(one, g)
    return dict(sorted(out.items()))


def check(per_group: dict[int, list[tuple[bytes, bytes]]], nodelist: NodeList,
          vnodes: int) -> list[str]:
    """Problems in the union of the groups' states; [] when consistent (open transactions
    are reported separately by open_transactions)."""
    ring = nodelist.ring(vnodes)
    problems: list[str] = []
    merged: list[tuple[bytes, bytes]] = []
    for group, items in per_group.items():
        inodes = 0
        count = 0
        for key, value in items:
            if key.startswith(keys.INODE):
                ino = keys.parse_inode_key(key)
                inodes += 1
                owner = ring.group_of_inode(ino)
                if owner != group:
                    problems.append(f"inode {ino} is in group {group}, the ring places it in "
                                    f"group {owner}")
            if key == keys.INODE_COUNT:
                count = decode_u64(value)
            if key.startswith(keys.META):
                continue  # per-group counters: checked here, not in the union
            if key.startswith(b"fs."):
                merged.append((key, value))
        if count != inodes:  # worded to read the same in every scan while files come and go
            problems.append(f"group {group}: the inode count is off by {count - inodes:+d} "
                            "from the inodes the group holds")
    # The single-node checker also wants the counters; give it ones that hold by definition
    # (inode ids come from per-node allocators here, so "next id" has no cluster meaning).
    inos = [keys.parse_inode_key(k) for k, _ in merged if k.startswith(keys.INODE)]
    n_inodes, top = len(inos), max(inos, default=0)
    orphans = sorted({keys.parse_materialized_key(k)[0] for k, v in merged
                      if k.startswith(keys.MATERIALIZED) and decode_u64(v)} - set(inos))
    if orphans:
        problems.append(f"chunk marks of {len(orphans)} inodes that do not exist (first: "
                        f"{orphans[:5]})")
    merged += [(keys.NEXT_INO, keys.u64(top + 1)), (keys.INODE_COUNT, keys.u64(n_inodes))]
    problems += fs_fsck.check(merged)
    return problems


def open_transactions(per_group: dict[int, list[tuple[bytes, bytes]]]) -> dict[int, int]:
    """Group -> number of lock, prepared and decision records left."""
    out = {}
    for group, items in per_group.items():
        n = sum(1 for k, _ in items if k.startswith(TXN_OPEN))
        if n:
            out[group] = n
    return out


async def fsck(router: GroupRouter, vnodes: int, *, settle_s: float = 10.0,
               ) -> tuple[list[str], dict[int, list[tuple[bytes, bytes]]]]:
    """Scan and check until the cluster looks consistent or settle_s has passed; report what
    every scan found (module rules)."""
    deadline = trio.current_time() + settle_s
    persistent: set[str] | None = None
    while True:
        per_group = await scan_cluster(router)
        busy = open_transactions(per_group)
        problems = check(per_group, router.nodelist, vnodes)
        persistent = set(problems) if persistent is None else persistent & set(problems)
        if not (busy or persistent) or trio.current_time() >= deadline:
            break
        await trio.sleep(0.5)
    problems = [problem for problem in problems if problem in persistent]
    problems += [f"group {g}: {n} transaction records (locks, prepared, decisions) left open"
                 for g, n in sorted(busy.items())]
    return problems, per_group


def summary(per_group: dict[int, Iterable[tuple[bytes, bytes]]]) -> dict[str, Any]:
    """Counts of the scanned state; `inodes_per_group` shows how placement spreads it."""
    inodes = dirents = 0
    per: dict[str, int] = {}
    for g, items in sorted(per_group.items()):
        held = 0
        for k, _ in items:
            held += k.startswith(keys.INODE)
            dirents += k.startswith(keys.DIRENT)
        per[str(g)] = held  # str: the report is JSON
        inodes += held
    return {"groups": len(per_group), "inodes": inodes, "entries": dirents,
            "inodes_per_group": per}
