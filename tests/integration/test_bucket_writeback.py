"""Write-back (server/cluster/flush.py) in one process over a real object store: what NFS
clients changed reaches the bucket byte for byte, renames move objects inside the store,
deletes delete, and nothing is marked clean that the bucket does not hold.

Each test runs on a local directory as the bucket and on SeaweedFS (S3 over HTTP)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import trio
from bucketnode import STORE, CountingStore, one_node
from tools.s3faultproxy import FaultProxy

from nfs_gateway.backend import CreateMode, Cred, FileId, NoSpc, SetAttrs, StableHow
from server.cluster import bucket_reads
from server.cluster.bucket import BucketConfig
from server.cluster.flush import FlushConfig, Flusher
from server.cluster.gateway import ClusterBackend
from server.fs import keys
from server.fs.keytable import KEY_CLAIMED, KEY_LIVE
from storage.objstore.localdir import LocalDirStore
from storage.objstore.s3 import S3Store
from storage.objstore.url import open_store

pytestmark = pytest.mark.integration

ROOT = Cred(0, 0)
MIB = 1 << 20


def blob(n: int, seed: int = 1) -> bytes:
    out = bytearray()
    while len(out) < n:
        out += hashlib.sha256(b"%d:%d" % (seed, len(out))).digest()
    return bytes(out[:n])


async def flush_all(flusher: Flusher, rounds: int = 10) -> None:
    """Forced rounds until nothing is dirty or waiting to be deleted."""
    for _ in range(rounds):
        res = await flusher.round(STORE, force=True)
        assert res.errors == []
        if not res.dirty_left and not res.deletes_left:
            return
    raise AssertionError(f"write-back did not finish: {res}")


async def bucket_tree(store: Any) -> dict[str, bytes]:
    """Every object under the store's prefix (recursively) with its bytes."""
    out: dict[str, bytes] = {}
    todo = [""]
    while todo:
        prefix = todo.pop()
        token = None
        while True:
            page = await store.list_page(prefix, token=token)
            for o in page.objects:
                out[o.key] = await store.get_range(o.key, 0, o.size) if o.size else b""
            todo.extend(page.prefixes)
            token = page.next_token
            if token is None:
                break
    return out


async def write_file(fs: ClusterBackend, d: FileId, name: bytes, data: bytes,
                     mode: int = 0o640) -> FileId:
    fid = (await fs.create(ROOT, d, name, CreateMode.UNCHECKED, SetAttrs(mode=mode), None)).fid
    step = 256 << 10
    for off in range(0, len(data), step):
        await fs.write(ROOT, fid, off, memoryview(data[off:off + step]), StableHow.FILE_SYNC)
    return fid


async def test_new_files_and_directories_reach_the_bucket(store: Any, tmp_path: Path) -> None:
    async with one_node(tmp_path / "n", store, BucketConfig(), bind_root=True) as (fs, rt, _):
        flusher = Flusher(fs, FlushConfig(delay_s=3600))
        root = await fs.export_root("/")
        d = (await fs.mkdir(ROOT, root, b"dir one", SetAttrs(mode=0o750))).fid
        (await fs.mkdir(ROOT, d, b"empty", SetAttrs()))
        files = {"a": blob(1), "dir one/b\u00e9": blob(300 << 10, 2), "dir one/zero": b""}
        await write_file(fs, root, b"a", files["a"])
        await write_file(fs, d, "b\u00e9".encode(), files["dir one/b\u00e9"])
        await write_file(fs, d, b"zero", b"")
        await fs.symlink(ROOT, root, b"link", b"dir one/zero", SetAttrs())
        # Nothing happens before the delay...
        res = await flusher.round(STORE)
        assert res.flushed == 0 and res.dirty_left == 6
        assert await bucket_tree(store) == {}
        await flush_all(flusher)
        tree = await bucket_tree(store)
        assert tree == {**files, "dir one/": b"", "dir one/empty/": b"", "link": b""}
        head = await store.head("a")
        assert head.metadata["mode"] == str(0o640) and head.metadata["uid"] == "0"
        link = await store.head("link")
        assert link.metadata["type"] == "symlink"
        if isinstance(store.inner, LocalDirStore):  # SeaweedFS keeps no metadata on markers
            assert (await store.head("dir one/")).metadata["mode"] == str(0o750)
        # Clean now: the dirty index is empty and every inode holds the version uploaded.
        assert await rt.kv.iterate(prefix=keys.DIRTY) == []
        a = (await fs.lookup(ROOT, root, b"a")).fid
        inode = await fs._get(a)
        assert inode.okey == b"a" and inode.cver == inode.dver and inode.etag == (
            head.etag.encode())


