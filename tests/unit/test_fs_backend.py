"""LocalBackend: every Backend method's semantics and errors (RFC 1813 §3.3)."""

from __future__ import annotations

import fs_helpers
import pytest
import trio
from fs_helpers import ALICE, BOB, CHUNK, ROOT, get, mkfile, names, put

from nfs_gateway.backend import (
    ACCESS_LOOKUP,
    ACCESS_MODIFY,
    ACCESS_READ,
    Access,
    BadType,
    CreateMode,
    Cred,
    Exists,
    FBig,
    FileId,
    FileSlice,
    FileType,
    Inval,
    IsDir,
    NameTooLong,
    NoEnt,
    NotDir,
    NotSync,
    Perm,
    SetAttrs,
    StableHow,
    Stale,
    TimeHow,
)
from server.fs.backend import LocalBackend
from server.fs.config import FsConfig

fs, root, home = fs_helpers.fs, fs_helpers.root, fs_helpers.home  # fixtures


# -- root, getattr, lookup (§3.3.1, §3.3.3) ----------------------------------------------------


async def test_root_is_a_root_owned_0755_directory(fs, root):
    a = await fs.getattr(root)
    assert (a.type, a.mode, a.uid, a.gid, a.nlink, a.fileid) == (FileType.DIR, 0o755, 0, 0, 2, 1)
    assert a.fsid == fs.fsid


async def test_export_root_walks_paths(fs, root, home):
    assert await fs.export_root("/home") == home
    with pytest.raises(NoEnt):
        await fs.export_root("/nope")
    await mkfile(fs, home, b"f")
    with pytest.raises(NotDir):
        await fs.export_root("/home/f")


async def test_lookup_dot_dotdot_and_names(fs, root, home):
    f = await mkfile(fs, home, b"f")
    assert (await fs.lookup(ALICE, home, b".")).fid == home
    assert (await fs.lookup(ALICE, home, b"..")).fid == root
    assert (await fs.lookup(ALICE, root, b"..")).fid == root  # the root is its own parent
    res = await fs.lookup(ALICE, home, b"f")
    assert res.fid == f and res.attr.type == FileType.REG and res.dir_attr.fileid == home.ino
    with pytest.raises(NoEnt) as e:
        await fs.lookup(ALICE, home, b"missing")
    assert e.value.wcc.after.fileid == home.ino  # post-op dir attributes in the failure
    with pytest.raises(NotDir):
        await fs.lookup(ALICE, f, b"x")
    with pytest.raises(NameTooLong):
        await fs.lookup(ALICE, home, b"x" * 256)


async def test_lookup_needs_search_permission(fs, root):
    d = (await fs.mkdir(ROOT, root, b"private", SetAttrs(mode=0o700))).fid
    with pytest.raises(Access):
        await fs.lookup(ALICE, d, b"x")


async def test_stale_handles(fs, root, home):
    f = await mkfile(fs, home, b"f")
    with pytest.raises(Stale):
        await fs.getattr(FileId(f.ino, f.gen + 1))  # wrong generation
    with pytest.raises(Stale):
        await fs.getattr(FileId(10**12, 1))  # never existed
    await fs.remove(ROOT, home, b"f")
    with pytest.raises(Stale):
        await fs.getattr(f)  # deleted (§2.3.3)
    with pytest.raises(Stale):
        await fs.read(ROOT, f, 0, 10)


async def test_inode_ids_are_never_reused(fs, root):
    seen = set()
    for i in range(5):
        f = await mkfile(fs, root, b"f%d" % i)
        await fs.remove(ROOT, root, b"f%d" % i)
        assert f.ino not in seen
        seen.add(f.ino)


# -- access, readlink (§3.3.4, §3.3.5) ------------------------------------------------------


