"""READ, WRITE and COMMIT of ClusterBackend (RFC 1813 §3.3.6, §3.3.7, §3.3.21).

Rules:
- Small files (up to config.inline_max_bytes) keep their bytes in the inode's group: a WRITE
  is one WriteInline record (a TxnLocal there). A file outgrowing that is moved to chunk 0 by
  UnInline(to_chunk=True) in the same transaction as the WRITE that outgrows it.
- Chunked files: a WRITE is cut by chunk (storage.chunks.spans); each piece is a ChunkWrite
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
- READ: ReadHead at the inode's group gives the inode and the inline / chunk-0 bytes in one
  call; the rest comes from ReadChunk at each chunk's group. READ does not update atime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nfs_gateway.backend import (
    CommitResult,
    Cred,
    FBig,
    FileId,
    ReadResult,
    StableHow,
    Stale,
    WriteResult,
)
from server.cluster import protocol as p
from server.cluster.gateway_plan import Done, Plan
from server.fs import perms
from server.fs.common import require_reg
from server.fs.records import ChunkWrite, Inode, UnInline, WriteInline, WriteMeta, decode_value
from storage.chunks import spans

if TYPE_CHECKING:
    from server.cluster.gateway import ClusterBackend

    _Base = ClusterBackend
else:
    _Base = object


class DataOps(_Base):
    async def read(self, cred: Cred, fid: FileId, offset: int, count: int) -> ReadResult:
        count = max(0, min(count, self.config.max_read_bytes))
        reply = await self._at_inode(fid.ino, p.ReadHead(0, fid.ino, offset, count))
        inode = decode_value(reply.inode) if reply.inode else None
        if inode is None or inode.gen != fid.gen:
            raise Stale(f"no inode {fid.ino} generation {fid.gen}")
        require_reg(inode)
        perms.check_io(cred, inode, perms.R)
        if offset >= inode.size or count == 0:
            return ReadResult(b"", offset >= inode.size, self._attr(inode))
        n = min(count, inode.size - offset)
        head = _padded(reply.data, min(n, len(reply.data)))
        if inode.inline or offset + n <= inode.chunk_size:
            data = _padded(reply.data, n)
        else:
            data = head + await self._read_chunks(inode, offset + len(head), offset + n)
        return ReadResult(data, offset + n >= inode.size, self._attr(inode))

    async def _read_chunks(self, inode: Inode, start: int, end: int) -> bytes:
        """Bytes [start, end) of a chunked file from the chunks' groups (holes read as 0)."""
        cs = inode.chunk_size
        pieces = []
        for index, inner, n in spans(start, end - start, cs):
            req = p.ReadChunk(0, inode.ino, index, inner, n)
            reply = await self._at(
                lambda index=index: self.ring.group_of_chunk(inode.ino, index), req)
            pieces.append(_padded(reply.data, n))
        return b"".join(pieces)

    async def write(
        self, cred: Cred, fid: FileId, offset: int, data: memoryview, stable: StableHow
    ) -> WriteResult:
        blob = bytes(data)

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
            plan = self._write_plan(before, offset, blob, perms.write_clears_suid(cred, before))
            plan.finish = lambda after: WriteResult(
                len(blob), StableHow.FILE_SYNC, self.verifier,
                self._wcc(before, after[before.ino]))
            return plan

        return await self._change(build)

    def _write_plan(self, inode: Inode, offset: int, blob: bytes, clear_suid: bool) -> Plan:
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
        for index, inner, n in spans(offset, len(blob), cs):
            plan.add(ring.group_of_chunk(inode.ino, index),
                     ChunkWrite(inode.ino, index, inner, blob[pos:pos + n], cs))
            pos += n
        plan.add(group, WriteMeta(inode.ino, end, now, clear_suid))
        return plan

    async def commit(self, cred: Cred, fid: FileId, offset: int, count: int) -> CommitResult:
        """Every WRITE was FILE_SYNC (module rules): nothing to make durable."""
        inode = await self._get(fid)
        require_reg(inode)
        return CommitResult(self.verifier, self._wcc(inode, inode))


def _padded(data: bytes, n: int) -> bytes:
    return data[:n] if len(data) >= n else data + bytes(n - len(data))