async def test_large_files_go_up_in_parts_and_overwrites_and_truncates_follow(
        store: Any, tmp_path: Path) -> None:
    cs = 5 * MIB
    async with one_node(tmp_path / "n", store, BucketConfig(), chunk_size=cs,
                        bind_root=True) as (fs, _, _):
        flusher = Flusher(fs, FlushConfig(delay_s=0))
        root = await fs.export_root("/")
        data = blob(2 * cs + 12345, 3)
        fid = await write_file(fs, root, b"big", data)
        await flush_all(flusher)
        assert flusher.stats["parts"] == 3
        assert (await bucket_tree(store))["big"] == data
        # Overwrite the middle, then cut it short: the bucket follows each version.
        await fs.write(ROOT, fid, cs + 7, memoryview(b"MIDDLE"), StableHow.FILE_SYNC)
        data = data[:cs + 7] + b"MIDDLE" + data[cs + 13:]
        await flush_all(flusher)
        assert (await bucket_tree(store))["big"] == data
        await fs.setattr(ROOT, fid, SetAttrs(size=cs + 100), None)
        await flush_all(flusher)
        assert (await bucket_tree(store))["big"] == data[:cs + 100]


async def test_renames_copy_inside_the_store_and_removes_delete(store: Any,
                                                                tmp_path: Path) -> None:
    async with one_node(tmp_path / "n", store, BucketConfig(), bind_root=True) as (fs, _, _):
        flusher = Flusher(fs, FlushConfig(delay_s=0))
        root = await fs.export_root("/")
        d = (await fs.mkdir(ROOT, root, b"d", SetAttrs())).fid
        # The 1000 files on SeaweedFS; 100 on the local directory (the same paths).
        n = 1000 if isinstance(store.inner, S3Store) else 100
        content = {f"f{i:04d}": blob(100 + i, i) for i in range(n)}
        for name, data in content.items():
            await write_file(fs, d, name.encode(), data)
        await write_file(fs, root, b"solo", blob(5000, 99))
        await flush_all(flusher)
        puts = store.calls["put"]
        # A file renamed: one copy, the old key deleted; no bytes through the cluster.
        await fs.rename(ROOT, root, b"solo", d, b"solo2")
        await flush_all(flusher)
        tree = await bucket_tree(store)
        assert "solo" not in tree and tree["d/solo2"] == blob(5000, 99)
        assert store.calls["copy"] == 1 and store.calls["put"] == puts
        # A directory of n files renamed: every object moves by copy, the old ones go.
        await fs.rename(ROOT, root, b"d", root, b"e")
        await flush_all(flusher)
        tree = await bucket_tree(store)
        assert sorted(tree) == sorted(["e/", "e/solo2"] + [f"e/{n}" for n in content])
        assert all(tree[f"e/{n}"] == v for n, v in content.items())
        assert store.calls["copy"] == 1 + n + 1 and store.calls["put"] == puts + 1  # e/ marker
        # Removes delete; a name made again before its delete ran keeps the new bytes.
        e = (await fs.lookup(ROOT, root, b"e")).fid
        await fs.remove(ROOT, e, b"f0000")
        await fs.remove(ROOT, e, b"f0001")
        await write_file(fs, e, b"f0001", b"new bytes")
        await flush_all(flusher)
        tree = await bucket_tree(store)
        assert "e/f0000" not in tree and tree["e/f0001"] == b"new bytes"


async def test_a_file_changed_during_its_upload_is_not_marked_clean(store: Any,
                                                                    tmp_path: Path) -> None:
    async with one_node(tmp_path / "n", store, BucketConfig(), bind_root=True) as (fs, _, _):
        flusher = Flusher(fs, FlushConfig(delay_s=0))
        root = await fs.export_root("/")
        fid = await write_file(fs, root, b"f", b"version 1")
        inode = await fs._get(fid)
        # A write lands between the scan and the clean mark: the mark must be refused.
        await fs.write(ROOT, fid, 0, memoryview(b"VERSION 2"), StableHow.FILE_SYNC)
        key = await flusher._key_of(inode, {})
        assert key == b"f"
        assert not await flusher.flush_inode(STORE, inode, key, {})
        after = await fs._get(fid)
        assert after.cver != after.dver  # still dirty
        await flush_all(flusher)
        assert (await bucket_tree(store))["f"] == b"VERSION 2"