async def test_access(fs, root, home):
    f = await mkfile(fs, home, b"f", ALICE, 0o640)
    mask = ACCESS_READ | ACCESS_MODIFY
    assert (await fs.access(ALICE, f, mask))[0] == mask
    assert (await fs.access(Cred(5, 100), f, mask))[0] == ACCESS_READ
    assert (await fs.access(BOB, f, mask))[0] == 0
    granted, attr = await fs.access(BOB, root, ACCESS_LOOKUP | ACCESS_MODIFY)
    assert granted == ACCESS_LOOKUP and attr.fileid == root.ino


async def test_symlink_and_readlink(fs, root, home):
    c = await fs.symlink(ALICE, home, b"l", b"../some/where", SetAttrs())
    assert c.attr.type == FileType.LNK and c.attr.size == len(b"../some/where")
    assert c.attr.mode == 0o777 and c.attr.uid == 1000
    target, attr = await fs.readlink(ALICE, c.fid)
    assert target == b"../some/where" and attr.fileid == c.fid.ino
    f = await mkfile(fs, home, b"f")
    with pytest.raises(Inval):
        await fs.readlink(ALICE, f)
    with pytest.raises(NoEnt):
        await fs.symlink(ALICE, home, b"empty", b"", SetAttrs())
    with pytest.raises(Exists):
        await fs.symlink(ALICE, home, b"l", b"x", SetAttrs())


# -- create (§3.3.8) ------------------------------------------------------------------------


async def test_create_modes(fs, home):
    c = await fs.create(ALICE, home, b"f", CreateMode.UNCHECKED, SetAttrs(mode=0o640), None)
    assert (c.attr.mode, c.attr.uid, c.attr.gid, c.attr.size) == (0o640, 1000, 100, 0)
    assert c.dir_wcc.after.nlink == 2 and c.dir_wcc.before is not None
    await put(fs, c.fid, 0, b"data")
    with pytest.raises(Exists):
        await fs.create(ALICE, home, b"f", CreateMode.GUARDED, SetAttrs(), None)
    # UNCHECKED over an existing file: same file; size 0 truncates it.
    again = await fs.create(ALICE, home, b"f", CreateMode.UNCHECKED, SetAttrs(), None)
    assert again.fid == c.fid and again.attr.size == 4
    again = await fs.create(ALICE, home, b"f", CreateMode.UNCHECKED, SetAttrs(size=0), None)
    assert again.fid == c.fid and again.attr.size == 0
    assert await get(fs, c.fid) == b""


async def test_exclusive_create_is_idempotent_per_verifier(fs, home):
    v1, v2 = b"12345678", b"abcdefgh"
    a = await fs.create(ALICE, home, b"x", CreateMode.EXCLUSIVE, SetAttrs(), v1)
    b = await fs.create(ALICE, home, b"x", CreateMode.EXCLUSIVE, SetAttrs(), v1)
    assert a.fid == b.fid  # a retransmission finds its own file
    with pytest.raises(Exists):
        await fs.create(ALICE, home, b"x", CreateMode.EXCLUSIVE, SetAttrs(), v2)
    await mkfile(fs, home, b"plain")
    with pytest.raises(Exists):
        await fs.create(ALICE, home, b"plain", CreateMode.EXCLUSIVE, SetAttrs(), v1)


async def test_create_name_and_permission_errors(fs, root, home):
    for bad, err in [(b".", Exists), (b"..", Exists), (b"a/b", Inval), (b"", Inval)]:
        with pytest.raises(err):
            await fs.create(ALICE, home, bad, CreateMode.GUARDED, SetAttrs(), None)
    with pytest.raises(NameTooLong):
        await mkfile(fs, home, b"n" * 256)
    with pytest.raises(Access):
        await mkfile(fs, root, b"f", ALICE)  # root dir is 0755 root:root
    f = await mkfile(fs, home, b"f")
    with pytest.raises(NotDir):
        await mkfile(fs, f, b"g")
    with pytest.raises(Perm):  # giving a new file away needs root
        await fs.create(ALICE, home, b"g", CreateMode.GUARDED, SetAttrs(uid=5), None)


