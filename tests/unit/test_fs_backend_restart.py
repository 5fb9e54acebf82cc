"""LocalBackend across restarts and crashes (RFC 1813 §3.3.7 write verifier, §3.3.21 COMMIT),
and a 100 000-entry directory paged through READDIR."""

from __future__ import annotations

import time

import trio
from fs_helpers import CHUNK, ROOT, get, mkfile, put

from nfs_gateway.backend import FileType, SetAttrs, StableHow
from server.fs import keys
from server.fs.backend import LocalBackend
from server.fs.keys import decode_u64
from server.fs.records import CreateInode, LinkDirent
from server.fs.state import apply_sync
from storage.kv import KvStore


def backend(path):
    return LocalBackend(path, chunk_size=CHUNK)


async def test_clean_restart_keeps_handles_data_and_verifier(tmp_path):
    async with backend(tmp_path) as fs:
        root = await fs.export_root("/")
        d = (await fs.mkdir(ROOT, root, b"d", SetAttrs(mode=0o700))).fid
        f = await mkfile(fs, d, b"f")
        await put(fs, f, 0, b"x" * (CHUNK + 7))  # unstable: close() must make it durable
        verf = fs.verifier
        attr = await fs.getattr(f)
    async with backend(tmp_path) as fs:
        assert fs.verifier == verf  # clean shutdown: nothing was lost
        assert await fs.export_root("/") == root
        assert await fs.getattr(f) == attr  # same handle (ino, gen), same attributes
        assert (await fs.lookup(ROOT, d, b"f")).fid == f
        assert await get(fs, f) == b"x" * (CHUNK + 7)
        g = await mkfile(fs, d, b"g")
        assert g.ino > f.ino  # the id counter survived


async def test_crash_changes_the_verifier_and_keeps_what_was_synced(tmp_path):
    fs = backend(tmp_path)
    await fs.open()
    root = await fs.export_root("/")
    f = await mkfile(fs, root, b"synced")
    await put(fs, f, 0, b"durable", stable=StableHow.FILE_SYNC)
    g = await mkfile(fs, root, b"committed")
    await put(fs, g, 0, b"unstable then committed")
    await fs.commit(ROOT, g, 0, 0)
    verf = fs.verifier
    await fs.abort()  # a crash: no flush, no clean marker
    async with backend(tmp_path) as fs:
        assert fs.verifier != verf  # unstable data may be lost: clients must resend
        assert await get(fs, f) == b"durable"
        assert await get(fs, g) == b"unstable then committed"
        h = await mkfile(fs, root, b"new")
        assert h.ino > g.ino


async def test_unstable_metadata_is_lost_in_a_crash_and_stale_bytes_stay_hidden(tmp_path):
    fs = backend(tmp_path)
    await fs.open()
    root = await fs.export_root("/")
    f = await mkfile(fs, root, b"f")
    await put(fs, f, 0, b"old bytes the client will resend" * 2000)  # chunked, not inline
    await fs.abort()
    async with backend(tmp_path) as fs:
        assert (await fs.getattr(f)).size == 0  # the WRITE's size never reached disk
        await put(fs, f, 40_000, b"tail")  # past EOF: the hole must read as zeros
        assert await get(fs, f) == bytes(40_000) + b"tail"


async def test_crash_between_delete_and_chunk_removal_is_collected(tmp_path):
    fs = backend(tmp_path)
    await fs.open()
    root = await fs.export_root("/")
    f = await mkfile(fs, root, b"f")
    await put(fs, f, 0, b"doomed" * 10_000, stable=StableHow.FILE_SYNC)
    chunk_dir = fs._chunks.ino_dir(f.ino)
    # Delete the inode through the metadata alone, as if the process died before the data
    # effect ran.
    async with fs._writing():
        from server.fs.records import AdjustLinks, UnlinkDirent

        await fs._commit([UnlinkDirent(root.ino, b"f", 1), AdjustLinks(f.ino, -1, 1)])
    assert chunk_dir.exists()
    await fs.abort()
    async with backend(tmp_path):
        assert not chunk_dir.exists()


