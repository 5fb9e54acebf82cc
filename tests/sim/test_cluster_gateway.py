"""ClusterBackend against simulated groups without faults (tests/sim/cluster_sim.run_gateway):
the single-node backend's NFS semantics, now across groups (RFC 1813 §3.3)."""

from __future__ import annotations

import pytest
import trio
from cluster_sim import MemAllocStore, SimRouter, World, run_gateway

from nfs_gateway.backend import (
    BadCookie,
    CreateMode,
    Cred,
    Exists,
    FileId,
    FileType,
    Inval,
    IsDir,
    NoEnt,
    NotDir,
    NotEmpty,
    NotSync,
    SetAttrs,
    StableHow,
    Stale,
)
from server.cluster.gateway import ClusterBackend
from server.cluster.inoalloc import InoAllocator

ROOT = Cred(0, 0)
CS = 4096  # the simulation's chunk size; inline files up to 1024 bytes


def go(fn, groups: int = 3):  # type: ignore[no-untyped-def]
    return run_gateway(fn, groups=groups)


async def names(fs: ClusterBackend, d: FileId) -> list[bytes]:
    out, cookie, verf = [], 0, bytes(8)
    while True:
        page = await fs.readdir(ROOT, d, cookie, verf, 3, False)
        out += [e.name for e in page.entries if e.name not in (b".", b"..")]
        if page.eof:
            return out
        cookie, verf = page.entries[-1].cookie, page.cookieverf


async def mkdirs(fs: ClusterBackend, world: World, n: int) -> list[FileId]:
    """Directories under the root until they cover every group, and n at least."""
    root = await fs.export_root("/")
    out, groups, i = [], set(), 0
    while len(out) < n or groups != set(world.ring.groups):
        made = await fs.mkdir(ROOT, root, b"d%d" % i, SetAttrs(mode=0o777))
        out.append(made.fid)
        groups.add(world.ring.group_of_inode(made.fid.ino))
        i += 1
    return out


def test_create_lookup_and_the_create_modes() -> None:
    async def body(fs: ClusterBackend, world: World) -> None:
        root = await fs.export_root("/")
        a = await fs.create(ROOT, root, b"a", CreateMode.GUARDED, SetAttrs(mode=0o640), None)
        assert world.ring.group_of_inode(a.fid.ino) == world.ring.group_of_inode(root.ino)
        assert a.attr.mode == 0o640 and a.attr.nlink == 1 and a.dir_wcc.after.mtime_ns > 0
        with pytest.raises(Exists):
            await fs.create(ROOT, root, b"a", CreateMode.GUARDED, SetAttrs(), None)
        e1 = await fs.create(ROOT, root, b"x", CreateMode.EXCLUSIVE, SetAttrs(), b"12345678")
        e2 = await fs.create(ROOT, root, b"x", CreateMode.EXCLUSIVE, SetAttrs(), b"12345678")
        assert e1.fid == e2.fid
        with pytest.raises(Exists):
            await fs.create(ROOT, root, b"x", CreateMode.EXCLUSIVE, SetAttrs(), b"other!!!")
        found = await fs.lookup(ROOT, root, b"a")
        assert found.fid == a.fid and found.attr.type == FileType.REG
        assert (await fs.lookup(ROOT, root, b"..")).fid == root
        with pytest.raises(NoEnt):
            await fs.lookup(ROOT, root, b"zz")
        await fs.write(ROOT, a.fid, 0, memoryview(b"data"), StableHow.UNSTABLE)
        again = await fs.create(ROOT, root, b"a", CreateMode.UNCHECKED, SetAttrs(size=0), None)
        assert again.fid == a.fid and again.attr.size == 0

    go(body)


