"""Chunk bytes between nodes over the bulk channel (server/rpc/bulk.py, cluster.bulk_reads),
on node processes through libnfs.

- A file of three chunks written through node 1 and read through nodes 2 and 3: every byte
  right; each chunk lies in one group, so one of the two readers read chunk 1 from another
  node, and every request a gateway sent over the channel was served by some node.
- Writes into a cold bucket object's chunk through nodes 2 and 3: the chunk's bytes from the
  bucket (its base) come from the chunk's owner, over the channel for at least one of them,
  and go into the write's record; the file reads back as the object with both writes.
- `cluster up --bulk-reads off`: the same reads, all over the plane.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from clusterproc import LocalCluster
from nfsclient import LibNfs

from server.fs.config import FsConfig

pytestmark = pytest.mark.integration
MiB = 1 << 20


def bulk(cluster: LocalCluster, side: str, event: str) -> float:
    return sum(cluster.metric(n, f"objcache_bulk_{side}_total", f'event="{event}"')
               for n in cluster.nodes)


def read_through(cluster: LocalCluster, node: int, path: str, size: int) -> bytes:
    fs = LibNfs(cluster.export_url(node))
    try:
        fh = fs.open(path, os.O_RDONLY)
        got = b"".join(fs.pread(fh, off, min(MiB, size - off)) for off in range(0, size, MiB))
        fs.fclose(fh)
        return got
    finally:
        fs.close()


def write_chunks(cluster: LocalCluster, path: str, chunks: int) -> bytes:
    data = os.urandom(chunks * FsConfig().chunk_size + 1)
    fs = LibNfs(cluster.export_url(1))
    try:
        fs.mkdir(os.path.dirname(path))
        fs.write_file(path, data, 0o644)
    finally:
        fs.close()
    return data


def test_reads_of_other_nodes_chunks_go_over_the_bulk_channel(cluster):
    data = write_chunks(cluster, "/d/f", 2)
    for node in (2, 3):
        assert read_through(cluster, node, "/d/f", len(data)) == data
    requests = bulk(cluster, "reads", "requests")
    assert requests >= 1  # chunk 1 is in a group other than node 2's or node 3's
    assert bulk(cluster, "served", "requests") == requests
    assert bulk(cluster, "reads", "bytes") == bulk(cluster, "served", "bytes") >= MiB
    assert bulk(cluster, "reads", "unavailable") == 0
    assert bulk(cluster, "served", "refused") == bulk(cluster, "served", "garbage") == 0


def test_with_bulk_reads_off_the_plane_carries_the_same_bytes(tmp_path: Path):
    c = LocalCluster(tmp_path / "cluster", nodes=3, up_args=("--bulk-reads", "off")).up()
    try:
        data = write_chunks(c, "/d/f", 2)
        for node in (2, 3):
            assert read_through(c, node, "/d/f", len(data)) == data
        for n in c.nodes:  # no channel, so no counters of it
            assert c.metric(n, "objcache_bulk") == 0
        assert sum(c.metric(n, "objcache_router_calls_total", 'event="remote_calls"')
                   for n in c.nodes) > 0
    finally:
        c.down(check=False)


def test_writes_into_cold_chunks_take_their_base_over_the_bulk_channel(tmp_path: Path):
    chunk = FsConfig().chunk_size
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    data = bytearray(os.urandom(3 * chunk))
    (bucket / "obj").write_bytes(data)
    c = LocalCluster(tmp_path / "cluster", nodes=3,
                     up_args=("--store", f"file://{bucket}")).up()
    try:
        for node, offset in ((2, chunk + 100), (3, chunk + 5000)):
            fs = LibNfs(c.export_url(node))
            try:
                fh = fs.open("/obj", os.O_WRONLY)
                fs.pwrite(fh, offset, b"written by %d" % node)
                fs.fclose(fh)
            finally:
                fs.close()
            data[offset:offset + 12] = b"written by %d" % node
        # Chunk 1 lies in one group: node 2's or node 3's write read its base from another.
        assert bulk(c, "reads", "requests") >= 1
        assert read_through(c, 1, "/obj", len(data)) == bytes(data)
    finally:
        c.down(check=False)