async def test_a_second_clean_close_after_reopen_keeps_the_new_verifier(tmp_path):
    fs = backend(tmp_path)
    await fs.open()
    await fs.abort()
    async with backend(tmp_path) as fs:
        verf = fs.verifier
    async with backend(tmp_path) as fs:
        assert fs.verifier == verf


async def test_applied_index_advances_with_every_batch(tmp_path):
    async with backend(tmp_path) as fs:
        root = await fs.export_root("/")
        i0 = fs._meta.meta[keys.APPLIED_INDEX]
        await mkfile(fs, root, b"a")
        await fs.mkdir(ROOT, root, b"b", SetAttrs())
        assert fs._meta.meta[keys.APPLIED_INDEX] == i0 + 2
    kv = KvStore.open_sync(tmp_path / "meta")
    try:
        assert decode_u64(kv.get_sync(keys.APPLIED_INDEX)) == i0 + 2
    finally:
        kv.close_sync()


async def test_hundred_thousand_entries_page_through_readdir(tmp_path):
    n = 100_000
    async with backend(tmp_path) as fs:
        root = await fs.export_root("/")
        big = (await fs.mkdir(ROOT, root, b"big", SetAttrs())).fid
    # Fill the directory through the state machine in large batches, as a Raft apply loop
    # would (creating 100 000 files one NFS call at a time would take minutes).

    def fill():
        kv = KvStore.open_sync(tmp_path / "meta")
        try:
            first = decode_u64(kv.get_sync(keys.NEXT_INO))
            index = decode_u64(kv.get_sync(keys.APPLIED_INDEX)) + 1
            for lo in range(0, n, 25_000):
                recs = []
                for i in range(lo, lo + 25_000):
                    ino = first + i
                    recs.append(
                        CreateInode(ino, 1, FileType.REG, 0o644, 0, 0, 1, 5, chunk_size=CHUNK)
                    )
                    recs.append(LinkDirent(big.ino, b"file-%06d" % i, ino, FileType.REG, 5))
                apply_sync(kv, recs, index, sync=False)
                index += len(recs)
        finally:
            kv.close_sync()

    await trio.to_thread.run_sync(fill)
    async with backend(tmp_path) as fs:
        assert (await fs.getattr(big)).nlink == 2
        got, cookie, verf, pages = [], 0, bytes(8), []
        while True:
            t = time.perf_counter()
            res = await fs.readdir(ROOT, big, cookie, verf, 1000, False)
            pages.append(time.perf_counter() - t)
            got += [e.name for e in res.entries]
            if res.eof:
                break
            cookie, verf = res.entries[-1].cookie, res.cookieverf
        assert got[:2] == [b".", b".."]
        assert got[2:] == [b"file-%06d" % i for i in range(n)]
        # O(page): the last pages cost about what the first ones did.
        assert sum(pages[-10:]) < 5 * sum(pages[1:11]) + 0.05
        f = (await fs.lookup(ROOT, big, b"file-099999")).fid
        assert (await fs.getattr(f)).size == 0
        s, _ = await fs.fsstat(big)
        assert s.tfiles - s.ffiles >= n


async def test_inline_files_survive_restart_and_crash(tmp_path):
    fs = backend(tmp_path)
    await fs.open()
    root = await fs.export_root("/")
    f = await mkfile(fs, root, b"a")
    await put(fs, f, 0, b"synced small file", stable=StableHow.FILE_SYNC)
    h = await mkfile(fs, root, b"c")
    await put(fs, h, 0, b"unstable, then committed")
    await fs.commit(ROOT, h, 0, 0)
    g = await mkfile(fs, root, b"b")
    await put(fs, g, 0, b"unstable small file")
    verf = fs.verifier
    await fs.abort()
    async with backend(tmp_path) as fs:
        assert await get(fs, f) == b"synced small file"
        assert await get(fs, h) == b"unstable, then committed"
        # UNSTABLE bytes of small files wait in memory like a chunk WRITE's size: a crash loses
        # them, and the new verifier tells the client to send them again.
        assert await get(fs, g) == b"" and fs.verifier != verf
