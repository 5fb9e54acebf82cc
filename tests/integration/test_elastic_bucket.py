"""Growing and shrinking a cluster over a bucket (SeaweedFS): dirty files survive every ring
change and reach the bucket afterwards; clean files stay behind and are read again from the
bucket by their new owner.

1 -> 2 -> 3 groups with the write-back delay at an hour (every written file stays dirty): at
each step every file reads back byte for byte through every running node, fsck is clean, and
the bucket has none of the written files. Then 3 -> 2 -> 1: a leave writes back first, so
afterwards the bucket holds every file byte for byte, and the files still read back.
Throughout, a client writes and reads small files through node 1; every write it was
acknowledged reads back. At the end the last node drains (the bucket holds every file, the
node exits) and a new, empty cluster over the same bucket serves the same tree.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from clusterproc import LocalCluster
from s3server import ACCESS_KEY, SECRET_KEY
from serverproc import ClientError, nfs_cat, nfs_cp, nfsmeta
from tools.s3faultproxy import RefusingProxy

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

    def bucket() -> dict[str, bytes]:  # every page: the client may write over 1000 files
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket.name,
                                                              Prefix="el/")
        return {o["Key"][3:]: s3.get_object(Bucket=s3_bucket.name, Key=o["Key"])["Body"].read()
                for page in pages for o in page.get("Contents", [])}

    def check(nodes: list[int], *, written_back: dict[str, bytes] | None = None) -> None:
        """Every file reads back through `nodes`; fsck is clean; the bucket holds the clean
        files and, if `written_back`, those too (else none of the written ones)."""
        for node in nodes:
            for name, data in {**dirty, **clean}.items():
                assert nfs_cat(c.url(node, name)) == data, (node, name)
        report = c.fsck()
        assert report["ok"], report["problems"]
        held = bucket()
        if written_back is None:
            assert held == clean  # the written files are all still dirty
            return
        for name, data in {**clean, **written_back}.items():
            assert held.get(name) == data, name
        for name, data in held.items():  # anything else there is a file the client wrote
            assert acked.get(name, clean.get(name, dirty.get(name))) == data, name

    acked: dict[str, bytes] = {}
    stop = threading.Event()
    failures: list[str] = []

    def client() -> None:  # writes and reads through node 1, which stays
        src = tmp_path / "client"
        i = 0
        while not stop.is_set():
            name = f"w{i}.bin"
            data = os.urandom(3000 + i)
            src.write_bytes(data)
            try:
                nfs_cp(src, c.url(1, name))
                acked[name] = data
                old = f"w{max(0, i - 3)}.bin"
                if nfs_cat(c.url(1, old)) != acked[old]:
                    failures.append(f"{old} read back wrong")
            except ClientError as e:  # not acknowledged: not a loss, but it must not happen
                failures.append(f"{name}: {e}")
            i += 1

    worker = threading.Thread(target=client)
    worker.start()
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
            before = {**dirty, **acked}  # a leave writes back first: at least these
            res = c.admin("leave", str(gone))
            assert res.returncode == 0, res.stdout + res.stderr + c.log_tails()
            c.wait_exit(gone)
            del c.nodes[gone]
            check(sorted(c.nodes), written_back=before)
        stop.set()
        worker.join()
        assert not failures, failures
        assert len(acked) > 20
        dirty.update(acked)
        check([1], written_back={})
        res = c.admin("drain", "--json")
        assert res.returncode == 0, res.stdout + res.stderr + c.log_tails()
        c.wait_exit(1)
        assert bucket() == {**clean, **dirty}
    finally:
        stop.set()
        worker.join()
        c.down(check=False)
    cold = LocalCluster(tmp_path / "cold", nodes=1, up_args=(
        "--store", f"{s3_bucket.url}/el", "--s3-endpoint", s3_bucket.server.endpoint))
    cold.up()
    try:
        for name, data in {**dirty, **clean}.items():
            assert nfs_cat(cold.url(1, name)) == data, name
    finally:
        cold.down(check=False)


def test_a_leave_whose_write_back_fails_hands_the_dirty_files_over(
        tmp_path: Path, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bucket refuses some uploads: the leave still completes, moving those files, still
    dirty, to the groups that stay; once the bucket takes them, a flush writes them back."""
    s3 = s3_bucket.client()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    with RefusingProxy(s3_bucket.server.endpoint, refuse=".bad") as proxy:
        proxy.release.set()  # refuse at once
        c = LocalCluster(tmp_path / "c", nodes=1, up_args=(
            "--store", f"{s3_bucket.url}/lv", "--s3-endpoint", proxy.endpoint,
            "--flush-delay", "3600", "--ttl", "3600"))
        c.up()
        try:
            c.add_node(2)
            for d in range(6):  # directories spread over the groups, their files with them;
                # each holds one file the bucket refuses
                nfsmeta(c.export_url(2), "mkdir", f"/d{d}")
            files = {f"d{i % 6}/f{i}.{'bad' if i % 5 == 0 else 'ok'}": os.urandom(1000 + 977 * i)
                     for i in range(30)}
            local = tmp_path / "src"
            for i, (name, data) in enumerate(sorted(files.items())):
                local.write_bytes(data)
                nfs_cp(local, c.url(1 + i % 2, name))
            res = c.admin("leave", "2", "--json")
            assert res.returncode == 0, res.stdout + res.stderr + c.log_tails()
            assert json.loads(res.stdout)["moved_bytes"] > 0  # group 2 held some of them
            c.wait_exit(2)
            del c.nodes[2]
            assert proxy.refused > 0
            for name, data in files.items():
                assert nfs_cat(c.url(1, name)) == data, name
            report = c.fsck()
            assert report["ok"], report["problems"]
            listed = s3.list_objects_v2(Bucket=s3_bucket.name, Prefix="lv/")
            held = {o["Key"][3:] for o in listed.get("Contents", [])}
            assert held - {f"d{d}/" for d in range(6)} == {
                n for n in files if n.endswith(".ok")}  # the leave wrote these
            proxy.refusing = False
            flush = c.admin("flush", "/")
            assert flush.returncode == 0, flush.stdout + flush.stderr
            for name, data in files.items():
                got = s3.get_object(Bucket=s3_bucket.name, Key=f"lv/{name}")["Body"].read()
                assert got == data, name
        finally:
            c.down(check=False)
