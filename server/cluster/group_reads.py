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
  and after (an eviction may run in a worker thread meanwhile); bytes copied rather than sent
  from the file only up to COPY_NOW_MAX_BYTES; anything else is None and the caller takes the
  async path. `read_now` is the same for a gateway's ReadHead and ReadChunk
  (from a peer, or this node's own through the router): a copy, never a FileSlice, so the
  group answers without a worker-thread round trip.
- A read-ahead request (ReadChunk.prefetch) of a chunk that is cached also asks the kernel to
  read the chunk file into the page cache (`ChunkStore.will_need_sync`), so the sequential
  READs that follow take those fast paths even after the page cache was dropped.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import trio

from nfs_gateway.backend import FileSlice
from raft.errors import NotLeader
from server.cluster import protocol as p
from server.cluster.bucket import backed_len, is_backed
from server.cluster.queries import MAX_READ_BYTES, unlocked
from server.cluster.statemachine import StateView
from server.fs import keys as fs_keys
from server.fs.datapath import SLICE_MIN_BYTES  # smaller READs are copied, not sent from the file
from server.fs.keys import decode_u64
from server.fs.record_codec import decode as decode_record
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
# The most bytes a read copies on the trio thread (one READ's worth). A bigger one (a chunk's
# whole base for a write, up to 16 MiB) would hold the event loop for milliseconds, where the
# worker-thread round trip it saves costs little beside the copy.
COPY_NOW_MAX_BYTES = 1 << 20


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
        sync = self._prefetch_sync if prefetch else self.answer_sync
        reply = await self.bucket.answer(
            lambda fetched: trio.to_thread.run_sync(sync, request, fetched))
        return p.ReadChunkReply(b"") if prefetch else reply

    def _prefetch_sync(self, request: p.ReadChunk, fetched: Any) -> Any:
        """Read-ahead: the chunk is cached (answer_sync fetches it if not) and its file is
        coming into the page cache for the READs that follow (module rules)."""
        reply = self.answer_sync(request, fetched)
        self.sm.chunks.will_need_sync(request.ino, request.index)
        return reply

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
        if not self._reads_now(ring_version, inode.ino):
            return None
        backed = is_backed(inode, index)
        return self._chunk_now(inode.ino, index, inner, n, inode.chunk_size,
                               inode.etag if backed else None, inode.obase, slice_ok=True)

    def _read_chunk_now(self, r: p.ReadChunk, slice_ok: bool) -> p.ReadChunkReply | None:
        """A gateway's ReadChunk answered on the event loop from the page cache, as
        cached_range answers this node's own READs (module rules), or None for the thread
        path. The request names the version it wants (its etag), as the thread path serves.
        `slice_ok`: the reply may carry a FileSlice (the bulk channel sends it from the file)."""
        if r.prefetch or not self._reads_now(r.ring_version, r.ino):
            return None
        backed = bool(r.etag) and r.chunk_size > 0 and r.index * r.chunk_size < r.obase
        if backed:
            n = min(r.count, MAX_READ_BYTES, r.chunk_size - r.offset)
            size = r.chunk_size
        else:  # the size trick of queries._read_chunk: any size holding the range maps back
            n = min(r.count, MAX_READ_BYTES)
            size = r.offset + n
        if n <= 0 or r.offset < 0:
            return None
        data = self._chunk_now(r.ino, r.index, r.offset, n, size, r.etag if backed else None,
                               r.obase, slice_ok=slice_ok)
        return None if data is None else p.ReadChunkReply(data)  # type: ignore[arg-type]

    def read_now(self, request: p.GroupRequest, *, slice_ok: bool = False) -> Any | None:
        """A gateway's ReadHead or ReadChunk answered on the event loop (module rules), or
        None: any other request, or one that cannot be answered now. `slice_ok`: a
        ReadChunkReply may carry a FileSlice rather than bytes (codec.encode takes a bytearray
        but no FileSlice: only for replies that do not cross the plane)."""
        kind = type(request)
        if kind is p.ReadChunk:
            return self._read_chunk_now(request, slice_ok)
        if kind is p.ReadHead:
            return self._read_head_now(request)
        return None

    def _read_head_now(self, r: p.ReadHead) -> p.ReadHeadReply | None:
        """A gateway's ReadHead answered on the event loop: the inode (a point read, as
        INLINE_READS) and what the range holds of chunk 0 from the page cache, or None for
        the thread path (an inline or missing inode, bytes not cached)."""
        if not self._reads_now(r.ring_version, r.ino):
            return None
        raw = self.kv.get_sync(fs_keys.inode_key(r.ino))
        if raw is None:
            return None
        inode: Inode = decode_record(raw)
        if inode.inline or inode.chunk_size <= 0:
            return None
        end = min(r.offset + min(r.count, MAX_READ_BYTES), inode.size, inode.chunk_size)
        if end <= r.offset:  # the READ lies past chunk 0: the gateway asks the chunks' groups
            return p.ReadHeadReply(raw, data=b"")
        data = self._chunk_now(r.ino, 0, r.offset, end - r.offset, inode.chunk_size,
                               inode.etag if is_backed(inode, 0) else None, inode.obase,
                               slice_ok=False)
        return None if data is None else p.ReadHeadReply(raw, data=data)

    def _reads_now(self, ring_version: int, ino: int) -> bool:
        """answer_now's conditions for a read of `ino`, which no prepared txn may hold."""
        if not (self._sole_voter() and self._serving() and self.sm.freeze is None
                and ring_version == self.ring_version()):
            return False
        try:
            unlocked(StateView(self.kv), ino)
        except RemoteError:
            return False
        return True

    def _chunk_now(self, ino: int, index: int, inner: int, n: int, cs: int,
                   etag: bytes | None, obase: int, *, slice_ok: bool
                   ) -> FileSlice | bytearray | None:
        """[inner, inner + n) of chunk (ino, index) from the page cache, or None. `etag`: the
        chunk is backed by that version of the object (None: it is not), so unless a write
        materialized it, only a clean copy of that version will do."""
        clean = etag is not None and not decode_u64(
            self.kv.get_sync(fs_keys.materialized_key(ino, index)))
        if clean:
            cache = self.bucket.cache if self.bucket is not None else None
            if (cache is None or inner + n > backed_len(obase, cs, index)
                    or not cache.valid(ino, index, etag)):
                return None
        chunks, offset = self.sm.chunks, index * cs + inner
        data: FileSlice | bytearray | None = None
        if slice_ok and n >= SLICE_MIN_BYTES:
            found = chunks.dup_nowait(ino, cs, offset, n)
            if found is not None:
                data = FileSlice(found[0], found[1], n)
        if data is None and n <= COPY_NOW_MAX_BYTES:
            data = chunks.pread_nowait(ino, cs, offset, n)
        if clean and data is not None and not cache.valid(ino, index, etag, count=False):
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
