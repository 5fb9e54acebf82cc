"""One check: a sequence applied to a fresh local directory and to a fresh directory through
NFS, compared op by op and then as final trees (ops.describe_diff)."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from model.localfs import LocalApplier, local_tree
from model.ops import Op, Result, Tree, describe_diff, script


@dataclass
class Outcome:
    ops: list[Op]
    want: list[Result]
    got: list[Result]
    want_tree: Tree
    got_tree: Tree | None
    diff: str | None
    alternatives: list[set[str]]

    def report(self) -> str:
        return (f"{self.diff}\n--- the sequence ({len(self.ops)} ops) ---\n"
                f"{script(self.ops, self.want, self.got)}")


def run_local(ops: Sequence[Op]) -> tuple[list[Result], list[set[str]], Tree]:
    """The results on a fresh local directory, each op's alternative errnos, the final tree."""
    with tempfile.TemporaryDirectory(prefix="model-") as d:
        results, alts = LocalApplier(Path(d)).run_with_alternatives(ops)
        return results, alts, local_tree(Path(d))


def check(ops: Sequence[Op], applier) -> Outcome:
    """`applier` has run(ops) -> results and tree() -> Tree (of the directory run() used)."""
    ops = list(ops)
    want, alts, want_tree = run_local(ops)
    got = applier.run(ops)
    got_tree = applier.tree()
    return Outcome(ops, want, got, want_tree, got_tree,
                   describe_diff(ops, want, got, want_tree, got_tree, alts), alts)
