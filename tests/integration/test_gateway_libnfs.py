"""The in-process gateway (RpcServer + MOUNT + NFSv3 over LocalBackend) through libnfs-utils.

A third-party client over real sockets: record marking, MOUNT MNT/EXPORT, and multi-fragment
1 MiB WRITE and READ records on our server, without the rest of the node.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import trio
from serverproc import nfs_cat, nfs_cp, nfs_ls

from nfs_gateway.exports import Export, ExportTable
from nfs_gateway.mount import make_mount_program
from nfs_gateway.nfs3.program import handle_maker, make_nfs3_program
from nfs_gateway.server import Listener, RpcServer
from server.fs.backend import LocalBackend

pytestmark = pytest.mark.integration


@pytest.fixture
async def gateway_port(nursery, tmp_path):
    async with LocalBackend(tmp_path / "fs") as backend:
        # libnfs runs unprivileged here, from ports >= 1024.
        exports = ExportTable([Export("/", 1, insecure=True, root_squash=False)])
        nfs = make_nfs3_program(backend, exports)
        mount = make_mount_program(backend, exports, handle_maker(backend))
        server = RpcServer([Listener("127.0.0.1", 0, (nfs, mount))])
        (_host, port), *_ = await nursery.start(server.run)
        yield port
        server.shutdown()


def url(port: int, path: str = "/") -> str:
    """The export is "/": libnfs wants it spelled out before a file name ("//f.bin")."""
    return f"nfs://127.0.0.1{path}?nfsport={port}&mountport={port}&version=3"


async def test_nfs_ls_cp_cat(gateway_port, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 517)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    assert await trio.to_thread.run_sync(nfs_ls, url(gateway_port)) == []
    await trio.to_thread.run_sync(nfs_cp, src, url(gateway_port, "//f.bin"))
    names = [e.name for e in await trio.to_thread.run_sync(nfs_ls, url(gateway_port))]
    assert names == ["f.bin"]
    back = await trio.to_thread.run_sync(nfs_cat, url(gateway_port, "//f.bin"))
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
