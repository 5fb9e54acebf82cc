"""Two write-back rounds of one file (the root group's leader moved while a round was
uploading): one writer per key, per round (server/cluster/flush_claim.py), so the bucket never
ends with an older version than the one marked clean (tests/faults/FINDINGS.md 11).

Each test runs on a local directory as the bucket and on SeaweedFS (S3 over HTTP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from bucketnode import STORE, GatedStore, one_node
from test_bucket_writeback import ROOT, blob, bucket_tree, flush_all, write_file

from nfs_gateway.backend import StableHow
from server.cluster.bucket import BucketConfig
from server.cluster.flush import FlushConfig, Flusher, RoundResult

pytestmark = pytest.mark.integration


async def test_a_round_waits_while_an_older_round_holds_the_key_so_a_stale_put_never_lands_last(
        store: Any, tmp_path: Path) -> None:
    """FINDINGS.md 11 as it happened: a round uploads an empty file, its PUT slow; the file is
    written (70000 bytes); a round on another node (a new leader) finds it dirty. It used to
    upload and mark it clean, and the old PUT landed after: the bucket held 0 bytes, which
    revalidation then took for the file's content."""
    gated = GatedStore(store)
    async with one_node(tmp_path / "n", gated, BucketConfig(), bind_root=True) as (fs, _, _):
        root = await fs.export_root("/")
        fid = await write_file(fs, root, b"f", b"")
        old, new = Flusher(fs, FlushConfig(delay_s=0)), Flusher(fs, FlushConfig(delay_s=0))
        gated.shut("f")
        first = RoundResult()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: old.round(STORE, force=True, res=first))
            with trio.fail_after(10):
                await gated.entered.wait()  # the old round's PUT (of 0 bytes) is on its way
            data = blob(70000, 3)
            await fs.write(ROOT, fid, 0, memoryview(data), StableHow.FILE_SYNC)
            second = await new.round(STORE, force=True)
            assert second.flushed == 0 and second.dirty_left == 1, second  # kept off the key
            gated.open()  # the old PUT lands now
        assert first.flushed == 0 and gated.landed == ["f"], first  # its SetClean is refused
        await flush_all(new)
        assert (await bucket_tree(store))["f"] == data
        inode = await fs._get(fid)
        assert inode.cver == inode.dver and inode.size == len(data)


async def test_a_round_stops_writing_when_its_claim_ends_and_another_round_takes_over(
        store: Any, tmp_path: Path) -> None:
    """A round whose store request has not started when its claim is about to end (the
    margin before it) sends nothing more, and lets go of the key: the next round writes the
    file. (A round that cannot let go, its node dead, keeps the key to the end of its lease:
    test_bucket_records.py.)"""
    gated = GatedStore(store)
    short = FlushConfig(delay_s=0, claim_lease_s=2.0, claim_margin_s=1.0)
    async with one_node(tmp_path / "n", gated, BucketConfig(), bind_root=True) as (fs, _, _):
        root = await fs.export_root("/")
        data = blob(5000, 4)
        fid = await write_file(fs, root, b"g", data)
        gated.shut("g")
        with trio.fail_after(20):
            cut = await Flusher(fs, short).round(STORE, force=True)
        assert cut.flushed == 0 and cut.dirty_left == 1, cut
        assert gated.entered.is_set() and gated.landed == []  # cut at the gate, never sent
        gated.shut("")
        await flush_all(Flusher(fs, short))
        assert (await bucket_tree(store))["g"] == data
        inode = await fs._get(fid)
        assert inode.cver == inode.dver