def test_mkdir_spreads_directories_and_rmdir_needs_empty() -> None:
    async def body(fs: ClusterBackend, world: World) -> None:
        root = await fs.export_root("/")
        dirs = await mkdirs(fs, world, 3)
        assert (await fs.getattr(root)).nlink == 2 + len(dirs)
        d = dirs[0]
        await fs.symlink(ROOT, d, b"l", b"/t", SetAttrs())
        assert (await fs.readlink(ROOT, (await fs.lookup(ROOT, d, b"l")).fid))[0] == b"/t"
        with pytest.raises(NotEmpty):
            await fs.rmdir(ROOT, root, b"d0")
        with pytest.raises(NotDir):
            await fs.rmdir(ROOT, d, b"l")
        with pytest.raises(IsDir):
            await fs.remove(ROOT, root, b"d0")
        await fs.remove(ROOT, d, b"l")
        await fs.rmdir(ROOT, root, b"d0")
        with pytest.raises(Stale):
            await fs.getattr(d)
        assert (await fs.getattr(root)).nlink == 1 + len(dirs)

    go(body)


def test_rename_across_groups_replaces_targets_and_never_moves_a_dir_under_itself() -> None:
    async def body(fs: ClusterBackend, world: World) -> None:
        dirs = await mkdirs(fs, world, 3)
        groups = {world.ring.group_of_inode(d.ino): d for d in dirs}
        a, b = list(groups.values())[:2]  # directories in two different groups
        f = await fs.create(ROOT, a, b"f", CreateMode.GUARDED, SetAttrs(), None)
        g = await fs.create(ROOT, b, b"g", CreateMode.GUARDED, SetAttrs(), None)
        await fs.rename(ROOT, a, b"f", b, b"g")  # replaces g, atomically
        assert await names(fs, a) == [] and await names(fs, b) == [b"g"]
        assert (await fs.lookup(ROOT, b, b"g")).fid == f.fid
        with pytest.raises(Stale):
            await fs.getattr(g.fid)
        sub = await fs.mkdir(ROOT, a, b"sub", SetAttrs())
        deep = await fs.mkdir(ROOT, sub.fid, b"deep", SetAttrs())
        with pytest.raises(Inval):
            await fs.rename(ROOT, a, b"sub", deep.fid, b"x")
        with pytest.raises(Inval):
            await fs.rename(ROOT, a, b"sub", sub.fid, b"x")
        empty = await fs.mkdir(ROOT, b, b"empty", SetAttrs())
        await fs.rename(ROOT, a, b"sub", b, b"empty")  # onto an empty directory
        moved = await fs.lookup(ROOT, b, b"empty")
        assert moved.fid == sub.fid
        assert (await fs.lookup(ROOT, sub.fid, b"..")).fid == b
        with pytest.raises(Stale):
            await fs.getattr(empty.fid)
        assert (await fs.getattr(a)).nlink == 2 and (await fs.getattr(b)).nlink == 3
        await fs.mkdir(ROOT, a, b"full", SetAttrs())
        await fs.mkdir(ROOT, b, b"nonempty", SetAttrs())
        await fs.mkdir(ROOT, (await fs.lookup(ROOT, b, b"nonempty")).fid, b"x", SetAttrs())
        with pytest.raises(NotEmpty):
            await fs.rename(ROOT, a, b"full", b, b"nonempty")
        with pytest.raises(IsDir):
            await fs.rename(ROOT, b, b"g", b, b"nonempty")

    go(body)


