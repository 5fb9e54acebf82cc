"""The read side of GroupRuntime (group.py): reads of the applied state for the gateways.

Rules:
- A read is answered by the leader after a read barrier (ReadIndex), unless this node is the
  group's only voter: then every write it acknowledged is applied already.
- Reads run in a worker thread (LevelDB and chunk files block), except INLINE_READS: a handful
  of LevelDB point reads, nearly always from the block cache, which answer on the event loop.
- While a ring change is pending and this group has sent what it gives away, reads of that
  state wait for the new ring (`hidden`).
- Reads of bucket-backed chunks go through BucketReads (bucket_reads.py), which fetches what
  the cache lacks.
- `cached_range` is the READ fast path: a chunk's bytes from the page cache, on the event loop,
  under answer_now's conditions; a clean copy only of the inode's own version, checked before
  and after (an eviction may run in a worker thread meanwhile); anything else is None and the
  caller takes the async path.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import trio

from nfs_gateway.backend import FileSlice
from raft.errors import NotLeader
from server.cluster import protocol as p
from server.cluster.bucket import backed_len, is_backed
from server.cluster.queries import unlocked
from server.cluster.statemachine import StateView
from server.fs import keys as fs_keys
from server.fs.datapath import SLICE_MIN_BYTES  # smaller READs are copied, not sent from the file
from server.fs.keys import decode_u64
from server.fs.records import Inode
from server.rpc.frames import RemoteError

if TYPE_CHECKING:
    from server.cluster.group import GroupRuntime

    _Base = GroupRuntime
else:
    _Base = object

# Reads answered on the trio thread: point lookups of a few keys (module rules of storage/kv.py
# otherwise send LevelDB calls to worker threads; these are the measured exception).
INLINE_READS = (p.GetInodes, p.Lookup)


class GroupReads(_Base):
    async def read_barrier(self) -> None:
        """Before reading the applied state for a client: unless this node is the group's
        only voter, confirm it still leads and has applied all it committed (ReadIndex)."""
        if not self._sole_voter():
            try:
                await self.driver.read_index()
            except NotLeader as e:
                raise RemoteError(p.NOT_LEADER, str(e.leader_hint)) from e

    def hidden(self, request: p.GroupRequest) -> bool:
        """While a ring change is pending and this group has sent what it gives away, reads
        of that state wait for the new ring (its new owner may take writes at any moment);
        transactions are refused at apply time instead (ringstate.Freeze.blocks)."""
        freeze = self.sm.freeze
        if freeze is None or not freeze.exported or isinstance(request, p.RunTxn):
            return False
        if isinstance(request, p.GetInodes):
            return any(freeze.hides(ino) for ino in request.inos)
        if isinstance(request, p.Lookup | p.ReadDir):
            return freeze.hides(request.dir_ino)
        if isinstance(request, p.ReadHead):
            return freeze.hides(request.ino)
        if isinstance(request, p.ReadChunk):
            return freeze.hides(request.ino, request.index)
        return True  # scans, uploads, cache drops: a moment's wait

    def answer_sync(self, request: p.GroupRequest, fetched: Any = None) -> Any:
        return self._answer(request, StateView(self.kv), self.sm.chunks, self.group,
                            self.bucket, fetched)

    async def _answer_backed(self, request: p.ReadHead | p.ReadChunk) -> Any:
        """A read that may need chunk bytes from the bucket (bucket_reads.py)."""
        assert self.bucket is not None
        prefetch = isinstance(request, p.ReadChunk) and request.prefetch
        if prefetch:  # read-ahead: make sure the chunk is cached, answer nothing
            request = dataclasses.replace(request, offset=0, count=1, prefetch=False)
        reply = await self.bucket.answer(
            lambda fetched: trio.to_thread.run_sync(self.answer_sync, request, fetched))
        return p.ReadChunkReply(b"") if prefetch else reply

    def answer_now(self, request: p.GroupRequest) -> Any | None:
        """An INLINE_READS request answered synchronously (the gateway's fast path), or None
        when that would need a wait: this node must lead a one-voter group whose cores are
        ready, at the request's ring version; any refusal (a locked inode) is None too."""
        if not (isinstance(request, INLINE_READS) and self._sole_voter() and self._serving()
                and request.ring_version == self.ring_version() and self.sm.freeze is None):
            return None
        try:
            return self.answer_sync(request)
        except RemoteError:
            return None

    def cached_range(self, ring_version: int, inode: Inode, index: int, inner: int, n: int
                     ) -> FileSlice | bytearray | None:
        """Bytes [inner, inner + n) of chunk `index` of `inode` (as GetInodes just gave it),
        if this node can answer now from the chunk file and the page cache; else None
        (module rules). The caller checked that this group holds the chunk."""
        if not (self._sole_voter() and self._serving() and self.sm.freeze is None
                and ring_version == self.ring_version()):
            return None
        try:
            unlocked(StateView(self.kv), inode.ino)
        except RemoteError:
            return None
        ino, cs = inode.ino, inode.chunk_size
        clean = is_backed(inode, index) and not decode_u64(
            self.kv.get_sync(fs_keys.materialized_key(ino, index)))
        if clean:  # the chunk is the object's bytes: only a copy of this version will do
            cache = self.bucket.cache if self.bucket is not None else None
            if (cache is None or inner + n > backed_len(inode.obase, cs, index)
                    or not cache.valid(ino, index, inode.etag)):
                return None
        chunks, offset = self.sm.chunks, index * cs + inner
        data: FileSlice | bytearray | None = None
        if n >= SLICE_MIN_BYTES:
            found = chunks.dup_nowait(ino, cs, offset, n)
            if found is not None:
                data = FileSlice(found[0], found[1], n)
        if data is None:
            data = chunks.pread_nowait(ino, cs, offset, n)
        if clean and data is not None and not cache.valid(ino, index, inode.etag, count=False):
            if isinstance(data, FileSlice):  # evicted while we read: the async path fetches
                data.release()
            return None
        return data

    def _keys_under(self, req: p.KeysUnder) -> p.KeysReply:
        prefix = fs_keys.bucket_key(req.store, req.prefix)
        rows = self.kv.iterate_sync(prefix=prefix)
        return p.KeysReply(tuple(fs_keys.parse_bucket_key(k)[1] for k, _ in rows))

    def _max_inode(self, req: p.MaxInode) -> p.MaxInodeReply:
        rows = self.kv.iterate_sync(start=fs_keys.inode_key(req.lo),
                                    stop=fs_keys.inode_key(req.hi), reverse=True, limit=1)
        return p.MaxInodeReply(fs_keys.parse_inode_key(rows[0][0]) if rows else 0)

    def _scan_flush(self, req: p.ScanFlush) -> p.ScanFlushReply:
        """Write-back's tables, in key order (keys.BUCKET_KEY < keys.DIRTY)."""
        limit = max(1, min(req.limit, 10_000))
        out: list[tuple[bytes, bytes]] = []
        for prefix in (fs_keys.BUCKET_KEY, fs_keys.DIRTY):
            if req.start > prefix and not req.start.startswith(prefix):
                continue
            start = max(req.start, prefix)
            for k, v in self.kv.iterate_sync(prefix=prefix, start=start, limit=limit - len(out)):
                if prefix == fs_keys.DIRTY:
                    v = self.kv.get_sync(fs_keys.inode_key(int.from_bytes(k[4:], "big"))) or b""
                out.append((k, v))
            if len(out) >= limit:
                return p.ScanFlushReply(tuple(out), out[-1][0] + b"\0")
        return p.ScanFlushReply(tuple(out), b"")
