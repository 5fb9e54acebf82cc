"""`objcache admin status`: what each node says of itself, gathered over the RPC plane.

Rules:
- Every node answers StatusRequest with its NodeStatus: its group member's Raft state (role,
  leader, term, commit and applied index, log first index), the ring version it applied, its
  chunk cache, and the write-back work its group holds (dirty files and their bytes). Reads
  only; nothing is proposed, so status works on a cluster that cannot commit.
- The admin client asks the node it was given for the NodeList, then every node; a node that
  does not answer is listed as unreachable. Store URLs are shown without credentials (the
  stores' `url` never holds any).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from server.fs import keys
from server.fs.record_codec import decode_value
from server.rpc.codec import message

if TYPE_CHECKING:
    from server.cluster.gateway import ClusterBackend
    from server.cluster.group import GroupRuntime
    from server.rpc.plane import RpcPlane

MAX_DIRTY_COUNTED = 100_000  # dirty inodes summed per answer (the count says ">=" past it)


@message("adm.status")
@dataclass(frozen=True, slots=True)
class StatusRequest:
    pass


@message("adm.node_status")
@dataclass(frozen=True, slots=True)
class NodeStatus:
    node_id: int
    group: int
    role: str  # leader, follower, candidate, ...
    leader: int  # 0: none known
    term: int
    commit: int
    applied: int
    log_first: int
    ring_version: int
    dirty_files: int
    dirty_bytes: int
    cache: tuple[tuple[str, int], ...]  # ChunkCache.usage(); () without a bucket
    stores: tuple[str, ...]  # the buckets this node serves (URLs)


def serve_status(plane: RpcPlane, runtime: GroupRuntime, backend: ClusterBackend) -> None:
    """Answer StatusRequest on `plane` for this node."""

    async def on_status(peer: int, req: StatusRequest) -> NodeStatus:
        return await node_status(runtime, backend)

    plane.register(StatusRequest, on_status, admin=True)


async def node_status(runtime: GroupRuntime, backend: ClusterBackend) -> NodeStatus:
    st = runtime.driver.node.status()
    files, nbytes = await trio.to_thread.run_sync(dirty_sync, runtime)
    cache = runtime.bucket.cache.usage() if runtime.bucket is not None else {}
    return NodeStatus(
        node_id=runtime.node_id, group=runtime.group, role=st.role.value,
        leader=st.lead, term=st.term, commit=st.commit, applied=st.applied,
        log_first=runtime.storage.first_index(), ring_version=runtime.ring_version(),
        dirty_files=files, dirty_bytes=nbytes, cache=tuple(sorted(cache.items())),
        stores=tuple(s.url for _, s in sorted(backend.stores.items())))


def dirty_sync(runtime: GroupRuntime) -> tuple[int, int]:
    """Dirty inodes of this node's group and their sizes (its applied state)."""
    kv = runtime.kv
    rows = kv.iterate_sync(prefix=keys.DIRTY, limit=min(MAX_DIRTY_COUNTED,
                                                        kv.config.max_scan_items))
    total = 0
    for k, _ in rows:
        raw = kv.get_sync(keys.inode_key(int.from_bytes(k[len(keys.DIRTY):], "big")))
        if raw is not None:
            total += decode_value(raw).size
    return len(rows), total
