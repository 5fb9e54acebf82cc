"""Shared helpers for the LocalBackend tests."""

from __future__ import annotations

import pytest

from nfs_gateway.backend import CreateMode, Cred, FileId, SetAttrs, StableHow
from server.fs.backend import LocalBackend
from server.fs.config import FsConfig

ROOT = Cred(0, 0)
ALICE = Cred(1000, 100)
BOB = Cred(2000, 200)
CHUNK = 64 << 10  # small chunks so that tests cross chunk boundaries cheaply


async def mkfile(fs: LocalBackend, d: FileId, name: bytes, cred: Cred = ROOT, mode=0o644):
    return (await fs.create(cred, d, name, CreateMode.GUARDED, SetAttrs(mode=mode), None)).fid


async def put(fs, fid, offset, data, cred=ROOT, stable=StableHow.UNSTABLE):
    return await fs.write(cred, fid, offset, memoryview(data), stable)


async def get(fs, fid, offset=0, count=1 << 22, cred=ROOT) -> bytes:
    return bytes((await fs.read(cred, fid, offset, count)).data)


async def names(fs, d, cred=ROOT) -> list[bytes]:
    out, cookie, verf = [], 0, bytes(8)
    while True:
        res = await fs.readdir(cred, d, cookie, verf, 100, False)
        out += [e.name for e in res.entries]
        if res.eof:
            return out
        cookie, verf = res.entries[-1].cookie, res.cookieverf


@pytest.fixture
async def fs(tmp_path):
    b = LocalBackend(tmp_path / "fs", chunk_size=CHUNK, config=FsConfig(max_file_size=1 << 40))
    await b.open()
    yield b
    await b.close()


@pytest.fixture
async def root(fs):
    return await fs.export_root("/")


@pytest.fixture
async def home(fs, root):
    """A directory alice owns (the root is root's and 0755, like a fresh local fs)."""
    return (await fs.mkdir(ROOT, root, b"home", SetAttrs(mode=0o755, uid=1000, gid=100))).fid
