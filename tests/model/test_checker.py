"""The checker itself, without a server: the comparator's rules, the guest executor against the
local model, and that a deliberately faulty file system is caught and its failing sequence
shrunk to the shortest one, by delta debugging (kernel path) and by hypothesis (libnfs path).

The faulty appliers below are legitimate fakes: they stand in for a server with a known bug,
so the test can tell whether the checker finds it.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, find, settings

from model.check import check, run_local
from model.guest import batch_text, parse_output, run_on_host
from model.localfs import LocalApplier, local_tree
from model.ops import Op, agree, canonical, describe_diff, gen_ops, pattern
from model.shrink import ddmin, op_lists

needs_gcc = pytest.mark.skipif(not shutil.which("gcc"), reason="gcc builds the guest executor")


class FaultyTruncate(LocalApplier):
    """A file system whose truncate grows a file one byte too far."""

    def __init__(self) -> None:
        super().__init__(Path(tempfile.mkdtemp(prefix="model-faulty-")))

    def run(self, ops):
        shutil.rmtree(self.root)
        self.root.mkdir()
        return super().run(ops)

    def tree(self):
        return local_tree(self.root)

    def op_truncate(self, op: Op) -> None:
        p = self.p(op.path)
        grow = os.path.isfile(p) and os.stat(p).st_size < op.n1
        os.truncate(p, op.n1 + 1 if grow else op.n1)


class FaultyRenameOver(FaultyTruncate):
    """A file system whose rename onto an existing file refuses (the target exists)."""

    def op_truncate(self, op: Op) -> None:
        LocalApplier.op_truncate(self, op)

    def op_rename(self, op: Op) -> None:
        if os.path.isfile(self.p(op.path)) and os.path.isfile(self.p(op.path2)):
            raise FileExistsError(17, "exists")
        super().op_rename(op)


def test_canonical_errno_pairs_follow_posix() -> None:
    assert canonical("rmdir", ("err", "EEXIST")) == ("err", "ENOTEMPTY")
    assert canonical("unlink", ("err", "EPERM")) == ("err", "EISDIR")
    assert canonical("link", ("err", "EISDIR")) == ("err", "EPERM")
    # Not a pair elsewhere: mkdir on an existing name must be EEXIST, never ENOTEMPTY.
    assert canonical("mkdir", ("err", "EEXIST")) == ("err", "EEXIST")
    op = Op("rename", "a/b", "b/a")
    assert agree(op, ("err", "ENOTDIR"), ("err", "ENOENT"), {"ENOTDIR", "ENOENT"})
    assert not agree(op, ("err", "ENOTDIR"), ("err", "ENOENT"), {"ENOTDIR"})
    assert not agree(op, ("ok", None), ("err", "ENOENT"), {"ENOENT"})
    read = Op("read", "a", n1=0, n2=10)
    assert not agree(read, ("ok", (10, 1)), ("ok", (10, 2)))


def test_alternatives_are_the_conditions_that_hold() -> None:
    # rename('a/b', 'b/a') with no a/b and b a file: ENOENT (source) and ENOTDIR (target's
    # parent) both hold, whichever a file system checks first.
    ops = [Op("create", "b", n1=0o644), Op("rename", "a/b", "b/a"),
           Op("mkdir", "d", n1=0o755), Op("link", "d", "b")]
    _, alts, _ = run_local(ops)
    assert alts[1] == {"ENOENT", "ENOTDIR"}
    assert alts[3] == {"EPERM", "EEXIST"}
    assert alts[0] == alts[2] == set()


def test_pattern_depends_on_offset_and_seed() -> None:
    assert pattern(1, 0, 100) != pattern(2, 0, 100)
    assert pattern(1, 5, 10) == pattern(1, 0, 15)[5:]
    assert pattern(1, 0, 200_000)[65_521:65_531] == pattern(1, 65_521, 10)


def test_describe_diff_reports_the_final_tree() -> None:
    ops = [Op("create", "a", n1=0o644)]
    diff = describe_diff(ops, [("ok", None)], [("ok", None)],
                         {"a": ("file", 0o644, 0, 1, 0)}, {"a": ("file", 0o644, 1, 1, 7)})
    assert diff and "final tree differs" in diff and "a: local" in diff


@needs_gcc
def test_guest_executor_matches_the_local_model(tmp_path: Path) -> None:
    """modelops.c (what the guest runs) on a local directory answers what localfs answers,
    op by op and tree by tree: the kernel path compares like with like."""
    batches = {str(i): gen_ops(random.Random(i), 60, clients=2) for i in range(60)}
    run = run_on_host(batches, tmp_path)
    assert run.done == set(batches)
    for bid, ops in batches.items():
        want, alts, tree = run_local(ops)
        assert describe_diff(ops, want, run.results[bid], tree, run.trees[bid], alts) is None


def test_parse_output_shapes() -> None:
    ops = [Op("read", "a", n1=0, n2=5), Op("stat", "d"), Op("list", "d"), Op("readlink", "l"),
           Op("rmdir", "x")]
    text = ("R 7 0 ok 5 123\nR 7 1 ok dir 755 4096 2\nR 7 2 ok y x\nR 7 3 ok zz\n"
            "R 7 4 err ENOENT\nD 7\nT 7 d dir 755 4096 2 -\nT 7 d/x file 644 5 1 99\n")
    run = parse_output(text, {"7": ops})
    assert run.results["7"] == [("ok", (5, 123)), ("ok", ("dir", 0o755, None, 2)),
                                ("ok", ("x", "y")), ("ok", "zz"), ("err", "ENOENT")]
    assert run.trees["7"] == {"d": ("dir", 0o755, None, 2, None),
                              "d/x": ("file", 0o644, 5, 1, 99)}
    assert "begin 7\nread 0 a - 0 5 0\n" in batch_text({"7": ops})


def _first_failure(applier, seeds=range(200), n=40):
    for seed in seeds:
        ops = gen_ops(random.Random(seed), n)
        if check(ops, applier).diff:
            return ops
    raise AssertionError("the faulty applier was never caught")


@pytest.mark.parametrize("faulty, kinds", [
    (FaultyTruncate, {"create", "truncate"}),
    (FaultyRenameOver, {"create", "rename"}),
])
def test_ddmin_shrinks_a_caught_fault_to_its_core(faulty, kinds) -> None:
    applier = faulty()
    failing = _first_failure(applier)
    rounds_seen = []

    def fails_batch(candidates):
        rounds_seen.append(len(candidates))
        return [check(c, applier).diff is not None for c in candidates]

    shrunk = ddmin(failing, fails_batch, max_rounds=40)
    assert shrunk.minimal and check(shrunk.ops, applier).diff
    # The core of each fault: a file, then the op that goes wrong (rename onto an existing
    # file needs two files: create, create, rename).
    assert {op.kind for op in shrunk.ops} == kinds, shrunk.ops
    assert len(shrunk.ops) <= 3, shrunk.ops
    assert shrunk.rounds == len(rounds_seen) < len(failing)


def test_hypothesis_shrinks_a_caught_fault_to_its_core() -> None:
    applier = FaultyTruncate()
    smallest = find(op_lists(max_ops=30), lambda ops: check(ops, applier).diff is not None,
                    settings=settings(max_examples=3000, database=None, deadline=None,
                                      suppress_health_check=list(HealthCheck)))
    assert [op.kind for op in smallest] == ["create", "truncate"], smallest


@pytest.mark.parametrize("round_ops", [3000, 10])
def test_ddmin_finds_the_two_ops_that_matter(round_ops: int) -> None:
    """A pure predicate (fails iff ops 3 and 17 are both in): ddmin keeps exactly those two,
    says 1-minimal, and counts its rounds (one fails_batch call each), even when the round
    budget holds only one granularity."""
    ops = [Op("stat", f"p{i}") for i in range(40)]
    calls = []

    def fails_batch(candidates):
        calls.append(len(candidates))
        return [ops[3] in c and ops[17] in c for c in candidates]

    shrunk = ddmin(ops, fails_batch, max_rounds=50, round_ops=round_ops)
    assert shrunk.ops == [ops[3], ops[17]] and shrunk.minimal
    assert shrunk.rounds == len(calls) and shrunk.candidates == sum(calls)
    capped = ddmin(ops, fails_batch, max_rounds=1, round_ops=round_ops)
    assert not capped.minimal and capped.rounds == 1
