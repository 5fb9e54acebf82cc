"""A three-node objcache cluster (three one-member groups) mounted by the Linux kernel client
twice at once: node 1's gateway and node 3's (guest_cluster.sh). What one mount writes the other
reads; renames, links, rmdir and truncate across groups; fsck consistent afterwards."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from clusterproc import LocalCluster
from test_kernel_client import HERE, run_nfsvm

pytestmark = pytest.mark.kernel


class _Node1:
    """What run_nfsvm needs of a server: node 1's gateway of the cluster."""

    export = "/"

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.nfs_port = self.mount_port = cluster.nfs_port(1)

    def log_tail(self, lines: int = 30) -> str:
        return self.cluster.log_tails(lines)


def test_two_kernel_mounts_on_two_nodes(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster", nodes=3).up()
    try:
        results = run_nfsvm(_Node1(cluster), HERE / "guest_cluster.sh", tmp_path / "cluster.log",
                            env={"OTHER_PORT": str(cluster.nfs_port(3))},
                            opts="actimeo=0,lookupcache=none")
        assert re.search(r"^cluster: \d+ passed, 0 failed", results, re.M), results
        report = cluster.fsck()
        assert report["ok"], report["problems"]
    finally:
        cluster.down(check=False)
