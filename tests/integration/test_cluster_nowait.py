"""The cluster gateway's fast path (GETATTR, LOOKUP, ACCESS answered synchronously from this
node's own one-voter group) gives exactly what the async path gives, errors included; and it
declines (None) whenever answering would need a wait. In process: real Raft, LevelDB, planes."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from serverproc import free_port

from nfs_gateway.backend import CreateMode, Cred, FileId, NoEnt, SetAttrs, Stale
from server.cluster import fsops, queries
from server.cluster import node as cluster_node
from server.cluster.gateway import ClusterBackend
from server.cluster.group import GroupConfig, GroupRuntime
from server.cluster.inoalloc import InoAllocator
from server.cluster.nodelist import NodeInfo, NodeList
from server.cluster.router import GroupRouter
from server.cluster.statemachine import GroupStateMachine
from server.fs import keys
from server.fs.config import FsConfig
from server.rpc.plane import RpcConfig, RpcPlane
from storage.chunks import ChunkStore
from storage.kv import KvStore
from txn.state import TxnState

pytestmark = pytest.mark.integration

ROOT = Cred(0, 0)
USER = Cred(1000, 1000)


async def test_fast_path_answers_like_the_async_path(tmp_path: Path) -> None:
    kv = await KvStore.open(tmp_path / "meta")
    chunks = ChunkStore(tmp_path / "chunks")
    fsc = FsConfig()
    info = NodeInfo(1, 1, f"127.0.0.1:{free_port()}", "127.0.0.1:2049")
    nodelist = NodeList(1, (info,))
    plane = RpcPlane(RpcConfig(node_id=1, cluster_secret=b"s" * 20,
                               port=int(info.rpc.rsplit(":", 1)[1])))
    app = fsops.FsApplication(fsc)
    sm = GroupStateMachine(kv, chunks, app, TxnState(app), fsops.perform_effects_sync)
    holder: list[GroupRouter] = []
    runtime = await GroupRuntime.open(
        node_id=1, group=1, members=[1], kv=kv, sm=sm, plane=plane, answer=queries.answer,
        root_ops=cluster_node._root_ops(fsc), nodelist_bytes=nodelist.encode(),
        post=lambda g, m: holder[0].post(g, m), config=GroupConfig())
    router = GroupRouter(plane, 1, nodelist, runtime, vnodes=64, request_timeout_s=10)
    holder.append(router)
    async with trio.open_nursery() as nursery:
        await nursery.start(plane.run)
        await nursery.start(router.run)
        await nursery.start(runtime.run)
        await runtime.wait_serving()
        with trio.fail_after(10):
            while await kv.get(keys.inode_key(1)) is None:
                await trio.sleep(0.01)
        fs = ClusterBackend(router, await InoAllocator.open(kv, 1), fsc, 1, 1)
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
        nursery.cancel_scope.cancel()
    await kv.close()
    chunks.close_sync()


async def _error(call) -> Exception:
    try:
        await call
    except Exception as e:  # the test wants whichever FsError the async path raises
        return e
    raise AssertionError("expected an error")
