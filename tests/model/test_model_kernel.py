"""The model check through the Linux kernel NFS client (../shared/tools/nfsvm): random
sequences run by the guest (modelops.c, one boot for all of them) against one node, and against
a three-group cluster with the guest's two mounts on two nodes' gateways, compared with the
same sequences on a local directory. A difference fails with the first failing sequence shrunk
by ddmin, one boot per round (at most OBJCACHE_MODEL_SHRINK_BOOTS).

Sizes: OBJCACHE_MODEL_KERNEL_SEQS sequences (default conftest.KERNEL_SEQS) of
OBJCACHE_MODEL_OPS ops per server; OBJCACHE_MODEL_SEED replays a run (its seed is in the
failure message).
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

from model import servers
from model.conftest import KERNEL_SEQS, MAX_OPS, count
from model.kernel import KernelTarget, kernel_check

pytestmark = pytest.mark.kernel

SEQS = int(os.environ.get("OBJCACHE_MODEL_KERNEL_SEQS", str(KERNEL_SEQS)))
SEED = int(os.environ.get("OBJCACHE_MODEL_SEED", str(random.randrange(1 << 30))))
SHRINK_BOOTS = int(os.environ.get("OBJCACHE_MODEL_SHRINK_BOOTS", "8"))


def _run(target: KernelTarget, clients: int, path: str) -> None:
    report = kernel_check(target, seqs=SEQS, ops=MAX_OPS, seed=SEED, clients=clients,
                          shrink_boots=SHRINK_BOOTS)
    for _ in range(SEQS):
        count(path, MAX_OPS)
    assert report is None, report


@pytest.mark.model_long  # several VM boots: `make model` runs it (conftest.py)
def test_kernel_shrink_finds_a_planted_fault(tmp_path: Path, monkeypatch) -> None:
    """The kernel path's ddmin with real boots: against a model whose truncate grows files one
    byte too far (test_checker.FaultyTruncate), the server "differs", and the first failing
    sequence must shrink to create + truncate within a few boots."""
    from model.localfs import LocalApplier
    from model.test_checker import FaultyTruncate

    monkeypatch.setattr(LocalApplier, "op_truncate", FaultyTruncate.op_truncate)
    srv = servers.single_node(tmp_path / "server")
    try:
        target = KernelTarget(srv.nfs_port, None, tmp_path / "k")
        report = kernel_check(target, seqs=8, ops=40, seed=5, clients=1, shrink_boots=6)
    finally:
        srv.stop()
    assert report is not None
    assert "shrunk by ddmin to 2 ops (1-minimal" in report, report
    assert re.search(r"\n +0 create\('([\w/]+)'.*\n +1 truncate\('\1'", report), report


def test_kernel_one_node_matches_local_dir(tmp_path: Path) -> None:
    srv = servers.single_node(tmp_path / "server")
    try:
        _run(KernelTarget(srv.nfs_port, None, tmp_path / "k1"), 1, "kernel one node")
    finally:
        srv.stop()


def test_kernel_cluster_two_mounts_matches_local_dir(tmp_path: Path) -> None:
    cl = servers.cluster(tmp_path / "c")
    try:
        _run(KernelTarget(cl.nfs_port(1), cl.nfs_port(3), tmp_path / "k3"), 2,
             "kernel 3-group cluster")
        report = cl.fsck()
        assert report["ok"], report["problems"]
    finally:
        cl.down(check=False)