async def test_the_flusher_loop_writes_back_after_the_delay(store: Any, tmp_path: Path
                                                            ) -> None:
    async with one_node(tmp_path / "n", store, BucketConfig(), bind_root=True) as (fs, rt,
                                                                                   nursery):
        flusher = Flusher(fs, FlushConfig(delay_s=0.2, interval_s=0.05))
        await nursery.start(flusher.run, lambda g: rt.group == g and rt.is_leader())
        root = await fs.export_root("/")
        await write_file(fs, root, b"auto", b"written back by the loop")
        with trio.fail_after(20):
            while (await bucket_tree(store)).get("auto") != b"written back by the loop":
                await trio.sleep(0.05)


async def test_an_overwrite_in_a_cold_object_copies_the_rest_inside_the_store(
        store: Any, tmp_path: Path) -> None:
    cs = 5 * MIB
    cold = blob(100 * MIB + 3, 7)
    await store.put("cold", cold)
    async with one_node(tmp_path / "n", store, BucketConfig(), chunk_size=cs,
                        bind_root=True) as (fs, rt, _):
        flusher = Flusher(fs, FlushConfig(delay_s=0))
        root = await fs.export_root("/")
        fid = (await fs.lookup(ROOT, root, b"cold")).fid  # loaded from the bucket
        gets = store.calls["get_range"]
        mid = 50 * MIB + 5
        await fs.write(ROOT, fid, mid, memoryview(b"patched"), StableHow.FILE_SYNC)
        await flush_all(flusher)
        want = cold[:mid] + b"patched" + cold[mid + 7:]
        assert (await bucket_tree(store))["cold"] == want
        # Only the written chunk went through the cluster; the other 20 were copied.
        assert flusher.stats["parts"] == 21 and flusher.stats["parts_copied"] == 20
        assert store.calls["get_range"] - gets <= 2 * 4  # the base of one chunk, in parts
        inode = await fs._get(fid)
        assert inode.cver == inode.dver and inode.obase == len(want)
        assert rt.bucket is not None


async def test_nothing_is_marked_clean_before_the_store_confirmed_it(tmp_path: Path,
                                                                     s3_bucket: Any) -> None:
    with FaultProxy(s3_bucket.server.endpoint, seed=5, stall_s=3.0) as proxy:
        spec = s3_bucket.spec("faults", endpoint=proxy.endpoint, max_attempts=3,
                              timeout_s=2.0)
        store = CountingStore(open_store(spec))
        async with one_node(tmp_path / "n", store, BucketConfig(), bind_root=True) as (fs, _,
                                                                                       _):
            flusher = Flusher(fs, FlushConfig(delay_s=0))
            root = await fs.export_root("/")
            files = {f"f{i}": blob(1000 * i + 1, i) for i in range(6)}
            fids = {n: await write_file(fs, root, n.encode(), v) for n, v in files.items()}
            # The store answers nothing but 503: every upload fails, nothing is clean.
            proxy.set_rates(slowdown=1.0)
            res = await flusher.round(STORE, force=True)
            assert res.flushed == 0 and res.dirty_left == 6 and res.errors
            for fid in fids.values():
                inode = await fs._get(fid)
                assert inode.cver != inode.dver
            # A flaky store (503s, resets before and after the server saw the request, a
            # stall): retried until everything is there and clean.
            proxy.set_rates(slowdown=0.2, reset=0.05, reset_after=0.05)
            proxy.inject("stall", 1)
            for _ in range(30):
                res = await flusher.round(STORE, force=True)
                if not res.dirty_left and not res.deletes_left:
                    break
            assert not res.dirty_left
            proxy.set_rates(slowdown=0.0, reset=0.0, reset_after=0.0)
            assert await bucket_tree(store) == files
            for fid in fids.values():
                inode = await fs._get(fid)
                assert inode.cver == inode.dver
            assert proxy.counts["slowdown"] > 6 and proxy.counts["forwarded"] > 6


