"""The model check through libnfs: random sequences (hypothesis) applied to a local directory
and to objcache through two libnfs mounts, on one node and on a three-group cluster (the two
mounts on two nodes' gateways); any difference in a result or in the final tree fails with the
shortest sequence hypothesis finds (its "Falsifying example", and the side-by-side script in
the assertion). The one node is restarted at the end and must serve every sequence's final
tree unchanged. Sizes: conftest.py (OBJCACHE_MODEL_SEQS, OBJCACHE_MODEL_OPS).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from model import servers
from model.check import check
from model.conftest import MAX_OPS, SEQS, count
from model.nfsfs import NfsApplier, open_client
from model.shrink import op_lists

pytestmark = pytest.mark.integration

SETTINGS = settings(max_examples=SEQS, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# Symlinks only where nothing walks through them on this path: ops.LEAF_LINKS says why.
SEQUENCES = op_lists(clients=2, symlinks=False, max_ops=MAX_OPS)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One node. At the end it restarts, and every sequence's tree must read back as it was
    (each one's final tree, which matched the local one, is kept in FINAL)."""
    srv = servers.single_node(tmp_path_factory.mktemp("model-single"))
    clients = [open_client(srv.url("/")), open_client(srv.url("/"))]
    FINAL.clear()
    try:
        yield NfsApplier(clients)
        for c in clients:
            c.close()
        clients = []
        srv.restart()
        _check_after_restart(open_client(srv.url("/")))
    finally:
        for c in clients:
            c.close()
        srv.stop()


FINAL: dict[str, dict] = {}  # a sequence's directory -> its final tree (single node)


def _check_after_restart(nfs) -> None:
    assert FINAL, "no sequence's tree was recorded"
    reader = NfsApplier([nfs])
    try:
        for root, tree in FINAL.items():
            reader.root = root
            after = reader.tree()
            assert after == tree, f"{root} changed across a restart:\n{after}\n{tree}"
    finally:
        nfs.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cl = servers.cluster(tmp_path_factory.mktemp("model-cluster") / "c")
    clients = [open_client(cl.url(1)), open_client(cl.url(3))]
    try:
        yield NfsApplier(clients)
        report = cl.fsck()
        assert report["ok"], report["problems"]
    finally:
        for c in clients:
            c.close()
        cl.down(check=False)


def _check(applier: NfsApplier, ops, path: str) -> None:
    outcome = check(ops, applier)
    count(path, len(ops))
    assert outcome.diff is None, outcome.report()
    if path.endswith("one node"):
        FINAL[applier.root] = outcome.got_tree


@SETTINGS
@given(ops=SEQUENCES)
def test_libnfs_one_node_matches_local_dir(single, ops) -> None:
    _check(single, ops, "libnfs one node")


@SETTINGS
@given(ops=SEQUENCES)
def test_libnfs_cluster_matches_local_dir(cluster, ops) -> None:
    _check(cluster, ops, "libnfs 3-group cluster")
