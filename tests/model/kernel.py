"""The kernel path's driver: sequences in one guest boot, compared with the local model, and a
failing one shrunk by ddmin with one boot per round (guest.py runs, shrink.py shrinks)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from model.check import run_local
from model.guest import run_in_guest
from model.ops import Op, describe_diff, gen_ops, script
from model.shrink import ddmin, prefix_and_hints


@dataclass
class KernelTarget:
    """Where the guest mounts: node `port` at /mnt (client 0), `other_port` at /mnt2 (client 1;
    None: one mount serves both clients)."""

    port: int
    other_port: int | None
    workdir: Path
    boots: int = 0
    reports: dict[tuple, str] = field(default_factory=dict)

    def diffs(self, batches: dict[str, list[Op]]) -> dict[str, str]:
        """One boot: every sequence's difference from the local model (absent: none)."""
        self.boots += 1
        run = run_in_guest(batches, port=self.port, other_port=self.other_port,
                           workdir=self.workdir / f"boot{self.boots}",
                           run_dir=f"model-{self.workdir.name}-{self.boots}")
        out = {}
        for bid, ops in batches.items():
            want, alts, tree = run_local(ops)
            got = run.results[bid]
            diff = describe_diff(ops, want, got, tree, run.trees[bid], alts)
            if diff is None and bid not in run.done:
                diff = f"the guest did not finish sequence {bid}"
            if diff:
                out[bid] = diff
                self.reports[tuple(ops)] = (f"{diff}\n--- the sequence ({len(ops)} ops) ---\n"
                                            f"{script(ops, want, got)}")
        return out

    def fails_batch(self, candidates: Sequence[list[Op]]) -> list[bool]:
        diffs = self.diffs({f"c{i}": c for i, c in enumerate(candidates)})
        return [f"c{i}" in diffs for i in range(len(candidates))]


BOOT_OPS = 4000  # ops per guest boot (about 2 min under TCG; nfsvm's timeout is 10)


def kernel_check(target: KernelTarget, *, seqs: int, ops: int, seed: int, clients: int,
                 shrink_boots: int) -> str | None:
    """None if every sequence agrees; else the report of the shortest failing one found."""
    batches = {str(i): gen_ops(random.Random(seed * 100_003 + i), ops, clients)
               for i in range(seqs)}
    per_boot = max(1, BOOT_OPS // max(ops, 1))
    ids = list(batches)
    diffs: dict[str, str] = {}
    for start in range(0, len(ids), per_boot):
        diffs.update(target.diffs({b: batches[b] for b in ids[start:start + per_boot]}))
        if diffs:
            break  # shrink what failed; the rest would only cost boots
    if not diffs:
        return None
    bid = min(diffs, key=int)
    first = batches[bid]
    start, hints = prefix_and_hints(first, diffs[bid], run_local(first)[0])
    shrunk = ddmin(start, target.fails_batch, max_rounds=shrink_boots, hints=hints)
    how = ("1-minimal" if shrunk.minimal else f"not minimal: stopped after {shrunk.rounds} boots")
    return (f"{len(diffs)} of {seqs} sequences differ (seed {seed}); the first, "
            f"{len(first)} ops, shrunk by ddmin to {len(shrunk.ops)} ops ({how}, "
            f"{shrunk.rounds} boots, {shrunk.candidates} candidates):\n"
            f"{target.reports.get(tuple(shrunk.ops), '(no report)')}\n"
            f"--- the unshrunk sequence ---\n{target.reports[tuple(first)]}")
