"""Growing and shrinking a cluster over a bucket (SeaweedFS): dirty files survive every ring
change and reach the bucket afterwards; clean files stay behind and are read again from the
bucket by their new owner.

1 -> 2 -> 3 groups with the write-back delay at an hour (every written file stays dirty): at
each step every file reads back byte for byte through every running node, fsck is clean, and
the bucket has none of the written files. Then 3 -> 2 -> 1: a leave writes back first, so
afterwards the bucket holds every file byte for byte, and the files still read back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from clusterproc import LocalCluster
from s3server import ACCESS_KEY, SECRET_KEY
from serverproc import nfs_cat, nfs_cp

pytestmark = pytest.mark.integration

CHUNK = 16 << 20


def test_dirty_and_clean_files_through_joins_and_leaves(tmp_path: Path, s3_bucket: Any,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    s3 = s3_bucket.client()
    clean = {f"pre/p{i}.bin": os.urandom(size) for i, size in
             enumerate([1, 5000, CHUNK + 3, 2 * CHUNK + 9])}
    for key, data in clean.items():
        s3.put_object(Bucket=s3_bucket.name, Key=f"el/{key}", Body=data)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    c = LocalCluster(tmp_path / "c", nodes=1, up_args=(
        "--store", f"{s3_bucket.url}/el", "--s3-endpoint", s3_bucket.server.endpoint,
        "--flush-delay", "3600", "--ttl", "3600"))
    c.up()
    dirty: dict[str, bytes] = {}
    local = tmp_path / "src"

    def write(node: int, tag: str) -> None:
        for i, size in enumerate([0, 10, 64 << 10, CHUNK + 1] + [4096] * 20):
            name = f"{tag}-{i}.bin"
            dirty[name] = os.urandom(size)
            local.write_bytes(dirty[name])
            nfs_cp(local, c.url(node, name))

    def check(nodes: list[int], *, written_back: bool = False) -> None:
        for node in nodes:
            for name, data in {**dirty, **clean}.items():
                assert nfs_cat(c.url(node, name)) == data, (node, name)
        assert c.fsck()["ok"]
        listed = s3.list_objects_v2(Bucket=s3_bucket.name, Prefix="el/")
        keys = {o["Key"] for o in listed.get("Contents", [])}
        if not written_back:  # the written files are all still dirty
            assert keys == {f"el/{k}" for k in clean}
            return
        assert keys == {f"el/{k}" for k in {**clean, **dirty}}
        for name, data in dirty.items():
            got = s3.get_object(Bucket=s3_bucket.name, Key=f"el/{name}")["Body"].read()
            assert got == data, name

    try:
        for key, data in clean.items():  # cached at group 1 before the changes
            assert nfs_cat(c.url(1, key)) == data
        write(1, "a")
        c.add_node(2)
        check([1, 2])
        write(2, "b")
        c.add_node(3)
        check([1, 2, 3])
        write(3, "c")
        for gone in (2, 3):
            res = c.admin("leave", str(gone))
            assert res.returncode == 0, res.stdout + res.stderr + c.log_tails()
            c.wait_exit(gone)
            del c.nodes[gone]
            check(sorted(c.nodes), written_back=True)
    finally:
        c.down(check=False)
