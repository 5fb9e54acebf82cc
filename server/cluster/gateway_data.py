"""READ, WRITE and COMMIT of ClusterBackend (RFC 1813 §3.3.6, §3.3.7, §3.3.21).

Rules:
- Small files (up to config.inline_max_bytes) keep their bytes in the inode's group: a WRITE
  is one WriteInline record (a TxnLocal there). A file outgrowing that is moved to chunk 0 by
  UnInline(to_chunk=True) in the same transaction as the WRITE that outgrows it.
- Chunked files: a WRITE is cut by chunk (storage.chunkio.spans); each piece is a ChunkWrite
  record carrying its bytes, in the group that holds that chunk, and the size/mtime is a
  WriteMeta in the inode's group (the coordinator), all in ONE transaction. A WRITE inside
  chunks the inode's group holds (always chunk 0) is a TxnLocal; otherwise two-phase commit,
  whose prepare records hold the bytes durably in the chunk groups' logs. Why one transaction
  and not "data first, size later": bytes can then never lie past EOF (a lost size update
  would leave them there, to reappear in a later hole), a racing truncate or last unlink is
  ordered against the write by the txn locks, and nothing is ever left to clean up. The cost:
  a WRITE to a chunk held by another group passes through the coordinator (two hops).
- Every acknowledged WRITE is in the groups' Raft logs, so every WRITE answers FILE_SYNC and
  COMMIT has nothing to do (its verifier is the gateway's, random per start).
- WRITEs to one file through this gateway take turns (`_write_locks`, server/fs/meta.py's
  InoLock: a lock per inode held while in use): each is a transaction on the inode (its
  WriteMeta), and racing ones aborted each other into backoffs (fio, 1 MiB WRITEs to one
  file through node 2 of 3: 38 MiB/s with one in flight, 12 MiB/s with 8, NFS3ERR_JUKEBOX
  with 32).
- READ: ReadHead at the inode's group gives the inode and the inline / chunk-0 bytes in one
  call; the rest comes from ReadChunk at each chunk's group. A READ past chunk 0 of another
  group's inode held under a lease (gateway_leases.py) skips the ReadHead. READ does not
  update atime.
- `read_nowait` (the gateway's fast path): a READ inside one chunk, when this node's one-voter
  group holds both the inode and that chunk and the bytes are in the page cache (a written
  chunk, or a clean copy of the inode's bucket version), is answered on the event loop, as a
  FileSlice (sendfile) when large (GroupReads.cached_range). Otherwise None, and `read` runs.
- Files backed by the bucket (server/cluster/bucket.py): ReadChunk carries the origin, and the
  owners serve or fetch the object's bytes. A sequential reader (a READ that starts where the
  previous one of that file ended) makes the gateway ask the owners of the next
  `bucket.readahead_chunks` chunks to fetch them (fire and forget). A WRITE to a backed chunk
  carries ExpectChunk when the gateway believes it materialized, else MaterializeChunk with
  the chunk's bucket bytes (read through its owner) ahead of the ChunkWrite.
- READDIRPLUS of a directory from the bucket has the owners fetch its files ahead of their
  READs (`prefetch_listed`): each small file (at most one chunk) not asked for yet, smallest
  first, then the first chunk of each larger file, up to `bucket.prefetch_listed_bytes` per
  reply, LISTED_PREFETCH_PARALLEL at a time, none added while LISTED_PREFETCH_QUEUE are
  pending (a walk of a big tree outruns them). A reader of a model's or dataset's many small
  files then finds them cached, where each would otherwise wait for its own GET in turn; the
  first chunks of the large ones arrive while the reader still walks the tree, and the
  sequential read-ahead takes over from chunk 1. The budget bounds what a bare `ls -l` costs.
- The object changed in the bucket (ORIGIN_CHANGED): the file is revalidated
  (`_origin_checked`) and the client hears JUKEBOX, so its retry reads the new version.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, TypeVar

import trio

from nfs_gateway.backend import (
    CommitResult,
    Cred,
    FBig,
    FileId,
    FileType,
    Jukebox,
    ReadResult,
    StableHow,
    Stale,
    WriteResult,
)
from server.cluster import protocol as p
from server.cluster.bucket import backed_len, is_backed
from server.cluster.fence import fenced
from server.cluster.gateway_plan import Done, Plan, Reread
from server.fs import perms
from server.fs.changes import UNMATERIALIZED
from server.fs.common import read_count, require_reg
from server.fs.meta import InoLock
from server.fs.record_codec import decode_value, encode
from server.fs.records import (
    ChunkWrite,
    ExpectChunk,
    ExpectInode,
    Inode,
    MaterializeChunk,
    UnInline,
    WriteInline,
    WriteMeta,
)
from server.rpc.frames import RemoteError
from storage.chunkio import spans

log = logging.getLogger("objcache.gateway")
T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

SEQUENTIAL_FILES = 1024  # files whose last read end the gateway remembers (read-ahead)
PREFETCH_MEMORY = 4096  # chunks recently asked to be fetched ahead (not asked twice)
LISTED_PREFETCH_PARALLEL = 8  # files of a listing fetched ahead at once, per gateway
LISTED_PREFETCH_QUEUE = 256  # pending past this, listings add no more (a `find` of a big tree)
MATERIALIZED_MEMORY = 65536  # backed chunks this gateway knows are materialized

if TYPE_CHECKING:
    from server.cluster.gateway import ClusterBackend

    _Base = ClusterBackend
else:
    _Base = object


class DataOps(_Base):
    async def read(self, cred: Cred, fid: FileId, offset: int, count: int) -> ReadResult:
        return await self._origin_checked(fid.ino, self._read(cred, fid, offset, count))

    def read_nowait(self, cred: Cred, fid: FileId, offset: int, count: int
                    ) -> ReadResult | None:
        """READ answered on the event loop (the fast path, module rules), or None."""
        local = getattr(self.router, "local", None)
        if local is None:
            return None
        inode = self._get_nowait(fid)  # None unless this node's group holds it, or a lease
        if inode is None:
            return None
        n = read_count(cred, inode, offset, count, self.config.max_read_bytes)
        if n == 0:
            return ReadResult(b"", offset >= inode.size, self._attr(inode))
        if inode.inline:
            return None
        pieces = spans(offset, n, inode.chunk_size)
        ring = self.router.ring  # the ring _get_nowait asked under
        if len(pieces) != 1 or ring.group_of_chunk(inode.ino, pieces[0][0]) != local.group:
            return None
        index, inner, _ = pieces[0]
        data = local.cached_range(ring.version, inode, index, inner, n)
        if data is None:
            return None
        if inode.etag:
            self._read_ahead(inode, offset, n)
        return ReadResult(data, offset + n >= inode.size, self._attr(inode))

    async def _origin_checked(self, ino: int, call: Awaitable[T]) -> T:
        """`call`; if it found the file's bucket object changed (ORIGIN_CHANGED), the file
        is revalidated (gateway_bucket.py does it when present) and the client hears
        JUKEBOX, so its retry reads the new version."""
        try:
            return await call
        except RemoteError as e:
            if e.code != p.ORIGIN_CHANGED:
                raise
            revalidate = getattr(self, "revalidate_file", None)
            if revalidate is not None:
                await revalidate(ino)
            raise Jukebox(f"the bucket object of inode {ino} changed: {e.message}") from e

    async def _read(self, cred: Cred, fid: FileId, offset: int, count: int) -> ReadResult:
        count = max(0, min(count, self.config.max_read_bytes))
        held = self.held(("i", fid.ino))  # another group's inode, leased (gateway_leases.py)
        inode = decode_value(held) if held else None
        if inode is not None and not inode.inline and offset >= inode.chunk_size:
            reply = p.ReadHeadReply(held)  # past chunk 0: only the chunks' groups are asked
        else:
            reply = await self._leased_read_head(fid.ino, offset, count)
            inode = decode_value(reply.inode) if reply.inode else None
        if inode is None or inode.gen != fid.gen:
            raise Stale(f"no inode {fid.ino} generation {fid.gen}")
        n = read_count(cred, inode, offset, count, self.config.max_read_bytes)
        if n == 0:
            return ReadResult(b"", offset >= inode.size, self._attr(inode))
        head = _padded(reply.data, min(n, len(reply.data)))
        if inode.inline or offset + n <= inode.chunk_size:
            data = _padded(reply.data, n)
        else:
            rest = await self._read_chunks(inode, offset + len(head), offset + n)
            data = b"".join((head, rest)) if head else rest  # no copy of a lone piece
        if inode.etag and not inode.inline:
            self._read_ahead(inode, offset, n)
        return ReadResult(data, offset + n >= inode.size, self._attr(inode))

    def _chunk_request(self, inode: Inode, index: int, inner: int, n: int,
                       prefetch: bool = False) -> p.ReadChunk:
        if not is_backed(inode, index):
            return p.ReadChunk(0, inode.ino, index, inner, n)
        return p.ReadChunk(0, inode.ino, index, inner, n, inode.chunk_size, inode.store,
                           inode.okey, inode.etag, inode.obase, prefetch)

    async def _read_chunks(self, inode: Inode, start: int, end: int) -> bytes | memoryview:
        """Bytes [start, end) of a chunked file from the chunks' groups (holes read as 0);
        one chunk's piece as it came (a memoryview from the bulk channel), not copied."""
        cs = inode.chunk_size
        pieces = []
        for index, inner, n in spans(start, end - start, cs):
            req = self._chunk_request(inode, index, inner, n)
            reply = await self._at(
                lambda index=index: self.ring.group_of_chunk(inode.ino, index), req)
            pieces.append(_padded(reply.data, n))
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _read_ahead(self, inode: Inode, offset: int, n: int) -> None:
        """A sequential reader: have the next chunks' owners fetch them now (module rules)."""
        sequential = self._sequential.pop(inode.ino, None) == offset
        _bounded_put(self._sequential, inode.ino, offset + n, SEQUENTIAL_FILES)
        ahead = self.bucket.readahead_chunks
        if not sequential or ahead <= 0 or self._nursery is None:
            return
        cs = inode.chunk_size
        untouched = -(-(offset + n) // cs)  # the first chunk this read did not touch
        for index in range(untouched, untouched + ahead):
            if not is_backed(inode, index) or (inode.ino, index) in self._prefetched:
                continue
            _bounded_put(self._prefetched, (inode.ino, index), None, PREFETCH_MEMORY)
            self._nursery.start_soon(self._prefetch, inode, index)

    async def _prefetch(self, inode: Inode, index: int,
                        limiter: trio.CapacityLimiter | None = None) -> None:
        req = self._chunk_request(inode, index, 0, 0, prefetch=True)
        try:
            async with limiter or contextlib.nullcontext():
                await self._at(lambda: self.ring.group_of_chunk(inode.ino, index), req)
        except (Jukebox, RemoteError) as e:  # best effort: the read itself will fetch
            self._prefetched.pop((inode.ino, index), None)
            log.debug("read-ahead of chunk %d of %d: %s", index, inode.ino, e)

    def prefetch_listed(self, children: Iterable[Inode | None]) -> None:
        """READDIRPLUS listed these: have their owners fetch them from the bucket now, the
        small files whole (smallest first), then the first chunk of each larger file, within
        the budget (module rules)."""
        budget = self.bucket.prefetch_listed_bytes
        if budget <= 0 or self._nursery is None:
            return
        listed = [c for c in children
                  if c is not None and c.ftype == FileType.REG and is_backed(c, 0)
                  and (c.ino, 0) not in self._prefetched]
        # Stable: the larger files keep the listing's order among themselves.
        listed.sort(key=lambda c: (c.obase > c.chunk_size, min(c.obase, c.chunk_size)))
        for child in listed:
            budget -= min(child.obase, child.chunk_size)
            if budget < 0 or self._listed_pending >= LISTED_PREFETCH_QUEUE:
                break
            _bounded_put(self._prefetched, (child.ino, 0), None, PREFETCH_MEMORY)
            self._listed_pending += 1
            self._nursery.start_soon(self._prefetch_listed, child)

    async def _prefetch_listed(self, child: Inode) -> None:
        try:
            await self._prefetch(child, 0, self._listed_limiter)
        finally:
            self._listed_pending -= 1

    @fenced
    async def write(
        self, cred: Cred, fid: FileId, offset: int, data: memoryview, stable: StableHow
    ) -> WriteResult:
        async with InoLock(self._write_locks, fid.ino):  # module rules
            return await self._write(cred, fid, offset, bytes(data))

    async def _write(self, cred: Cred, fid: FileId, offset: int, blob: bytes) -> WriteResult:
        async def build() -> Plan | Done:
            before = await self._get(fid)
            require_reg(before)
            perms.check_io(cred, before, perms.W)
            end = offset + len(blob)
            if end > self.config.max_file_size:
                raise FBig(f"write to {end}", wcc=self._wcc(before, before))
            if not blob:
                return Done(WriteResult(0, StableHow.FILE_SYNC, self.verifier,
                                        self._wcc(before, before)))
            bases = await self._bases(before, offset, len(blob))
            plan = self._write_plan(before, offset, blob, perms.write_clears_suid(cred, before),
                                    bases)
            plan.finish = lambda after: WriteResult(
                len(blob), StableHow.FILE_SYNC, self.verifier,
                self._wcc(before, after[before.ino]))
            return plan

        return await self._change(build)

    async def _bases(self, inode: Inode, offset: int, count: int) -> dict[int, bytes | None]:
        """For each backed chunk the write touches: None when the gateway believes it is
        materialized (the plan checks it), else its bucket bytes (read through its owner)."""
        out: dict[int, bytes | None] = {}
        if not inode.etag or inode.inline:
            return out
        for index, _, _ in spans(offset, count, inode.chunk_size):
            if not is_backed(inode, index):
                continue
            if (inode.ino, index) in self._materialized:
                out[index] = None
                continue
            n = backed_len(inode.obase, inode.chunk_size, index)
            if index == 0:
                reply = await self._origin_checked(
                    inode.ino, self._at_inode(inode.ino, p.ReadHead(0, inode.ino, 0, n)))
                if reply.inode != encode(inode):
                    raise Reread(f"inode {inode.ino} changed while reading its base")
            else:
                reply = await self._origin_checked(inode.ino, self._at(
                    lambda index=index: self.ring.group_of_chunk(inode.ino, index),
                    self._chunk_request(inode, index, 0, n)))
            # bytes: a base goes into a record (MaterializeChunk), and the record codec's
            # CBOR would write a memoryview (the bulk channel's reply) as a list of ints.
            out[index] = bytes(_padded(reply.data, n))
        return out

    def _note_materialized(self, ino: int, indexes: list[int]) -> None:
        for index in indexes:
            _bounded_put(self._materialized, (ino, index), None, MATERIALIZED_MEMORY)

    def _write_plan(self, inode: Inode, offset: int, blob: bytes, clear_suid: bool,
                    bases: dict[int, bytes | None] | None = None) -> Plan:
        ring = self.ring
        group = ring.group_of_inode(inode.ino)
        plan = Plan(group, {inode.ino: inode})
        now = self._now()
        end = offset + len(blob)
        if end <= self.config.inline_max_bytes and (inode.inline or inode.size == 0):
            plan.add(group, WriteInline(inode.ino, offset, blob, now, clear_suid))
            return plan
        if inode.inline:
            plan.add(group, UnInline(inode.ino, to_chunk=True))
        cs = inode.chunk_size
        assert cs > 0, f"regular file {inode.ino} without a chunk size"
        pos = 0
        bases = bases or {}
        # The plan holds for the object version the file had when it was read (the bases, the
        # chunks left out of them): once a write-back has marked the file clean (a new
        # version, a new obase) and unpinned a chunk, a base read before would overwrite
        # bytes the object holds past the old obase with zeros (FINDINGS.md 9), and a chunk
        # planned as the file's own bytes (no base needed) may be only a clean copy of the
        # object, which its node may have evicted: the write then kept zeros where the
        # object's bytes were (FINDINGS.md 13).
        plan.add(group, ExpectInode(inode.ino, etag=inode.etag, obase=inode.obase,
                                    has_etag=True))
        for index, inner, n in spans(offset, len(blob), cs):
            g = ring.group_of_chunk(inode.ino, index)
            if index in bases:
                base = bases[index]
                plan.add(g, ExpectChunk(inode.ino, index) if base is None
                         else MaterializeChunk(inode.ino, index, cs, base))
            plan.add(g, ChunkWrite(inode.ino, index, inner, blob[pos:pos + n], cs))
            pos += n
        plan.add(group, WriteMeta(inode.ino, end, now, clear_suid))
        if bases:
            touched = sorted(bases)

            def on_abort(reason: str) -> None:
                if reason == UNMATERIALIZED:  # believed materialized, but it was not (evicted)
                    for index in touched:
                        self._materialized.pop((inode.ino, index), None)

            plan.on_abort = on_abort
            finish = plan.finish

            def finished(after: dict[int, Inode | None]) -> WriteResult:
                self._note_materialized(inode.ino, touched)
                return finish(after)

            plan.finish = finished
        return plan

    async def commit(self, cred: Cred, fid: FileId, offset: int, count: int) -> CommitResult:
        """Every WRITE was FILE_SYNC (module rules): nothing to make durable."""
        inode = await self._get(fid)
        require_reg(inode)
        return CommitResult(self.verifier, self._wcc(inode, inode))


def _bounded_put(memory: dict[K, V], key: K, value: V, limit: int) -> None:
    """Remember key (as the newest), forgetting the oldest entries past `limit`."""
    memory.pop(key, None)
    memory[key] = value
    while len(memory) > limit:
        memory.pop(next(iter(memory)))


def _padded(data: bytes | memoryview, n: int) -> bytes | memoryview:
    return data[:n] if len(data) >= n else b"".join((data, bytes(n - len(data))))
