"""The cluster gateway's fast path (GETATTR, LOOKUP, ACCESS answered synchronously from this
node's own one-voter group) gives exactly what the async path gives, errors included; and it
declines (None) whenever answering would need a wait. In process: real Raft, LevelDB, planes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from bucketnode import one_node, result_bytes

from nfs_gateway.backend import (
    CreateMode,
    Cred,
    FileId,
    NoEnt,
    SetAttrs,
    StableHow,
    Stale,
)
from server.fs.config import FsConfig

pytestmark = pytest.mark.integration

ROOT = Cred(0, 0)
USER = Cred(1000, 1000)


async def test_fast_path_answers_like_the_async_path(tmp_path: Path) -> None:
    async with one_node(tmp_path, fsc=FsConfig()) as (fs, runtime, _):
        root = await fs.export_root("/")
        d = (await fs.mkdir(ROOT, root, b"d", SetAttrs(mode=0o700))).fid
        f = (await fs.create(ROOT, d, b"f", CreateMode.UNCHECKED, SetAttrs(), None)).fid

        for fid in (root, d, f):
            assert fs.getattr_nowait(fid) == await fs.getattr(fid)
            for cred in (ROOT, USER):
                assert fs.access_nowait(cred, fid, 0x3F) == await fs.access(cred, fid, 0x3F)
        assert fs.lookup_nowait(ROOT, root, b"d") == await fs.lookup(ROOT, root, b"d")
        assert fs.lookup_nowait(ROOT, d, b"f") == await fs.lookup(ROOT, d, b"f")
        # Errors: the same FsError from both paths.
        with pytest.raises(NoEnt):
            fs.lookup_nowait(ROOT, d, b"missing")
        with pytest.raises(NoEnt):
            await fs.lookup(ROOT, d, b"missing")
        denied = type(await _error(fs.lookup(USER, d, b"f")))
        with pytest.raises(denied):
            fs.lookup_nowait(USER, d, b"f")  # d is 0700 root's: no search permission
        # Declines rather than guessing: a stale handle, `..`, a locked or unknown state.
        gone = FileId(f.ino, f.gen + 2)
        assert fs.getattr_nowait(gone) is None
        with pytest.raises(Stale):
            await fs.getattr(gone)
        assert fs.lookup_nowait(ROOT, d, b"..") is None
        runtime._ready_term = 0  # as while this node is becoming leader
        assert fs.getattr_nowait(f) is None and fs.lookup_nowait(ROOT, d, b"f") is None


async def test_fast_path_reads_written_chunks_like_the_async_path(tmp_path: Path) -> None:
    cs = 256 << 10
    async with one_node(tmp_path, fsc=FsConfig(chunk_size=cs, inline_max_bytes=1024)) as (
            fs, _, _):
        root = await fs.export_root("/")
        f = (await fs.create(ROOT, root, b"f", CreateMode.UNCHECKED, SetAttrs(mode=0o600),
                             None)).fid
        data = os.urandom(cs + 44_000)
        await fs.write(ROOT, f, 0, memoryview(data), StableHow.FILE_SYNC)
        # Small and large (a FileSlice, sent with sendfile), in chunk 0 and chunk 1, to EOF.
        for off, n in ((0, 1000), (100, 200_000), (cs, 44_000), (cs + 40_000, 10_000)):
            fast = fs.read_nowait(ROOT, f, off, n)
            assert fast is not None, (off, n)
            slow = await fs.read(ROOT, f, off, n)
            assert result_bytes(fast) == bytes(slow.data) == data[off:off + n]
            assert (fast.eof, fast.attr) == (slow.eof, slow.attr)
        assert fs.read_nowait(ROOT, f, cs - 10, 20) is None  # two chunks: the async path
        end = fs.read_nowait(ROOT, f, len(data) + 1, 10)
        assert end is not None and end.eof and not end.data
        with pytest.raises(type(await _error(fs.read(USER, f, 0, 10)))):
            fs.read_nowait(USER, f, 0, 10)  # 0600 root's
        tiny = (await fs.create(ROOT, root, b"t", CreateMode.UNCHECKED, SetAttrs(), None)).fid
        await fs.write(ROOT, tiny, 0, memoryview(b"inline"), StableHow.FILE_SYNC)
        assert fs.read_nowait(ROOT, tiny, 0, 10) is None  # its bytes are in LevelDB
        assert fs.read_nowait(ROOT, FileId(f.ino, f.gen + 1), 0, 10) is None


async def _error(call) -> Exception:
    try:
        await call
    except Exception as e:  # the test wants whichever FsError the async path raises
        return e
    raise AssertionError("expected an error")