async def test_setgid_directory_passes_its_group_on(fs, root):
    d = (await fs.mkdir(ROOT, root, b"shared", SetAttrs(mode=0o2777, gid=77))).fid
    f = await fs.create(ALICE, d, b"f", CreateMode.GUARDED, SetAttrs(mode=0o644), None)
    sub = await fs.mkdir(ALICE, d, b"sub", SetAttrs(mode=0o755))
    assert f.attr.gid == 77 and sub.attr.gid == 77 and sub.attr.mode == 0o2755


# -- mkdir, mknod (§3.3.9, §3.3.11) -----------------------------------------------------------


async def test_mkdir_link_counts(fs, root, home):
    before = (await fs.getattr(home)).nlink
    c = await fs.mkdir(ALICE, home, b"d", SetAttrs(mode=0o700))
    assert c.attr.nlink == 2 and c.attr.mode == 0o700 and c.attr.type == FileType.DIR
    assert (await fs.getattr(home)).nlink == before + 1  # the new `..`
    with pytest.raises(Exists):
        await fs.mkdir(ALICE, home, b"d", SetAttrs())
    await fs.rmdir(ALICE, home, b"d")
    assert (await fs.getattr(home)).nlink == before


async def test_mknod(fs, home):
    fifo = await fs.mknod(ALICE, home, b"p", FileType.FIFO, SetAttrs(mode=0o600), (0, 0))
    assert fifo.attr.type == FileType.FIFO and fifo.attr.rdev == (0, 0)
    sock = await fs.mknod(ALICE, home, b"s", FileType.SOCK, SetAttrs(), (0, 0))
    assert sock.attr.type == FileType.SOCK
    dev = await fs.mknod(ROOT, home, b"null", FileType.CHR, SetAttrs(mode=0o666), (1, 3))
    assert dev.attr.rdev == (1, 3) and dev.attr.type == FileType.CHR
    blk = await fs.mknod(ROOT, home, b"sda", FileType.BLK, SetAttrs(), (8, 0))
    assert blk.attr.rdev == (8, 0)
    with pytest.raises(Perm):
        await fs.mknod(ALICE, home, b"c", FileType.CHR, SetAttrs(), (1, 3))
    for t in (FileType.REG, FileType.DIR, FileType.LNK):
        with pytest.raises(BadType):
            await fs.mknod(ROOT, home, b"x", t, SetAttrs(), (0, 0))
    with pytest.raises(Inval):
        await fs.read(ROOT, fifo.fid, 0, 1)


# -- read, write, commit (§3.3.6, §3.3.7, §3.3.21) ----------------------------------------------


async def test_write_read_and_attributes(fs, home):
    f = await mkfile(fs, home, b"f", ALICE)
    w = await put(fs, f, 0, b"hello world", ALICE)
    assert w.count == 11 and w.committed == StableHow.UNSTABLE and len(w.verifier) == 8
    assert w.wcc.before.size == 0 and w.wcc.after.size == 11
    r = await fs.read(ALICE, f, 6, 100)
    assert bytes(r.data) == b"world" and r.eof and r.attr.size == 11
    r = await fs.read(ALICE, f, 0, 5)
    assert bytes(r.data) == b"hello" and not r.eof
    r = await fs.read(ALICE, f, 50, 5)
    assert bytes(r.data) == b"" and r.eof
    assert (await fs.getattr(f)).size == 11  # pending size is visible at once