async def test_an_upload_cut_by_a_crash_is_aborted_and_redone(store: Any, tmp_path: Path
                                                              ) -> None:
    cs = 5 * MIB
    async with one_node(tmp_path / "n", store, BucketConfig(), chunk_size=cs,
                        bind_root=True) as (fs, _, _):
        flusher = Flusher(fs, FlushConfig(delay_s=0))
        root = await fs.export_root("/")
        data = blob(3 * cs, 11)
        fid = await write_file(fs, root, b"big", data)
        # The flusher dies after its claim and a started multipart upload (a crash).
        from server.fs.records import KeyClaim
        assert await flusher._txn(flusher._root_group(STORE), [KeyClaim(STORE, b"big",
                                                                         fid.ino)])
        upload = await store.create_multipart("big")
        await store.upload_part("big", upload, 1, data[:cs])
        # Another flusher (a new leader) finds the claim, aborts the upload, writes the file.
        fresh = Flusher(fs, FlushConfig(delay_s=0))
        await flush_all(fresh)
        assert (await bucket_tree(store))["big"] == data
        assert [u for u in await store.list_multipart("") if u[0] == "big"] == []
        inode = await fs._get(fid)
        assert inode.cver == inode.dver


async def test_a_full_cache_writes_back_first_and_answers_nospc_only_when_it_cannot(
        tmp_path: Path, s3_bucket: Any) -> None:
    """Capacity 4 chunks, 8 chunks written: writes wait while write-back makes room (their
    chunks become clean copies, evicted as needed); with the store down, NOSPC."""
    cs = 5 * MIB
    with FaultProxy(s3_bucket.server.endpoint, seed=3) as proxy:
        store = CountingStore(open_store(s3_bucket.spec("full", endpoint=proxy.endpoint,
                                                        max_attempts=2, timeout_s=5.0)))
        cfg = BucketConfig(capacity_bytes=4 * cs)
        async with one_node(tmp_path / "n", store, cfg, chunk_size=cs,
                            bind_root=True) as (fs, rt, nursery):
            reads = rt.bucket
            assert reads is not None
            flusher = Flusher(fs, FlushConfig(delay_s=3600, interval_s=0.05))
            await nursery.start(flusher.run, lambda g: False, lambda: reads.cache.pressed())
            rt.admit = bucket_reads.admission(reads.cache, flusher.stalled)
            nursery.start_soon(bucket_reads.housekeeping, reads, 0.05)
            root = await fs.export_root("/")
            # Listed (fresh for the ttl): new names are known to be new without asking the
            # bucket, so the outage below reaches the writes, not their LOOKUPs.
            await fs.readdir(ROOT, root, 0, b"\0" * 8, 100, False)
            files = {f"f{i}": blob(cs, 20 + i) for i in range(8)}
            with trio.fail_after(120):
                for name, data in files.items():
                    await write_file(fs, root, name.encode(), data)
            assert flusher.stats["uploads"] >= 4  # pressure wrote back before the delay
            for name, data in files.items():  # every byte is right, evicted or not
                fid = (await fs.lookup(ROOT, root, name.encode())).fid
                got = b"".join([(await fs.read(ROOT, fid, off, MIB)).data
                                for off in range(0, cs, MIB)])
                assert got == data, name
            await trio.sleep(0.2)
            usage = reads.cache.usage()
            assert usage["clean_bytes"] + usage["pinned_bytes"] <= 4 * cs + cs
            # The store goes down: write-back cannot free anything, writes get NOSPC.
            proxy.set_rates(slowdown=1.0)
            with pytest.raises(NoSpc), trio.fail_after(300):
                for i in range(8):
                    await write_file(fs, root, f"g{i}".encode(), blob(cs, 40 + i))
            proxy.set_rates(slowdown=0.0)


