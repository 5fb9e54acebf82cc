"""The cluster gateway's fast path (GETATTR, LOOKUP, ACCESS answered synchronously from this
node's own one-voter group) gives exactly what the async path gives, errors included; and it
declines (None) whenever answering would need a wait. In process: real Raft, LevelDB, planes."""

from __future__ import annotations

from pathlib import Path

import pytest
from bucketnode import one_node

from nfs_gateway.backend import CreateMode, Cred, FileId, NoEnt, SetAttrs, Stale
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


async def _error(call) -> Exception:
    try:
        await call
    except Exception as e:  # the test wants whichever FsError the async path raises
        return e
    raise AssertionError("expected an error")