async def test_writes_spanning_chunks_and_holes(fs, home):
    f = await mkfile(fs, home, b"f")
    blob = bytes(range(256)) * (3 * CHUNK // 256)  # three chunks' worth
    await put(fs, f, CHUNK // 2, blob)  # starts mid-chunk 0, ends mid-chunk 3
    assert (await fs.getattr(f)).size == CHUNK // 2 + len(blob)
    assert await get(fs, f) == bytes(CHUNK // 2) + blob
    assert await get(fs, f, CHUNK - 3, 6) == blob[CHUNK // 2 - 3 : CHUNK // 2 + 3]
    # A hole of whole chunks reads as zeros and costs no file.
    g = await mkfile(fs, home, b"sparse")
    await put(fs, g, 10 * CHUNK + 5, b"end")
    data = await get(fs, g)
    assert len(data) == 10 * CHUNK + 8 and data[:-3] == bytes(10 * CHUNK + 5)
    assert sorted(p.name for p in fs._chunks.ino_dir(g.ino).iterdir()) == ["10"]


async def test_stable_writes_and_commit_return_the_same_verifier(fs, home):
    f = await mkfile(fs, home, b"f")
    a = await put(fs, f, 0, b"x" * 100, stable=StableHow.FILE_SYNC)
    b = await put(fs, f, 100, b"y", stable=StableHow.DATA_SYNC)
    assert a.committed == StableHow.FILE_SYNC and b.committed >= StableHow.DATA_SYNC
    c = await fs.commit(ROOT, f, 0, 0)
    assert a.verifier == b.verifier == c.verifier == fs.verifier
    assert c.wcc.after.size == 101
    assert fs._chunks.dirty_inodes() == []  # COMMIT synced every dirty chunk


async def test_read_write_type_and_permission_errors(fs, root, home):
    with pytest.raises(IsDir):
        await fs.read(ROOT, home, 0, 1)
    with pytest.raises(IsDir):
        await put(fs, home, 0, b"x")
    f = await mkfile(fs, home, b"f", ALICE, 0o600)
    with pytest.raises(Access):
        await fs.read(BOB, f, 0, 1)
    with pytest.raises(Access):
        await put(fs, f, 0, b"x", BOB)
    ro = await mkfile(fs, home, b"ro", ALICE, 0o400)
    await put(fs, ro, 0, b"owner may", ALICE)  # owner override (knfsd)
    with pytest.raises(FBig):
        await put(fs, f, (1 << 40) - 1, b"xx", ALICE)
    with pytest.raises(FBig):
        await fs.setattr(ALICE, f, SetAttrs(size=(1 << 40) + 1), None)


async def test_write_by_non_root_clears_setuid(fs, home):
    f = await mkfile(fs, home, b"f", ALICE, 0o4755)
    await put(fs, f, 0, b"x", ALICE)
    assert (await fs.getattr(f)).mode == 0o755


async def test_concurrent_writes_to_one_file(fs, home):
    f = await mkfile(fs, home, b"f")
    piece = 10_000

    async def writer(i):
        await put(fs, f, i * piece, bytes([i]) * piece)

    async with trio.open_nursery() as n:
        for i in reversed(range(20)):  # out of order, like a client's parallel WRITEs
            n.start_soon(writer, i)
    assert await get(fs, f) == b"".join(bytes([i]) * piece for i in range(20))


# -- setattr, truncate (§3.3.2) ---------------------------------------------------------------


async def test_truncate_across_chunk_boundary_zeroes_the_tail(fs, home):
    f = await mkfile(fs, home, b"f")
    blob = b"\xab" * (3 * CHUNK)
    await put(fs, f, 0, blob)
    await fs.setattr(ROOT, f, SetAttrs(size=CHUNK + 10), None)
    assert await get(fs, f) == blob[: CHUNK + 10]
    assert sorted(p.name for p in fs._chunks.ino_dir(f.ino).iterdir()) == ["0", "1"]
    await fs.setattr(ROOT, f, SetAttrs(size=3 * CHUNK), None)  # grow: the tail is zeros
    assert await get(fs, f) == blob[: CHUNK + 10] + bytes(2 * CHUNK - 10)
    await fs.setattr(ROOT, f, SetAttrs(size=0), None)
    assert await get(fs, f) == b""


async def test_setattr_mode_owner_times_and_guard(fs, home):
    f = await mkfile(fs, home, b"f", ALICE)
    before = await fs.getattr(f)
    w = await fs.setattr(ALICE, f, SetAttrs(mode=0o600), before.ctime_ns)
    assert w.after.mode == 0o600 and w.before.ctime_ns == before.ctime_ns
    with pytest.raises(NotSync):
        await fs.setattr(ALICE, f, SetAttrs(mode=0o644), before.ctime_ns)  # ctime moved on
    with pytest.raises(Perm):
        await fs.setattr(BOB, f, SetAttrs(mode=0o777), None)
    with pytest.raises(Perm):
        await fs.setattr(ALICE, f, SetAttrs(uid=2000), None)
    w = await fs.setattr(ROOT, f, SetAttrs(uid=2000, gid=200), None)
    assert (w.after.uid, w.after.gid) == (2000, 200)
    w = await fs.setattr(
        BOB,
        f,
        SetAttrs(
            atime=TimeHow.SET_TO_CLIENT_TIME,
            atime_ns=5,
            mtime=TimeHow.SET_TO_CLIENT_TIME,
            mtime_ns=7_000_000_123,
        ),
        None,
    )
    assert (w.after.atime_ns, w.after.mtime_ns) == (5, 7_000_000_123)
    w = await fs.setattr(BOB, f, SetAttrs(mtime=TimeHow.SET_TO_SERVER_TIME), None)
    assert w.after.mtime_ns > 7_000_000_123


async def test_setattr_on_other_types(fs, home):
    with pytest.raises(IsDir):
        await fs.setattr(ROOT, home, SetAttrs(size=0), None)
    ln = (await fs.symlink(ROOT, home, b"l", b"t", SetAttrs())).fid
    with pytest.raises(Inval):
        await fs.setattr(ROOT, ln, SetAttrs(size=0), None)
    w = await fs.setattr(ROOT, ln, SetAttrs(mode=0o600), None)  # ignored on symlinks (knfsd)
    assert w.after.mode == 0o777
    w = await fs.setattr(ROOT, home, SetAttrs(), None)  # nothing to do
    assert w.before.ctime_ns == w.after.ctime_ns


async def test_chown_clears_setuid(fs, home):
    f = await mkfile(fs, home, b"f", ROOT, 0o6755)
    w = await fs.setattr(ROOT, f, SetAttrs(uid=1000), None)
    assert w.after.mode == 0o755


# -- remove, rmdir (§3.3.12, §3.3.13) ---------------------------------------------------------


async def test_remove_and_rmdir_errors(fs, home):
    d = (await fs.mkdir(ROOT, home, b"d", SetAttrs())).fid
    await mkfile(fs, d, b"inner")
    f = await mkfile(fs, home, b"f")
    with pytest.raises(IsDir):
        await fs.remove(ROOT, home, b"d")
    with pytest.raises(NotDir):
        await fs.rmdir(ROOT, home, b"f")
    from nfs_gateway.backend import NotEmpty

    with pytest.raises(NotEmpty):
        await fs.rmdir(ROOT, home, b"d")
    with pytest.raises(NoEnt):
        await fs.remove(ROOT, home, b"nothing")
    for dot in (b".", b".."):
        with pytest.raises(Inval):
            await fs.rmdir(ROOT, home, dot)
    with pytest.raises(Access):
        await fs.remove(BOB, home, b"f")  # home is alice's 0755
    w = await fs.remove(ROOT, d, b"inner")
    assert w.after.mtime_ns >= w.before.mtime_ns
    await fs.rmdir(ROOT, home, b"d")
    await fs.remove(ROOT, home, b"f")
    assert await names(fs, home) == [b".", b".."]
    with pytest.raises(Stale):
        await fs.getattr(f)


async def test_sticky_directory_protects_others_entries(fs, root):
    tmp = (await fs.mkdir(ROOT, root, b"tmp", SetAttrs(mode=0o1777))).fid
    await mkfile(fs, tmp, b"alices", ALICE)
    with pytest.raises(Perm):
        await fs.remove(BOB, tmp, b"alices")
    with pytest.raises(Perm):
        await fs.rename(BOB, tmp, b"alices", tmp, b"mine")
    await fs.remove(ALICE, tmp, b"alices")


# -- link (§3.3.15) ---------------------------------------------------------------------------


async def test_hard_links_keep_data_until_the_last_unlink(fs, home):
    f = await mkfile(fs, home, b"a")
    await put(fs, f, 0, b"shared bytes", stable=StableHow.FILE_SYNC)
    res = await fs.link(ROOT, f, home, b"b")
    assert res.attr.nlink == 2 and res.dir_wcc.after is not None
    assert (await fs.lookup(ROOT, home, b"b")).fid == f
    await fs.remove(ROOT, home, b"a")
    assert (await fs.getattr(f)).nlink == 1
    assert await get(fs, f) == b"shared bytes"
    await fs.remove(ROOT, home, b"b")
    with pytest.raises(Stale):
        await fs.getattr(f)
    assert not fs._chunks.ino_dir(f.ino).exists()  # the last unlink deletes the chunks


async def test_link_errors(fs, home):
    f = await mkfile(fs, home, b"a")
    with pytest.raises(IsDir):  # knfsd nfsd_link answers ISDIR for directories
        await fs.link(ROOT, home, home, b"dirlink")
    with pytest.raises(Exists):
        await fs.link(ROOT, f, home, b"a")
    with pytest.raises(Exists):
        await fs.link(ROOT, f, home, b"..")
    with pytest.raises(NotDir):
        await fs.link(ROOT, f, f, b"x")
    from nfs_gateway.backend import MLink

    small = LocalBackend(fs.data_dir.parent / "small", config=FsConfig(max_links=2))
    async with small:
        r = await small.export_root("/")
        g = await mkfile(small, r, b"g")
        await small.link(ROOT, g, r, b"g2")
        with pytest.raises(MLink):
            await small.link(ROOT, g, r, b"g3")


# -- fsstat (§3.3.18) -------------------------------------------------------------------------


async def test_fsstat(fs, root, home):
    s0, attr = await fs.fsstat(root)
    assert s0.tbytes >= s0.fbytes >= s0.abytes > 0 and attr.fileid == root.ino
    await mkfile(fs, home, b"f")
    s1, _ = await fs.fsstat(root)
    assert s1.ffiles == s0.ffiles - 1


# -- small files live inline in LevelDB -------------------------------------------------------


async def test_small_files_are_inline_and_move_to_chunks_when_they_grow(fs, home):
    limit = fs.config.inline_max_bytes
    f = await mkfile(fs, home, b"small")
    w = await put(fs, f, 0, b"tiny", stable=StableHow.FILE_SYNC)
    assert w.committed == StableHow.FILE_SYNC and w.wcc.after.size == 4
    assert not fs._chunks.ino_dir(f.ino).exists()  # no chunk file for a small file
    await put(fs, f, 10, b"more")  # a hole inside the inline bytes
    assert await get(fs, f) == b"tiny" + bytes(6) + b"more"
    big = bytes(range(256)) * (2 * limit // 256)
    await put(fs, f, 14, big)  # past the limit: the bytes move to chunk 0 first
    assert fs._chunks.ino_dir(f.ino).exists()
    assert await get(fs, f) == b"tiny" + bytes(6) + b"more" + big
    assert (await fs.getattr(f)).size == 14 + len(big)


async def test_inline_truncate_grow_and_remove(fs, home):
    f = await mkfile(fs, home, b"f")
    await put(fs, f, 0, b"0123456789")
    await fs.setattr(ROOT, f, SetAttrs(size=4), None)
    assert await get(fs, f) == b"0123"
    await fs.setattr(ROOT, f, SetAttrs(size=1 << 20), None)  # grows far past the inline limit
    data = await get(fs, f)
    assert len(data) == 1 << 20 and data[:4] == b"0123" and data[4:] == bytes((1 << 20) - 4)
    await put(fs, f, 6, b"x")  # still inline: below the limit
    assert (await get(fs, f, 0, 8)) == b"0123\0\0x\0"
    await put(fs, f, (1 << 20) - 1, b"y")  # past the limit: chunks
    data = await get(fs, f)
    assert data[:8] == b"0123\0\0x\0" and data[-1:] == b"y" and len(data) == 1 << 20
    await fs.remove(ROOT, home, b"f")
    assert not fs._chunks.ino_dir(f.ino).exists()


async def test_a_chunked_file_truncated_to_zero_can_become_inline(fs, home):
    f = await mkfile(fs, home, b"f")
    await put(fs, f, 0, b"z" * (3 * CHUNK))
    await fs.setattr(ROOT, f, SetAttrs(size=0), None)
    assert not fs._chunks.ino_dir(f.ino).exists()
    await put(fs, f, 0, b"small again")
    assert await get(fs, f) == b"small again"
    assert not fs._chunks.ino_dir(f.ino).exists()


# -- concurrency ------------------------------------------------------------------------------


async def test_concurrent_namespace_operations_share_fsyncs_and_stay_consistent(tmp_path):
    from server.fs import fsck

    fs = LocalBackend(tmp_path / "sync", chunk_size=CHUNK, config=FsConfig(sync_metadata=True))
    await fs.open()
    home = await fs.export_root("/")

    async def worker(w):
        for i in range(15):
            name = b"w%d-%d" % (w, i)
            f = await mkfile(fs, home, name)
            await put(fs, f, 0, b"x" * (w + 1), stable=StableHow.FILE_SYNC)
            if i % 3 == 0:
                await fs.remove(ROOT, home, name)

    async with trio.open_nursery() as n:
        for w in range(8):
            n.start_soon(worker, w)
    # Every synced change was covered by some fsync (group commit), none is left waiting.
    assert fs._meta._durable_seq == fs._meta._written_seq
    assert len(await names(fs, home)) == 2 + 8 * 10
    await fs._flush(sync=False)
    assert fsck.check(await fs.kv.iterate(prefix=b"fs.", limit=10_000)) == []
    await fs.close()


async def test_unsynced_namespace_changes_become_durable_with_the_next_sync(tmp_path):
    fs = LocalBackend(tmp_path / "async", config=FsConfig(sync_metadata=False))
    await fs.open()
    root = await fs.export_root("/")
    f = await mkfile(fs, root, b"a")
    assert fs._meta._durable_seq < fs._meta._written_seq  # the CREATE did not wait for fsync
    await fs.commit(ROOT, f, 0, 0)  # one LevelDB sync covers everything written before it
    assert fs._meta._durable_seq == fs._meta._written_seq
    await fs.close()


def test_disk_errors_map_to_their_nfsstat():
    import errno

    from nfs_gateway.backend import DQuot, IOError_, NoSpc
    from server.fs.common import disk_error
    from storage.chunkio import ChunkIOError

    assert isinstance(disk_error(ChunkIOError("full", errno.ENOSPC)), NoSpc)
    assert isinstance(disk_error(ChunkIOError("quota", errno.EDQUOT)), DQuot)
    assert isinstance(disk_error(ChunkIOError("broken", errno.EIO)), IOError_)
    assert isinstance(disk_error(ChunkIOError("unknown")), IOError_)


async def test_stats_for_metrics(fs, home):
    f = await mkfile(fs, home, b"f")
    await put(fs, f, 0, b"x" * (2 * CHUNK))
    s = fs.stats()
    assert s["fs_inodes"] == 3 and s["fs_pending_inodes"] == 1 and s["fs_dirty_chunk_inodes"] == 1
    assert s["fs_metadata_batches_total"] >= 2 and s["fs_open_chunk_fds"] >= 1
    await fs.commit(ROOT, f, 0, 0)
    s = fs.stats()
    assert s["fs_pending_inodes"] == 0 and s["fs_dirty_chunk_inodes"] == 0
    assert s["fs_metadata_batches_durable"] == s["fs_metadata_batches_total"]


async def test_run_flushes_old_pending_metadata(tmp_path):
    from server.fs import keys
    from server.fs.record_codec import decode

    config = FsConfig(pending_meta_max_age_s=0.01)
    async with LocalBackend(tmp_path, chunk_size=CHUNK, config=config) as fs:
        f = await mkfile(fs, await fs.export_root("/"), b"f")
        await put(fs, f, 0, b"x" * (2 * CHUNK))
        assert fs.stats()["fs_pending_inodes"] == 1
        async with trio.open_nursery() as n:
            await n.start(fs.run)
            with trio.fail_after(10):  # poll with a deadline
                while fs.stats()["fs_pending_inodes"]:
                    await trio.sleep(0.01)
            n.cancel_scope.cancel()
        raw = await fs.kv.get(keys.inode_key(f.ino))
        assert decode(raw).size == 2 * CHUNK  # in LevelDB now, not only in memory


async def test_read_nowait_hands_large_cached_ranges_out_as_file_slices(fs, home):
    """The gateway's fast path: a large range in the page cache comes as a FileSlice (sent
    with sendfile), a small one as bytes; the async read never gives a slice."""
    fid = await mkfile(fs, home, b"big")
    data = bytes(range(256)) * (CHUNK // 256)
    await put(fs, fid, 0, data)  # one whole chunk: its descriptor is cached, its pages too
    big = fs.read_nowait(ROOT, fid, 0, CHUNK)
    small = fs.read_nowait(ROOT, fid, 10, 100)
    assert big is not None and small is not None
    assert isinstance(big.data, FileSlice) and big.eof
    assert big.data.read() == data
    big.data.release()
    assert bytes(small.data) == data[10:110]
    assert not isinstance((await fs.read(ROOT, fid, 0, CHUNK)).data, FileSlice)


async def test_write_nowait_does_small_unstable_writes_and_leaves_the_rest_to_write(fs, home):
    """The gateway's fast path for WRITE: an UNSTABLE write of a small file, done from memory
    as `write` does it; None for everything else (then `write` does it), errors as `write`."""
    f = await mkfile(fs, home, b"f")
    w = fs.write_nowait(ROOT, f, 0, memoryview(b"hello"), StableHow.UNSTABLE)
    assert w is not None and (w.count, w.committed) == (5, StableHow.UNSTABLE)
    assert w.verifier == (await put(fs, f, 5, b"!")).verifier and w.wcc.after.size == 5
    assert await get(fs, f) == b"hello!"
    await fs.commit(ROOT, f, 0, 0)
    assert await get(fs, f) == b"hello!"
    big = memoryview(bytes(fs.config.inline_max_bytes))
    assert fs.write_nowait(ROOT, f, 0, memoryview(b"x"), StableHow.FILE_SYNC) is None
    assert fs.write_nowait(ROOT, f, 1, big, StableHow.UNSTABLE) is None  # would leave inline
    async with fs._ino_lock(f.ino):  # another WRITE of the file is under way
        assert fs.write_nowait(ROOT, f, 0, memoryview(b"x"), StableHow.UNSTABLE) is None
    assert await get(fs, f) == b"hello!"  # none of them wrote
    with pytest.raises(Access):  # ALICE may not write root's 0644 file: as `write` says
        fs.write_nowait(ALICE, f, 0, memoryview(b"x"), StableHow.UNSTABLE)
    with pytest.raises(Access):
        await put(fs, f, 0, b"x", cred=ALICE)
    await fs.remove(ROOT, home, b"f")
    with pytest.raises(Stale):
        fs.write_nowait(ROOT, f, 0, memoryview(b"x"), StableHow.UNSTABLE)


async def test_a_failed_metadata_write_is_an_io_error_and_changes_the_verifier(fs, home):
    """LevelDB failing under a change: NFS3ERR_IO, and unstable data may be lost with the
    batch, so the write verifier changes (RFC 1813 §3.3.7); the lock is free afterwards."""
    from nfs_gateway.backend import IOError_
    from storage.kv import KvError

    f = await mkfile(fs, home, b"f")
    await put(fs, f, 0, b"unstable")
    before = fs.verifier

    def broken(batch, *, sync):
        raise KvError("disk on fire")

    real, fs.kv.write_sync = fs.kv.write_sync, broken
    with pytest.raises(IOError_):
        await fs.mkdir(ROOT, home, b"d", SetAttrs())
    fs.kv.write_sync = real
    assert fs.verifier != before
    await fs.mkdir(ROOT, home, b"d2", SetAttrs())  # the writer lock was released