async def test_several_exports_each_with_its_bucket(tmp_path: Path) -> None:
    """"/" over one bucket and "/other" over another (config as a user writes it): each
    directory lists its own bucket, and what is written under each goes back to it."""
    from server import config as config_mod
    from server.cluster import node_fs

    a, b = tmp_path / "a", tmp_path / "b"
    await LocalDirStore(a).put("in-a", b"A")
    await LocalDirStore(b).put("in-b", b"B")
    cfg = config_mod.from_dict({
        "store": {"url": f"file://{a}"},
        "exports": [{"path": "/"}, {"path": "/other", "store": f"file://{b}"}],
    })
    stores = node_fs.open_stores(cfg)
    assert len(stores) == 2
    async with one_node(tmp_path / "n") as (fs, rt, _):
        fs.stores = stores
        await bucket_reads.attach(rt, stores, cfg.cache)
        await node_fs.bind_exports(cfg, fs, stores)
        root = await fs.export_root("/")
        names = {e.name for e in (await fs.readdir(ROOT, root, 0, b"\0" * 8, 100,
                                                   False)).entries}
        assert {b"in-a", b"other"} <= names and b"in-b" not in names
        other = await fs.export_root("/other")
        names = {e.name for e in (await fs.readdir(ROOT, other, 0, b"\0" * 8, 100,
                                                   False)).entries}
        assert b"in-b" in names and b"in-a" not in names
        await write_file(fs, other, b"new", b"to b")
        await write_file(fs, root, b"new", b"to a")
        flusher = Flusher(fs, FlushConfig(delay_s=0))
        for store in stores:
            for _ in range(5):
                res = await flusher.round(store, force=True)
                if not res.dirty_left and not res.deletes_left:
                    break
        assert (a / "new").read_bytes() == b"to a" and (b / "new").read_bytes() == b"to b"
        assert not (a / "other" / "new").exists()


async def claimed_by_a_dead_round(fs: ClusterBackend, name: bytes, data: bytes
                                  ) -> tuple[FileId, FileId, Flusher]:
    """(root, file, a flusher): `name` written in the root, its key claimed by a write-back
    round that then died (a claim of no round, as a crash leaves one after its lease)."""
    from server.fs.records import KeyClaim

    flusher = Flusher(fs, FlushConfig(delay_s=0))
    root = await fs.export_root("/")
    fid = await write_file(fs, root, name, data)
    assert await flusher._txn(flusher._root_group(STORE), [KeyClaim(STORE, name, fid.ino)])
    return root, fid, flusher


async def test_a_claim_left_at_a_name_the_file_moved_from_is_released_in_one_round(
        store: Any, tmp_path: Path) -> None:
    # The fault campaign's drain found such a claim still pending (FINDINGS.md 14): a round
    # claimed the file's key and died (or its upload was cut), the file was renamed before
    # the next round, and that round, writing the file at its new name, left the old claim.
    async with one_node(tmp_path / "n", store, BucketConfig(), bind_root=True) as (fs, _, _):
        root, fid, _ = await claimed_by_a_dead_round(fs, b"first", blob(5000, 14))
        await fs.rename(ROOT, root, b"first", root, b"second")
        fresh = Flusher(fs, FlushConfig(delay_s=0))
        res = await fresh.round(STORE, force=True)
        assert res.errors == [] and not res.dirty_left and not res.deletes_left
        assert await fresh.key_table(STORE) == {b"second": (fid.ino, KEY_LIVE)}
        assert sorted(await bucket_tree(store)) == ["second"]


async def test_a_claim_left_on_the_key_its_clean_file_is_at_becomes_live(
        store: Any, tmp_path: Path) -> None:
    # A round claimed the key and died; then the file was bound clean to the object at that
    # key (revalidation found a newer one in the bucket): the bucket holds the file's version,
    # and the entry says so after one round (a drain would otherwise never pass).
    async with one_node(tmp_path / "n", store, BucketConfig(), bind_root=True) as (fs, _, _):
        _, fid, flusher = await claimed_by_a_dead_round(fs, b"f", blob(3000, 15))
        from server.fs.records import SetOrigin
        etag = await store.put("f", blob(4000, 16))
        assert await flusher._txn(fs.ring.group_of_inode(fid.ino),
                                  [SetOrigin(fid.ino, STORE, b"f", etag.encode(), 4000, 1)])
        assert await flusher.key_table(STORE) == {b"f": (fid.ino, KEY_CLAIMED)}
        res = await Flusher(fs, FlushConfig(delay_s=0)).round(STORE, force=True)
        assert res.errors == [] and not res.dirty_left and not res.deletes_left
        assert await flusher.key_table(STORE) == {b"f": (fid.ino, KEY_LIVE)}
        assert (await bucket_tree(store))["f"] == blob(4000, 16)
