"""The namespace loaded lazily from the bucket (server/cluster/gateway_bucket*.py), in one
process: real groups (Raft, LevelDB, chunk files, RPC planes on loopback), the gateways, and a
real object store (a local directory; the S3 test runs the same paths over SeaweedFS).

- READDIR lists exactly the bucket's tree (nested directories, an empty file, the marker of
  an empty directory, names with spaces and non-ASCII, 1000 files in one directory), on one
  group and on three; attributes come from the objects (size, LastModified) and their
  x-amz-meta-* (mode, uid, gid, mtime-ns, symlink-target); file bytes read back.
- LOOKUP in a never-listed directory sends one HEAD, not a listing; a missing name is asked
  once per ttl; the fast path declines while the bucket must be asked.
- After the ttl, objects added, changed and deleted in the bucket behind the cluster's back
  appear, change and vanish (READDIR and LOOKUP); a removed file's handle is stale; a file
  made through NFS in a bound directory stays.
- Two gateways loading the same directory at once: each name once, and fsck finds the
  cluster consistent.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from bucketnode import CountingStore
from serverproc import free_port

from nfs_gateway.backend import (
    Access,
    CreateMode,
    Cred,
    Exists,
    FileId,
    FileType,
    Jukebox,
    NoEnt,
    ServerFault,
    SetAttrs,
    StableHow,
    Stale,
)
from server.cluster import (
    bucket_reads,
    fsops,
    gateway_bucket_load,
    gateway_data,
    node_fs,
    queries,
)
from server.cluster import fsck as cluster_fsck
from server.cluster.bucket import BucketConfig
from server.cluster.bucket_heads import FANOUT_MIN, HeadFanout
from server.cluster.gateway import ClusterBackend
from server.cluster.group import GroupConfig, GroupRuntime
from server.cluster.inoalloc import InoAllocator
from server.cluster.nodelist import NodeInfo, NodeList
from server.cluster.router import GroupRouter
from server.cluster.statemachine import GroupStateMachine
from server.fs.config import FsConfig
from server.rpc.plane import RpcConfig, RpcPlane
from storage.chunks import ChunkStore
from storage.kv import KvStore
from storage.objstore.base import AccessDenied, StoreError, StoreUnavailable
from storage.objstore.localdir import LocalDirStore
from storage.objstore.url import open_store
from txn.state import TxnState

pytestmark = pytest.mark.integration

ROOT = Cred(0, 0)
CS = 256 << 10  # small chunks: a 600 KiB object spans three, placed in different groups
STORE = 3
VNODES = 64
BIG = 1000


class Clock:
    """The gateways' clock, moved by the test (the ttl is measured with it)."""

    def __init__(self) -> None:
        self.ns = time.time_ns()

    def __call__(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += int(seconds * 1e9)


@asynccontextmanager
async def cluster(tmp_path: Path, groups: int, store: Any, bucket: BucketConfig,
                  clock: Clock, head_stores: Callable[[int], dict[int, Any]] | None = None
                  ) -> AsyncIterator[list[ClusterBackend]]:
    """`groups` one-member groups, one node each, and a gateway on every node; the root is
    bound to `store`. Each node serves its peers' HEADs with head_stores(node id) (default:
    the same stores), as the node does (bucket_heads.py)."""
    fsc = FsConfig(chunk_size=CS, inline_max_bytes=1024)
    infos = [NodeInfo(i, i, f"127.0.0.1:{free_port()}", "127.0.0.1:2049")
             for i in range(1, groups + 1)]
    nodelist = NodeList(1, tuple(infos))
    root_group = nodelist.ring(VNODES).group_of_inode(1)
    stores = {STORE: store}
    opened: list[tuple[KvStore, ChunkStore]] = []
    nodes = []
    for info in infos:
        data = tmp_path / f"n{info.node_id}"
        kv = await KvStore.open(data / "meta")
        chunks = ChunkStore(data / "chunks")
        opened.append((kv, chunks))
        plane = RpcPlane(RpcConfig(node_id=info.node_id, cluster_secret=b"s" * 20,
                                   port=int(info.rpc.rsplit(":", 1)[1])))
        for other in infos:
            if other.node_id != info.node_id:
                plane.add_peer(other.node_id, f"ws://{other.rpc}/")
        app = fsops.FsApplication(fsc)
        sm = GroupStateMachine(kv, chunks, app, TxnState(app), fsops.perform_effects_sync)
        holder: list[GroupRouter] = []
        runtime = await GroupRuntime.open(
            node_id=info.node_id, group=info.group, members=[info.node_id], kv=kv, sm=sm,
            plane=plane, answer=queries.answer,
            root_ops=node_fs.root_ops(fsc) if info.group == root_group else None,
            nodelist_bytes=nodelist.encode(),
            post=lambda g, m, holder=holder: holder[0].post(g, m), config=GroupConfig())
        router = GroupRouter(plane, info.node_id, nodelist, runtime, vnodes=VNODES,
                             request_timeout_s=20)
        holder.append(router)
        await bucket_reads.attach(runtime, stores, bucket)
        heads = HeadFanout(plane, head_stores(info.node_id) if head_stores else stores,
                           lambda me=info.node_id: [n.node_id for n in infos if n.node_id != me])
        heads.serve()
        nodes.append((kv, plane, runtime, router, heads))
    try:
        async with trio.open_nursery() as nursery:
            for _, plane, runtime, router, _ in nodes:
                await nursery.start(plane.run)
                await nursery.start(router.run)
                await nursery.start(runtime.run)
            gateways = []
            for kv, _, runtime, router, heads in nodes:
                await runtime.wait_serving()
                fs = ClusterBackend(router, await InoAllocator.open(kv, runtime.node_id), fsc,
                                    1, runtime.node_id, clock, stores=stores, bucket=bucket)
                fs._nursery = nursery
                fs.heads = heads
                gateways.append(fs)
            with trio.fail_after(20):
                await node_fs.wait_root(gateways[0])
            await gateways[0].bind_store("/", STORE)
            yield gateways
            nursery.cancel_scope.cancel()
    finally:
        for kv, chunks in opened:
            chunks.close_sync()
            await kv.close()


# -- the bucket's tree --------------------------------------------------------------------


def blob(n: int, seed: int = 1) -> bytes:
    out = bytearray()
    while len(out) < n:
        out += hashlib.sha256(b"%d:%d" % (seed, len(out))).digest()
    return bytes(out[:n])


MODE_META = {"mode": str(0o100640), "uid": "1000", "gid": "100"}
MTIME_META = {"mtime-ns": "1234567890123456789"}


async def fill(root: Path) -> LocalDirStore:
    """The tree every test starts from; the 1000 files are dropped in as a user would."""
    store = LocalDirStore(root)
    await store.put("a.txt", b"hello", metadata=MODE_META)
    await store.put("empty", b"")
    await store.put("dir/", b"", metadata={"mode": str(0o750), "gid": "7"})
    await store.put("dir/sub/deep.bin", blob(600 << 10))
    await store.put("dir/x y.txt", b"spaces")
    await store.put("dir/caf\u00e9 \u2615.txt", "non-ASCII \u00e9".encode())
    await store.put("dir/old.txt", b"mtime", metadata=MTIME_META)
    await store.put("emptydir/", b"")
    await store.put("link", b"", metadata={"symlink-target": "dir/x%20y.txt",
                                           "type": "symlink"})
    (root / "big").mkdir()
    for i in range(BIG):
        (root / "big" / f"f{i:04d}").write_bytes(b"%d" % i)
    return store


def tree_of(root: Path) -> dict[str, tuple[str, int]]:
    """path -> (kind, size) of a local directory store, as the namespace should show it."""
    out: dict[str, tuple[str, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == ".objcache" or rel.startswith(".objcache/"):
            continue
        for name in dirnames:
            if rel == "." and name == ".objcache":
                continue
            out[os.path.normpath(os.path.join(rel, name))] = ("d", 0)
        for name in filenames:
            size = os.path.getsize(os.path.join(dirpath, name))
            out[os.path.normpath(os.path.join(rel, name))] = ("f", size)
    out["link"] = ("l", len(b"dir/x y.txt"))
    return out


async def listing(fs: ClusterBackend, fid: FileId, page: int = 333) -> dict[bytes, Any]:
    """name -> DirEntry of a whole directory by READDIRPLUS pages."""
    out: dict[bytes, Any] = {}
    cookie, verf = 0, b"\0" * 8
    while True:
        r = await fs.readdir(ROOT, fid, cookie, verf, page, True)
        for e in r.entries:
            if e.name not in (b".", b".."):
                assert e.name not in out, f"{e.name!r} listed twice"
                out[e.name] = e
            cookie = e.cookie
        verf = r.cookieverf
        if r.eof:
            return out


async def walk(fs: ClusterBackend, fid: FileId, prefix: str = "") -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for name, e in (await listing(fs, fid)).items():
        path = prefix + name.decode()
        kind = {FileType.DIR: "d", FileType.REG: "f", FileType.LNK: "l"}[e.attr.type]
        out[path] = (kind, 0 if kind == "d" else e.attr.size)
        if kind == "d":
            out.update(await walk(fs, e.fid, path + "/"))
    return out


async def read_all(fs: ClusterBackend, fid: FileId) -> bytes:
    out = bytearray()
    while True:
        r = await fs.read(ROOT, fid, len(out), 128 << 10)
        out += r.data
        if r.eof:
            return bytes(out)


async def path(fs: ClusterBackend, *names: str) -> FileId:
    fid = await fs.export_root("/")
    for n in names:
        fid = (await fs.lookup(ROOT, fid, n.encode())).fid
    return fid


# -- tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("groups", [1, 3])
async def test_readdir_shows_the_bucket_tree_with_its_attributes(tmp_path: Path,
                                                                 groups: int) -> None:
    store = await fill(tmp_path / "bucket")
    clock = Clock()
    async with cluster(tmp_path, groups, store, BucketConfig(ttl_s=1000), clock) as gws:
        fs = gws[-1]
        root = await fs.export_root("/")
        assert await walk(fs, root) == tree_of(tmp_path / "bucket")
        # Attributes: the object's size and LastModified, metadata where it was put.
        top = await listing(fs, root)
        a = top[b"a.txt"].attr
        head = await store.head("a.txt")
        assert head is not None
        assert (a.size, a.mtime_ns, a.mode, a.uid, a.gid) == (5, head.mtime_ns, 0o640, 1000, 100)
        e = top[b"empty"].attr
        assert (e.size, e.mode, e.uid, e.gid) == (0, 0o644, 0, 0)
        d = top[b"dir"].attr
        assert (d.type, d.mode, d.gid, d.nlink) == (FileType.DIR, 0o750, 7, 3)  # `sub` in it
        assert top[b"emptydir"].attr.nlink == 2
        assert (await fs.readlink(ROOT, top[b"link"].fid))[0] == b"dir/x y.txt"
        old = await fs.lookup(ROOT, top[b"dir"].fid, b"old.txt")
        assert old.attr.mtime_ns == 1234567890123456789
        # The bytes are the object's (a three-chunk object through the data path).
        deep = await path(fs, "dir", "sub", "deep.bin")
        assert await read_all(fs, deep) == blob(600 << 10)
        uni = await fs.lookup(ROOT, top[b"dir"].fid, "caf\u00e9 \u2615.txt".encode())
        assert await read_all(fs, uni.fid) == "non-ASCII \u00e9".encode()
        if groups > 1:  # another gateway sees the same, without loading (it is fresh)
            assert await walk(gws[0], root) == tree_of(tmp_path / "bucket")
            assert gws[0].bucket_stats().get("loads", 0) == 0


async def test_lookup_in_a_never_listed_directory_sends_one_head(tmp_path: Path) -> None:
    store = CountingStore(await fill(tmp_path / "bucket"))
    clock = Clock()
    async with cluster(tmp_path, 1, store, BucketConfig(ttl_s=60), clock) as (fs,):
        root = await fs.export_root("/")
        store.calls.clear()
        big = await fs.lookup(ROOT, root, b"big")  # not an object: a one-key listing says dir
        assert big.attr.type == FileType.DIR
        assert store.calls == {"head": 2, "list_page": 1}  # the object, the listing, marker
        store.calls.clear()
        f = await fs.lookup(ROOT, big.fid, b"f0500")
        assert (f.attr.type, f.attr.size) == (FileType.REG, 3)
        assert store.calls == {"head": 1}
        assert await read_all(fs, f.fid) == b"500"
        # Answered from the state now: no request, and the fast path answers too.
        store.calls.clear()
        assert await fs.lookup(ROOT, big.fid, b"f0500") == f
        assert fs.lookup_nowait(ROOT, big.fid, b"f0500") == f
        assert store.calls == {}
        # A missing name: asked once (HEAD, then a listing of name/), remembered for the ttl.
        assert fs.lookup_nowait(ROOT, big.fid, b"nope") is None  # the bucket must be asked
        with pytest.raises(NoEnt):
            await fs.lookup(ROOT, big.fid, b"nope")
        assert store.calls == {"head": 1, "list_page": 1}
        with pytest.raises(NoEnt):
            fs.lookup_nowait(ROOT, big.fid, b"nope")
        with pytest.raises(NoEnt):
            await fs.lookup(ROOT, big.fid, b"nope")
        assert store.calls == {"head": 1, "list_page": 1}
        # READDIR loads the rest: every name once, f0500 kept as it was (not asked again).
        store.calls.clear()
        names = await listing(fs, big.fid)
        assert sorted(names) == [b"f%04d" % i for i in range(BIG)]
        assert names[b"f0500"].fid == f.fid
        assert store.calls["head"] == BIG - 1 and store.calls["list_page"] == 2  # 1001 keys


async def test_after_the_ttl_the_bucket_changes_show(tmp_path: Path) -> None:
    bucket_dir = tmp_path / "bucket"
    store = await fill(bucket_dir)
    clock = Clock()
    async with cluster(tmp_path, 3, store, BucketConfig(ttl_s=30), clock) as gws:
        fs = gws[0]
        dir_fid = await path(fs, "dir")
        before = await listing(fs, dir_fid)
        x = before[b"x y.txt"].fid
        old = before[b"old.txt"].fid
        mine = (await fs.create(ROOT, dir_fid, b"mine", CreateMode.GUARDED, SetAttrs(),
                                None)).fid
        await fs.write(ROOT, mine, 0, memoryview(b"local"), StableHow.FILE_SYNC)
        # Behind the cluster's back: one added, one changed (a bigger object), one deleted.
        await store.put("dir/new.txt", b"new one")
        await store.put("dir/x y.txt", blob(300 << 10, seed=9))
        await store.delete_many(["dir/old.txt"])
        assert set(await listing(fs, dir_fid)) == {*before, b"mine"}  # fresh: not asked
        clock.advance(31)
        after = await listing(fs, dir_fid)
        assert set(after) == {*before, b"new.txt", b"mine"} - {b"old.txt"}
        assert after[b"x y.txt"].fid == x  # the same file, its new version
        assert after[b"x y.txt"].attr.size == 300 << 10
        assert await read_all(fs, x) == blob(300 << 10, seed=9)
        assert await read_all(fs, after[b"new.txt"].fid) == b"new one"
        with pytest.raises(Stale):
            await fs.getattr(old)
        assert await read_all(fs, mine) == b"local"  # made through NFS: never relisted away
        # LOOKUP of a name in a directory whose listing went stale, through another gateway.
        await store.put("dir/x y.txt", b"small again")
        await store.put("dir/later.txt", b"later")
        clock.advance(31)
        other = gws[1]
        assert (await other.lookup(ROOT, dir_fid, b"x y.txt")).attr.size == len(b"small again")
        assert (await other.lookup(ROOT, dir_fid, b"later.txt")).attr.size == 5


async def test_lookup_revalidates_one_entry_after_the_ttl(tmp_path: Path) -> None:
    store = CountingStore(await fill(tmp_path / "bucket"))
    clock = Clock()
    async with cluster(tmp_path, 1, store, BucketConfig(ttl_s=30), clock) as (fs,):
        big = await path(fs, "big")  # never listed: entries come one LOOKUP at a time
        f = await fs.lookup(ROOT, big, b"f0007")
        assert await read_all(fs, f.fid) == b"7"
        await store.put("big/f0007", b"seven, longer")
        clock.advance(10)
        assert (await fs.lookup(ROOT, big, b"f0007")).attr.size == 1  # checked 10 s ago
        clock.advance(21)
        assert fs.lookup_nowait(ROOT, big, b"f0007") is None  # the bucket must be asked
        store.calls.clear()
        now = await fs.lookup(ROOT, big, b"f0007")
        assert store.calls == {"head": 1}
        assert now.fid == f.fid and now.attr.size == len(b"seven, longer")
        assert await read_all(fs, f.fid) == b"seven, longer"
        await store.delete_many(["big/f0007"])
        clock.advance(31)
        with pytest.raises(NoEnt):
            await fs.lookup(ROOT, big, b"f0007")
        with pytest.raises(Stale):
            await fs.getattr(f.fid)
        # A read that finds the object changed revalidates the file (gateway_data's hook).
        g = await fs.lookup(ROOT, big, b"f0008")
        await store.put("big/f0008", b"eight!")
        with pytest.raises(Jukebox):  # the read is refused; the client tries again
            await read_all(fs, g.fid)
        assert await read_all(fs, g.fid) == b"eight!"


async def test_two_gateways_loading_one_directory_make_each_name_once(tmp_path: Path) -> None:
    store = await fill(tmp_path / "bucket")
    clock = Clock()
    async with cluster(tmp_path, 3, store, BucketConfig(ttl_s=1000), clock) as gws:
        roots = [await fs.export_root("/") for fs in gws[:2]]
        results: dict[int, dict[bytes, Any]] = {}

        async def load(i: int) -> None:
            big = (await gws[i].lookup(ROOT, roots[i], b"big")).fid
            results[i] = await listing(gws[i], big)

        async with trio.open_nursery() as nursery:
            for i in range(2):
                nursery.start_soon(load, i)
        want = [b"f%04d" % i for i in range(BIG)]
        assert sorted(results[0]) == sorted(results[1]) == want
        assert {n: e.fid for n, e in results[0].items()} == {
            n: e.fid for n, e in results[1].items()}
        both = [await walk(fs, roots[i]) for i, fs in enumerate(gws[:2])]
        assert both[0] == both[1] == tree_of(tmp_path / "bucket")
        problems, per_group = await cluster_fsck.fsck(gws[0].router, VNODES, settle_s=5)
        assert problems == []
        # Every object and directory once, plus the root.
        assert cluster_fsck.summary(per_group)["inodes"] == len(tree_of(tmp_path / "bucket")) + 1


class FailingStore(CountingStore):
    """A real store whose listings and HEADs fail with `error` while it is set."""

    error: Exception | None = None

    def __getattr__(self, name: str) -> Any:
        call = super().__getattr__(name)
        if name not in ("list_page", "head"):
            return call

        async def failing(*args: Any, **kwargs: Any) -> Any:
            if self.error is not None:
                raise self.error
            return await call(*args, **kwargs)

        return failing


async def test_store_errors_become_nfs_errors_and_leave_nothing_half_done(
        tmp_path: Path) -> None:
    store = FailingStore(await fill(tmp_path / "bucket"))
    clock = Clock()
    async with cluster(tmp_path, 1, store, BucketConfig(ttl_s=30), clock) as (fs,):
        root = await fs.export_root("/")
        for error, nfs_error in ((StoreUnavailable("down"), Jukebox),
                                 (AccessDenied("no"), Access),
                                 (StoreError("odd"), ServerFault)):
            store.error = error
            with pytest.raises(nfs_error):
                await fs.readdir(ROOT, root, 0, b"\0" * 8, 100, True)
            with pytest.raises(nfs_error):
                await fs.lookup(ROOT, root, b"a.txt")
        store.error = None
        assert await walk(fs, root) == tree_of(tmp_path / "bucket")


async def test_the_same_over_s3(tmp_path: Path, s3_bucket: Any) -> None:
    """SeaweedFS: markers are optional (a prefix with none is a directory), an object next to
    a prefix of its name gives way to the directory, and changes show after the ttl."""
    store = open_store(s3_bucket.spec("ns"))
    try:
        await store.put("a.txt", b"hello", metadata=MODE_META)
        await store.put("empty", b"")
        await store.put("emptydir/", b"")
        await store.put("nomarker/deep/f", blob(600 << 10))
        await store.put("both", b"the object")
        await store.put("both/inner", b"in")
        await store.put("sp ace/caf\u00e9", b"x")
        want = {"a.txt": ("f", 5), "empty": ("f", 0), "emptydir": ("d", 0),
                "nomarker": ("d", 0), "nomarker/deep": ("d", 0),
                "nomarker/deep/f": ("f", 600 << 10), "both": ("d", 0),
                "both/inner": ("f", 2), "sp ace": ("d", 0), "sp ace/caf\u00e9": ("f", 1)}
        clock = Clock()
        async with cluster(tmp_path, 1, store, BucketConfig(ttl_s=30), clock) as (fs,):
            root = await fs.export_root("/")
            assert await walk(fs, root) == want
            a = await fs.lookup(ROOT, root, b"a.txt")
            assert (a.attr.mode, a.attr.uid, a.attr.gid) == (0o640, 1000, 100)
            deep = await path(fs, "nomarker", "deep", "f")
            assert await read_all(fs, deep) == blob(600 << 10)
            await store.put("a.txt", b"changed!")
            await store.delete_many(["empty"])
            await store.put("new", b"n")
            clock.advance(31)
            top = await listing(fs, root)
            assert set(top) == {b"a.txt", b"emptydir", b"nomarker", b"both", b"sp ace", b"new"}
            assert await read_all(fs, a.fid) == b"changed!"
    finally:
        await store.aclose()


async def test_getattr_revalidates_a_file_after_the_ttl(tmp_path: Path) -> None:
    """Clients revalidate cached files with GETATTR (no LOOKUP while the directory looks
    unchanged): after the ttl a GETATTR HEADs the object, shows a new version, and a file
    whose object is gone answers STALE."""
    store = CountingStore(await fill(tmp_path / "bucket"))
    clock = Clock()
    async with cluster(tmp_path, 1, store, BucketConfig(ttl_s=30), clock) as (fs,):
        big = await path(fs, "big")
        f = (await fs.lookup(ROOT, big, b"f0003")).fid
        await store.put("big/f0003", b"three, now longer")
        clock.advance(10)
        assert (await fs.getattr(f)).size == 1  # within the ttl: the state answers
        assert fs.getattr_nowait(f) is not None
        clock.advance(21)
        assert fs.getattr_nowait(f) is None  # the bucket must be asked
        store.calls.clear()
        assert (await fs.getattr(f)).size == len(b"three, now longer")
        assert store.calls == {"head": 1}  # one HEAD finds the new version and its size
        assert await read_all(fs, f) == b"three, now longer"
        await store.delete_many(["big/f0003"])
        clock.advance(31)
        with pytest.raises(Stale):
            await fs.getattr(f)
        with pytest.raises(NoEnt):
            await fs.lookup(ROOT, big, b"f0003")


async def test_a_fresh_listing_vouches_for_its_files_on_every_gateway(tmp_path: Path) -> None:
    """A listing saw every object's etag when it was loaded: within the ttl of that, LOOKUP,
    READDIRPLUS and GETATTR of its files send nothing to the bucket, through any gateway
    (a model read on a second node after the first: no HEAD per file). After the ttl, one
    GETATTR is one HEAD, and a change made behind the cluster's back shows."""
    store = CountingStore(await fill(tmp_path / "bucket"))
    clock = Clock()
    # GETs and listings ahead send requests of their own: they have their own tests.
    bucket = BucketConfig(ttl_s=30, prefetch_listed_bytes=0, list_ahead_dirs=0)
    async with cluster(tmp_path, 3, store, bucket, clock) as gws:
        dir_fid = await path(gws[0], "dir")
        await listing(gws[0], dir_fid)  # loaded now, through gateway 0
        clock.advance(20)
        store.calls.clear()
        by_lookup = await gws[1].lookup(ROOT, dir_fid, b"x y.txt")
        assert (await gws[1].getattr(by_lookup.fid)).size == len(b"spaces")
        entries = await listing(gws[2], dir_fid)
        for name in (b"old.txt", "caf\u00e9 \u2615.txt".encode()):
            await gws[2].getattr(entries[name].fid)
        assert store.calls == {}
        # ttl counts from the listing, not from the LOOKUP: 31 s after it, GETATTR asks.
        await store.put("dir/x y.txt", b"spaces, and more")
        clock.advance(11)
        store.calls.clear()
        assert (await gws[1].getattr(by_lookup.fid)).size == len(b"spaces, and more")
        assert store.calls == {"head": 1}


async def test_changes_see_names_only_the_bucket_has(tmp_path: Path) -> None:
    """CREATE, REMOVE and RENAME in a directory never listed find the bucket's names as
    LOOKUP does: a GUARDED create answers EXIST, a remove removes, a rename moves."""
    store = CountingStore(await fill(tmp_path / "bucket"))
    clock = Clock()
    async with cluster(tmp_path, 1, store, BucketConfig(ttl_s=30), clock) as (fs,):
        big = await path(fs, "big")  # never listed
        with pytest.raises(Exists):
            await fs.create(ROOT, big, b"f0001", CreateMode.GUARDED, SetAttrs(), None)
        await fs.remove(ROOT, big, b"f0002")
        with pytest.raises(NoEnt):
            await fs.lookup(ROOT, big, b"f0002")
        await fs.rename(ROOT, big, b"f0003", big, b"renamed")
        got = await fs.lookup(ROOT, big, b"renamed")
        assert await read_all(fs, got.fid) == b"3"


@pytest.mark.parametrize("budget_files", [8, 0, 12])
async def test_readdirplus_fetches_small_files_ahead_smallest_first(
        tmp_path: Path, budget_files: int) -> None:
    # A reader that lists a model directory and then opens its small files one after another
    # finds them cached: READDIRPLUS had their owners fetch them, smallest first, within the
    # budget (cache.prefetch_listed_bytes). A file over one chunk comes after every small
    # one, and only its first chunk: with budget for all 12 small files and one chunk, the
    # shard's chunk 0 is fetched ahead; its chunk 1 is left to the read.
    store = CountingStore(LocalDirStore(tmp_path / "bucket"))
    small = {f"s{i:02d}.json": blob(1000 + 7000 * i, seed=i) for i in range(12)}
    for name, data in small.items():
        await store.put(f"m/{name}", data)
    await store.put("m/shard.bin", blob(CS + 5))
    by_size = sorted(small, key=lambda n: len(small[n]))
    budget = sum(len(small[n]) for n in by_size[:budget_files])
    shard_ahead = budget_files == len(small)
    if shard_ahead:
        budget += CS
    bucket = BucketConfig(capacity_bytes=64 << 20, prefetch_listed_bytes=budget)
    async with cluster(tmp_path, 3, store, bucket, Clock()) as gws:
        m = await path(gws[1], "m")
        assert set(await listing(gws[1], m)) == {n.encode() for n in [*small, "shard.bin"]}
        ahead = budget_files + shard_ahead
        with trio.fail_after(10):
            while store.calls["get_range"] < ahead:
                await trio.sleep(0.01)
        await trio.sleep(0.3)  # anything more would have been asked by now
        assert store.calls["get_range"] == ahead
        for i, name in enumerate(by_size):  # read through another gateway
            fid = await path(gws[2], "m", name)
            assert await read_all(gws[2], fid) == small[name]
            assert store.calls["get_range"] == ahead + max(0, i + 1 - budget_files)
        shard = await path(gws[0], "m", "shard.bin")
        assert await read_all(gws[0], shard) == blob(CS + 5)
        assert store.calls["get_range"] == 12 + 2  # two chunks, each one GET


@pytest.mark.parametrize("ahead", [3, 0])
async def test_readdirplus_lists_small_subdirectories_ahead(tmp_path: Path, ahead: int) -> None:
    # A walker reads a directory, then descends: READDIRPLUS has the subdirectories loaded
    # in the background meanwhile (cache.list_ahead_dirs of them), unless a first look finds
    # one bigger than LIST_AHEAD_KEYS names (its HEADs wait until someone reads it).
    store = CountingStore(LocalDirStore(tmp_path / "bucket"))
    for i in range(gateway_bucket_load.LIST_AHEAD_KEYS + 1):
        await store.put(f"top/0big/f{i:03d}", b"b")
    for d in ("d1", "d2", "d3"):
        for i in range(3):
            await store.put(f"top/{d}/f{i}", d.encode())
    bucket = BucketConfig(list_ahead_dirs=ahead, prefetch_listed_bytes=0)
    async with cluster(tmp_path, 1, store, bucket, Clock()) as gws:
        fs = gws[0]
        top = await path(fs, "top")
        assert set(await listing(fs, top)) == {b"0big", b"d1", b"d2", b"d3"}
        with trio.fail_after(10):
            while fs._bmem.ahead:
                await trio.sleep(0.01)
        stats = fs.bucket_stats()
        # 0big takes the first of the 3 tries and is skipped: d1 and d2 are loaded.
        got = (stats.get("ahead", 0), stats.get("ahead_skipped", 0))
        assert got == ((2, 1) if ahead else (0, 0))
        for d, loaded in (("d1", ahead), ("d2", ahead), ("d3", 0), ("0big", 0)):
            lists, heads = store.calls["list_page"], store.calls["head"]
            names = await listing(fs, await path(fs, "top", d))
            assert len(names) == (3 if d != "0big" else gateway_bucket_load.LIST_AHEAD_KEYS + 1)
            sent = (store.calls["list_page"] - lists, store.calls["head"] - heads)
            if loaded:
                assert sent == (0, 0), d  # fresh already: the state answers
            else:
                assert sent[0] >= 1, d  # listed now


async def test_a_load_ahead_skips_a_directory_the_walker_loaded_first(tmp_path: Path) -> None:
    # The loads ahead wait for a slot; meanwhile the walker descends into d1 and loads it
    # itself. When its slot comes, the load ahead of d1 looks at d1 as it is now (fresh) and
    # sends nothing; d2 is still loaded ahead.
    store = CountingStore(LocalDirStore(tmp_path / "bucket"))
    for d in ("d1", "d2"):
        await store.put(f"top/{d}/f", d.encode())
    async with cluster(tmp_path, 1, store, BucketConfig(prefetch_listed_bytes=0),
                       Clock()) as gws:
        fs = gws[0]
        slots = fs._bmem.ahead_slots
        held = [object() for _ in range(gateway_bucket_load.LIST_AHEAD_PARALLEL)]
        for borrower in held:
            await slots.acquire_on_behalf_of(borrower)
        top = await path(fs, "top")
        await listing(fs, top)
        assert fs._bmem.ahead == {(await fs.lookup(ROOT, top, d)).fid.ino
                                  for d in (b"d1", b"d2")}
        lists = store.calls["list_page"]
        assert set(await listing(fs, await path(fs, "top", "d1"))) == {b"f"}
        assert store.calls["list_page"] == lists + 1  # the walker's own load
        for borrower in held:
            slots.release_on_behalf_of(borrower)
        with trio.fail_after(10):
            while fs._bmem.ahead:
                await trio.sleep(0.01)
        assert fs.bucket_stats().get("ahead") == 1  # d2 only
        assert store.calls["list_page"] == lists + 1 + 2  # d2: its first look and its load


async def test_admin_walks_fetch_and_list_nothing_ahead(tmp_path: Path) -> None:
    # An `admin evict` walk reads directories as root (ClusterBackend.children): it must
    # not fetch what it is about to drop, nor load subdirectories; a client's READDIRPLUS does.
    store = CountingStore(LocalDirStore(tmp_path / "bucket"))
    await store.put("m/a.json", b"x" * 100)
    await store.put("m/sub/f", b"y")
    async with cluster(tmp_path, 1, store, BucketConfig(), Clock()) as gws:
        fs = gws[0]
        m = await path(fs, "m")
        assert sorted([e.name async for e in fs.children(m, plus=True)]) == [b"a.json", b"sub"]
        await trio.sleep(0.3)  # anything ahead would have been asked by now
        assert store.calls["get_range"] == 0 and "ahead" not in fs.bucket_stats()
        await listing(fs, m)
        with trio.fail_after(10):
            while store.calls["get_range"] == 0 or fs.bucket_stats().get("ahead") != 1:
                await trio.sleep(0.01)


async def test_a_large_listing_spreads_its_heads_over_the_nodes(tmp_path: Path) -> None:
    # A directory of many new objects: the loading gateway HEADs a third of them, each peer
    # a third (bucket_heads.py), and the attributes from x-amz-meta-* are the same. Node 3
    # has no such export: its share fails and the loader HEADs it instead.
    n = 3 * FANOUT_MIN
    store = CountingStore(LocalDirStore(tmp_path / "bucket"))
    for i in range(n):
        meta = MODE_META if i % 2 else {}
        await store.put(f"wide/f{i:03d}", b"x" * i, metadata=meta)
    bucket = BucketConfig(prefetch_listed_bytes=0)
    async with cluster(tmp_path, 3, store, bucket, Clock(),
                       head_stores=lambda node: {} if node == 3 else {STORE: store}) as gws:
        wide = await path(gws[0], "wide")
        before = store.calls["head"]
        entries = await listing(gws[0], wide)
        assert store.calls["head"] - before == n  # each object once
        for i in range(n):
            a = entries[b"f%03d" % i].attr
            mode, uid = (0o640, 1000) if i % 2 else (0o644, 0)
            assert (a.size, a.mode, a.uid) == (i, mode, uid), i
        fans = [fs.heads for fs in gws]
        assert all(f is not None for f in fans)
        assert fans[0].stats == {"batches": 1, "shares_sent": 2, "shares_failed": 1,
                                 "shares_served": 0}
        assert fans[1].stats["shares_served"] == 1 and fans[2].stats["shares_served"] == 0


class GatedStore(CountingStore):
    """GETs wait until the test opens the gate (prefetches stay pending)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.gate = trio.Event()

    async def get_range(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["get_range"] += 1
        await self.gate.wait()
        return await self.inner.get_range(*args, **kwargs)


async def test_listings_add_no_prefetch_past_the_pending_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A walk of a big tree lists faster than its small files can be fetched: past
    # LISTED_PREFETCH_QUEUE pending, a listing asks for nothing more ahead.
    monkeypatch.setattr(gateway_data, "LISTED_PREFETCH_QUEUE", 3)
    store = GatedStore(LocalDirStore(tmp_path / "bucket"))
    for d in ("a", "b"):
        for i in range(5):
            await store.inner.put(f"{d}/f{i}", b"%s%d" % (d.encode(), i))
    async with cluster(tmp_path, 1, store, BucketConfig(), Clock()) as gws:
        fs = gws[0]
        for d in ("a", "b"):
            await listing(fs, await path(fs, d))
        await trio.sleep(0.3)
        assert store.calls["get_range"] == 3 and fs._listed_pending == 3
        store.gate.set()
        with trio.fail_after(10):
            while fs._listed_pending:
                await trio.sleep(0.01)
        assert store.calls["get_range"] == 3
        await listing(fs, await path(fs, "b"))  # b's files were not asked: now 3 of them
        with trio.fail_after(10):
            while fs._listed_pending:
                await trio.sleep(0.01)
        assert store.calls["get_range"] == 3 + 3
