"""An objcache node in one process with a bucket, for the bucket tests: a real group (Raft,
LevelDB, chunk files), its router, the gateway and a real object store."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from serverproc import free_port

from nfs_gateway.backend import FileSlice, ReadResult
from server.cluster import bucket_reads, fsops, node_fs, queries
from server.cluster.bucket import BucketConfig
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

CS = 256 << 10  # small chunks: many chunks with little data
STORE = 7


class CountingStore:
    """A real store, with its requests counted by operation (every call goes through)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.url = inner.url

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return await attr(*args, **kwargs)

        return counted


@asynccontextmanager
async def one_node(tmp_path: Path, store: Any = None, bucket: BucketConfig | None = None, *,
                   chunk_size: int = CS, bind_root: bool = False, fsc: FsConfig | None = None,
                   ) -> AsyncIterator[tuple[ClusterBackend, GroupRuntime, trio.Nursery]]:
    """One node, one one-member group. `store`: the bucket (store id STORE); with bind_root,
    "/" is its root (write-back's key table lives with it). Without a store: no bucket."""
    kv = await KvStore.open(tmp_path / "meta")
    chunks = ChunkStore(tmp_path / "chunks")
    fsc = fsc or FsConfig(chunk_size=chunk_size, inline_max_bytes=1024)
    bucket = bucket or BucketConfig()
    info = NodeInfo(1, 1, f"127.0.0.1:{free_port()}", "127.0.0.1:2049")
    nodelist = NodeList(1, (info,))
    plane = RpcPlane(RpcConfig(node_id=1, cluster_secret=b"s" * 20,
                               port=int(info.rpc.rsplit(":", 1)[1])))
    app = fsops.FsApplication(fsc)
    sm = GroupStateMachine(kv, chunks, app, TxnState(app), fsops.perform_effects_sync)
    holder: list[GroupRouter] = []
    runtime = await GroupRuntime.open(
        node_id=1, group=1, members=[1], kv=kv, sm=sm, plane=plane, answer=queries.answer,
        root_ops=node_fs.root_ops(fsc), nodelist_bytes=nodelist.encode(),
        post=lambda g, m: holder[0].post(g, m), config=GroupConfig())
    router = GroupRouter(plane, 1, nodelist, runtime, vnodes=64, request_timeout_s=10)
    holder.append(router)
    stores = {STORE: store} if store is not None else {}
    if stores:
        await bucket_reads.attach(runtime, stores, bucket)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(plane.run)
            await nursery.start(router.run)
            await nursery.start(runtime.run)
            await runtime.wait_serving()
            with trio.fail_after(10):
                while await kv.get(keys.inode_key(1)) is None:
                    await trio.sleep(0.01)
            fs = ClusterBackend(router, await InoAllocator.open(kv, 1), fsc, 1, 1,
                                stores=stores, bucket=bucket)
            fs._nursery = nursery
            if bind_root:
                root = await fs.export_root("/")
                await fs.bind_store(root, STORE)
                fs.store_roots[STORE] = root.ino
            yield fs, runtime, nursery
            nursery.cancel_scope.cancel()
    finally:
        chunks.close_sync()
        await kv.close()




class GatedStore(CountingStore):
    """A CountingStore whose next PUT of one key waits at a gate until it opens (a store
    request that is slow to land: S3 retries, a stall); `entered` is set when it waits there.
    Other PUTs, of that key too, go through."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.gated: str | None = None
        self.entered = trio.Event()
        self._open = trio.Event()
        self.landed: list[str] = []  # the keys of PUTs that went through the gate

    def shut(self, key: str) -> None:
        self.gated, self.entered, self._open = key, trio.Event(), trio.Event()

    def open(self) -> None:
        self._open.set()

    async def put(self, key: str, data: bytes, **kwargs: Any) -> str:
        self.calls["put"] += 1
        if key == self.gated and not self.entered.is_set():
            self.entered.set()
            await self._open.wait()
            self.landed.append(key)
        return await self.inner.put(key, data, **kwargs)


def result_bytes(r: ReadResult) -> bytes:
    """A READ result's bytes (a FileSlice from the fast path is read, then released)."""
    if isinstance(r.data, FileSlice):
        try:
            return r.data.read()
        finally:
            r.data.release()
    return bytes(r.data)
