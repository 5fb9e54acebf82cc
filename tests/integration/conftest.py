"""Fixtures for the integration tier: a real `objcache serve` process per test.

Set OBJCACHE_IT_SERVER=ganesha to run the same tests against the reference nfs-ganesha (VFS),
which checks the tests themselves against a server we did not write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bucketnode import CountingStore
from clusterproc import LocalCluster
from serverproc import make_server

from storage.objstore.localdir import LocalDirStore
from storage.objstore.url import open_store


@pytest.fixture
def nfs_server(tmp_path: Path):
    """A started server. At the end it is stopped with SIGTERM and must exit 0: a crash during
    the test, or an unclean shutdown, fails the test here."""
    server = make_server(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest):
    """`objcache cluster up` of node processes on loopback: three one-member groups, or
    as many as a test's `@pytest.mark.nodes(N)` says; brought down at the end."""
    mark = request.node.get_closest_marker("nodes")
    c = LocalCluster(tmp_path / "cluster", nodes=mark.args[0] if mark else 3).up()
    try:
        yield c
    finally:
        c.down(check=False)


@pytest.fixture(params=["localdir", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The bucket of the in-process write-back tests, counted: a local directory, then
    SeaweedFS (S3 over HTTP)."""
    if request.param == "localdir":
        return CountingStore(LocalDirStore(tmp_path / "bucket"))
    bucket = request.getfixturevalue("s3_bucket")
    return CountingStore(open_store(bucket.spec("pre")))