def test_link_counts_and_last_unlink() -> None:
    async def body(fs: ClusterBackend, world: World) -> None:
        dirs = await mkdirs(fs, world, 2)
        f = await fs.create(ROOT, dirs[0], b"f", CreateMode.GUARDED, SetAttrs(), None)
        big = bytes(range(256)) * (3 * CS // 256)
        await fs.write(ROOT, f.fid, 0, memoryview(big), StableHow.UNSTABLE)
        for i, d in enumerate(dirs):
            await fs.link(ROOT, f.fid, d, b"l%d" % i)
        assert (await fs.getattr(f.fid)).nlink == 1 + len(dirs)
        with pytest.raises(Exists):
            await fs.link(ROOT, f.fid, dirs[0], b"f")
        with pytest.raises(IsDir):
            await fs.link(ROOT, dirs[1], dirs[0], b"dir")
        await fs.remove(ROOT, dirs[0], b"f")
        for i, d in enumerate(dirs):
            assert (await fs.read(ROOT, f.fid, 0, len(big))).data == big
            await fs.remove(ROOT, d, b"l%d" % i)
        with pytest.raises(Stale):
            await fs.getattr(f.fid)
        assert not any(g.chunks.data for g in world.groups.values())  # every chunk went

    go(body)


def test_write_read_across_chunks_truncate_and_holes() -> None:
    async def body(fs: ClusterBackend, world: World) -> dict:
        root = await fs.export_root("/")
        f = await fs.create(ROOT, root, b"f", CreateMode.GUARDED, SetAttrs(), None)
        w = await fs.write(ROOT, f.fid, 10, memoryview(b"small"), StableHow.UNSTABLE)
        assert w.committed == StableHow.FILE_SYNC and w.count == 5 and w.wcc.after.size == 15
        assert (await fs.read(ROOT, f.fid, 0, 100)).data == bytes(10) + b"small"
        data = bytes(i % 251 for i in range(2 * CS + 100))
        await fs.write(ROOT, f.fid, CS - 50, memoryview(data), StableHow.UNSTABLE)  # un-inlines
        model = bytearray(bytes(10) + b"small")
        model.extend(bytes(CS - 50 - len(model)))
        model += data
        got = await fs.read(ROOT, f.fid, 0, 1 << 20)
        assert got.data == bytes(model) and got.eof
        assert (await fs.read(ROOT, f.fid, CS + 7, 20)).data == bytes(model[CS + 7:CS + 27])
        await fs.setattr(ROOT, f.fid, SetAttrs(size=CS // 2), None)
        await fs.setattr(ROOT, f.fid, SetAttrs(size=3 * CS), None)  # the hole reads as zeros
        got = await fs.read(ROOT, f.fid, 0, 1 << 20)
        assert got.data == bytes(model[:CS // 2]) + bytes(3 * CS - CS // 2)
        stale = (await fs.getattr(f.fid)).ctime_ns - 1
        with pytest.raises(NotSync):
            await fs.setattr(ROOT, f.fid, SetAttrs(mode=0o600), stale)
        c = await fs.commit(ROOT, f.fid, 0, 0)
        assert c.verifier == w.verifier
        return {g: dict(world.groups[g].chunks.data) for g in world.groups}

    chunks = go(body, groups=4)
    assert len([g for g in chunks.values() if g]) >= 1


def test_concurrent_writes_to_one_file_take_turns_without_aborts() -> None:
    # gateway_data.py rules: each WRITE is a transaction on the inode; 16 at once through one
    # gateway aborted each other into backoffs; they take turns instead.
    async def body(fs: ClusterBackend, world: World) -> None:
        root = await fs.export_root("/")
        f = await fs.create(ROOT, root, b"f", CreateMode.GUARDED, SetAttrs(), None)
        pieces = {i: bytes([i + 1]) * (CS // 2) for i in range(16)}

        async def one(i: int) -> None:
            w = await fs.write(ROOT, f.fid, i * (CS // 2), memoryview(pieces[i]),
                               StableHow.UNSTABLE)
            assert w.count == CS // 2

        async with trio.open_nursery() as nursery:
            for i in range(16):
                nursery.start_soon(one, i)
        got = await fs.read(ROOT, f.fid, 0, 1 << 20)
        assert got.data == b"".join(pieces[i] for i in range(16))
        # A WRITE may still meet the previous one's locks at a group finishing its two-phase
        # commit (0-3 aborts in 5 runs); racing WRITEs aborted each other 25-33 times here.
        assert fs.stats["aborts"] < 8, fs.stats
        assert fs._write_locks == {}  # no lock kept once nobody writes

    go(body)


def test_readdir_plus_cookies_and_verifier() -> None:
    async def body(fs: ClusterBackend, world: World) -> None:
        root = await fs.export_root("/")
        dirs = await mkdirs(fs, world, 4)
        for i in range(5):
            await fs.create(ROOT, root, b"f%d" % i, CreateMode.GUARDED, SetAttrs(), None)
        page = await fs.readdir(ROOT, root, 0, bytes(8), 4, True)
        assert [e.name for e in page.entries][:2] == [b".", b".."] and not page.eof
        assert all(e.attr is not None for e in page.entries)
        seen = [e.name for e in page.entries[2:]]
        cookie = page.entries[-1].cookie
        while True:
            page = await fs.readdir(ROOT, root, cookie, page.cookieverf, 3, True)
            seen += [e.name for e in page.entries]
            for e in page.entries:
                assert e.fid is not None and e.attr is not None and e.attr.fileid == e.fileid
            if page.eof:
                break
            cookie = page.entries[-1].cookie
        assert sorted(seen) == sorted([b"d%d" % i for i in range(len(dirs))]
                                      + [b"f%d" % i for i in range(5)])
        with pytest.raises(BadCookie):
            await fs.readdir(ROOT, root, 3, b"badverf!", 3, False)

    go(body)


def test_fsstat_and_export_paths() -> None:
    async def body(fs: ClusterBackend, world: World) -> None:
        root = await fs.export_root("/")
        d = await fs.mkdir(ROOT, root, b"exp", SetAttrs())
        assert await fs.export_root("/exp") == d.fid
        with pytest.raises(NoEnt):
            await fs.export_root("/nope")
        stat, attr = await fs.fsstat(root)
        assert stat.tfiles >= 2 and attr.type == FileType.DIR
        mask, _ = await fs.access(Cred(1000, 1000), root, 0x3F)
        assert mask  # root dir mode 0777 in the simulation

    go(body)


def test_readdir_pages_of_one_entry() -> None:
    async def body(fs: ClusterBackend, world: World) -> None:
        root = await fs.export_root("/")
        for i in range(2):
            await fs.create(ROOT, root, b"f%d" % i, CreateMode.GUARDED, SetAttrs(), None)
        seen, cookie, verf = [], 0, bytes(8)
        for _ in range(10):
            page = await fs.readdir(ROOT, root, cookie, verf, 1, True)
            assert len(page.entries) <= 1
            seen += [e.name for e in page.entries]
            if page.eof:
                break
            cookie, verf = page.entries[-1].cookie, page.cookieverf
        assert seen == [b".", b"..", b"f0", b"f1"]

    go(body)


def test_mkdir_puts_a_new_directory_in_the_gateways_group_when_it_has_one() -> None:
    """cluster.dir_placement: "spread" (no home group) lands directories anywhere; "local"
    puts them in the gateway node's group, and the files made in them follow; a home group
    the ring does not place is ignored (spread)."""

    def gateway(world: World, node_id: int, home: int) -> ClusterBackend:
        alloc = InoAllocator(MemAllocStore(), node_id, 0, block=64)
        return ClusterBackend(SimRouter(world), alloc, world.config, 1, node_id, world.now_ns,
                              home_group=lambda: home)

    async def body(fs: ClusterBackend, world: World) -> None:
        root = await fs.export_root("/")
        spread = [await fs.mkdir(ROOT, root, b"s%d" % i, SetAttrs()) for i in range(30)]
        assert len({world.ring.group_of_inode(m.fid.ino) for m in spread}) > 1
        for home in world.ring.groups:
            local = gateway(world, 10 + home, home)
            made = [await local.mkdir(ROOT, root, b"h%d-%d" % (home, i), SetAttrs())
                    for i in range(10)]
            assert {world.ring.group_of_inode(m.fid.ino) for m in made} == {home}
            f = await local.create(ROOT, made[0].fid, b"f", CreateMode.GUARDED, SetAttrs(),
                                   None)
            assert world.ring.group_of_inode(f.fid.ino) == home
            assert (await fs.lookup(ROOT, made[0].fid, b"f")).fid == f.fid  # seen elsewhere
        unplaced = gateway(world, 20, 99)
        made = [await unplaced.mkdir(ROOT, root, b"u%d" % i, SetAttrs()) for i in range(30)]
        assert len({world.ring.group_of_inode(m.fid.ino) for m in made}) > 1

    go(body)
