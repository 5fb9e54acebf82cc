"""READ, WRITE and COMMIT of LocalBackend (RFC 1813 §3.3.6, §3.3.7, §3.3.21).

Rules:
- Small files (up to config.inline_max_bytes) keep their bytes in LevelDB: their WRITEs become
  WriteInline records, so a FILE_SYNC write of a new small file costs one fsync (the LevelDB log)
  and no chunk file or directory is ever made for it. UNSTABLE bytes wait in memory with the
  pending metadata (server/fs/meta.py) until COMMIT, a stable write or a flush. A file that
  grows past the limit has its bytes copied to chunk 0 and fsynced before the UnInline record
  drops them from LevelDB.
- Chunked files: WRITE pwrites the chunks (data lands in the page cache) and folds size and mtime
  into the pending metadata. FILE_SYNC/DATA_SYNC fdatasync the chunks written and sync the
  metadata; COMMIT fsyncs every dirty chunk of the file and syncs the metadata.
- An inode's data lock is held for the whole WRITE: writes to one file are serialized (as Linux
  does with i_rwsem), and truncation and deletion of its chunks wait for them.
- No bytes ever lie past EOF in a chunk file outside a WRITE in progress (a failed WRITE cuts
  them, the start after a crash repairs them), so a WRITE past EOF needs no zeroing.
- READ does not update atime (as with a noatime mount): reading must not cost a metadata write.
- `read_nowait` answers from the caches and the page cache (the gateway's fast path) or says
  None; `read` tries it first, then reads in a worker thread. A large cached range is answered
  as a FileSlice (a duplicate descriptor of the chunk file), which the gateway sends with
  os.sendfile: the bytes are not copied through user space.
- `write_nowait` answers an UNSTABLE WRITE of a small file from memory when nothing else holds
  the inode's data lock (no await runs between its check and its change, so not taking the
  lock is as good as taking it); the gateway then needs no task for the call.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from nfs_gateway.backend import (
    CommitResult,
    Cred,
    FBig,
    FileId,
    FileSlice,
    ReadResult,
    StableHow,
    Stale,
    WriteResult,
)
from server.fs import perms
from server.fs.common import disk_error, read_count, require_reg, wcc
from server.fs.meta import NOT_CACHED
from server.fs.records import Inode, UnInline
from storage.chunkio import ChunkIOError

if TYPE_CHECKING:
    from server.fs.backend import LocalBackend

    _Base = LocalBackend
else:
    _Base = object

# READs at least this large are answered from the page cache as a FileSlice (sendfile); smaller
# ones are copied, which costs less than a dup, a sendfile and a close.
SLICE_MIN_BYTES = 64 * 1024


class DataOps(_Base):
    def read_nowait(self, cred: Cred, fid: FileId, offset: int, count: int) -> ReadResult | None:
        return self._read_cached(cred, fid, offset, count, slices=True)

    def _read_cached(
        self, cred: Cred, fid: FileId, offset: int, count: int, *, slices: bool
    ) -> ReadResult | None:
        """READ from the caches and the page cache, or None; a FileSlice only if `slices`."""
        inode = self._get_nowait(fid)
        if inode is None:
            return None
        n = read_count(cred, inode, offset, count, self.config.max_read_bytes)
        if n == 0:
            return ReadResult(b"", offset >= inode.size, self._attr(inode))
        if inode.inline:
            blob = self._meta.inline_nowait(inode.ino)
            if blob is NOT_CACHED:
                return None
            data = _inline_slice(blob, offset, n)  # type: ignore[arg-type]
        else:
            try:
                # Page-cache hits only: RWF_NOWAIT refuses instead of blocking.
                data = self._cached_range(inode, offset, n, slices)
            except ChunkIOError as e:
                raise disk_error(e) from e
            if data is None:
                return None
        return ReadResult(data, offset + n >= inode.size, self._attr(inode))

    def _cached_range(
        self, inode: Inode, offset: int, n: int, slices: bool
    ) -> FileSlice | bytearray | None:
        if slices and n >= SLICE_MIN_BYTES:
            found = self._chunks.dup_nowait(inode.ino, inode.chunk_size, offset, n)
            if found is not None:
                return FileSlice(found[0], found[1], n)
        return self._chunks.pread_nowait(inode.ino, inode.chunk_size, offset, n)

    async def read(self, cred: Cred, fid: FileId, offset: int, count: int) -> ReadResult:
        found = self._read_cached(cred, fid, offset, count, slices=False)
        if found is not None:
            return found
        inode = await self._get(fid)
        n = read_count(cred, inode, offset, count, self.config.max_read_bytes)
        if n == 0:
            return ReadResult(b"", offset >= inode.size, self._attr(inode))
        if inode.inline:
            data = _inline_slice(await self._meta.inline(inode.ino), offset, n)
        else:
            try:
                data = await self._chunks.pread(inode.ino, inode.chunk_size, offset, n)
            except ChunkIOError as e:
                raise disk_error(e) from e
        return ReadResult(data, offset + n >= inode.size, self._attr(inode))

    async def write(
        self, cred: Cred, fid: FileId, offset: int, data: memoryview, stable: StableHow
    ) -> WriteResult:
        async with self._ino_lock(fid.ino):
            before = await self._get(fid)
            require_reg(before)
            perms.check_io(cred, before, perms.W)
            end = offset + len(data)
            if end > self.config.max_file_size:
                raise FBig(f"write to {end}", wcc=wcc(before, before, self.fsid))
            if not data:
                return WriteResult(0, stable, self._verifier, wcc(before, before, self.fsid))
            clear_suid = perms.write_clears_suid(cred, before)
            if self._stays_inline(before, end):
                after, committed = await self._write_inline(
                    fid, before, offset, data, stable, clear_suid
                )
            else:
                current = await self._uninline(fid) if before.inline else before
                after, committed = await self._write_chunks(
                    fid, current, offset, data, stable, clear_suid
                )
        return WriteResult(len(data), committed, self._verifier, wcc(before, after, self.fsid))

    def write_nowait(
        self, cred: Cred, fid: FileId, offset: int, data: memoryview, stable: StableHow
    ) -> WriteResult | None:
        """`write` of an UNSTABLE WRITE to a small file, from memory: its bytes wait in the
        pending state as they would there. None: `write` does it (other writes, a cache miss,
        the inode's data lock in use, or pending state due for a flush)."""
        if stable != StableHow.UNSTABLE or not data or fid.ino in self._ino_locks:
            return None
        before = self._get_nowait(fid)
        if before is None:
            return None
        end = offset + len(data)
        if not self._stays_inline(before, end):
            return None
        require_reg(before)
        perms.check_io(cred, before, perms.W)
        blob = b"" if before.size == 0 else self._meta.inline_nowait(fid.ino)
        if blob is NOT_CACHED or self._meta.pending_due():
            return None
        clear_suid = perms.write_clears_suid(cred, before)
        after = self._meta.note_inline_write(
            before, blob, offset, bytes(data), self._now(), clear_suid  # type: ignore[arg-type]
        )
        return WriteResult(len(data), stable, self._verifier, wcc(before, after, self.fsid))

    def _stays_inline(self, inode: Inode, end: int) -> bool:
        """Whether a WRITE ending at `end` keeps (or makes) `inode` an inline file."""
        return end <= self.config.inline_max_bytes and (inode.inline or inode.size == 0)

    async def _write_inline(
        self,
        fid: FileId,
        before: Inode,
        offset: int,
        data: memoryview,
        stable: StableHow,
        clear_suid: bool,
    ) -> tuple[Inode, StableHow]:
        """Like a chunk WRITE, the bytes wait in memory (pending) until COMMIT or a flush; a
        stable WRITE flushes them with one synced LevelDB write."""
        blob = b"" if before.size == 0 else await self._meta.inline(fid.ino)
        current = await self._get(fid)  # removed meanwhile (REMOVE takes no data lock)?
        after = self._meta.note_inline_write(
            current, blob, offset, bytes(data), self._now(), clear_suid
        )
        if stable == StableHow.UNSTABLE:
            if self._meta.pending_due():
                await self._flush(sync=False)
            return after, StableHow.UNSTABLE
        await self._flush(sync=True)
        return after, StableHow.FILE_SYNC  # data and metadata went in one synced write

    async def _uninline(self, fid: FileId) -> Inode:
        """Move an inline file's bytes to chunk 0, durably, then drop them from LevelDB."""
        inode = await self._get(fid)
        blob = await self._meta.inline(inode.ino)
        try:
            if blob:
                await self._chunks.pwrite(inode.ino, inode.chunk_size, 0, memoryview(blob))
                await self._chunks.fsync(inode.ino)
        except ChunkIOError as e:
            await self._chunks.delete(inode.ino)  # inline files own no chunks
            raise disk_error(e) from e
        async with self._writing():
            await self._get(fid)
            changes = await self._commit([UnInline(inode.ino)], sync=False)
        after = changes.inodes[inode.ino]
        assert after is not None
        return after

    async def _write_chunks(
        self,
        fid: FileId,
        before: Inode,
        offset: int,
        data: memoryview,
        stable: StableHow,
        clear_suid: bool,
    ) -> tuple[Inode, StableHow]:
        try:
            touched = await self._chunks.pwrite(before.ino, before.chunk_size, offset, data)
        except ChunkIOError as e:
            await self._cut_partial_write(before)
            raise disk_error(e, wcc(before, before, self.fsid)) from e
        current = await self._meta.inode(fid.ino)
        if current is None or current.gen != fid.gen:
            # Removed while we wrote: its deletion may have skipped the data (size 0).
            await self._chunks.delete(fid.ino)
            raise Stale(f"inode {fid.ino} was removed during the write")
        after = self._meta.note_write(current, offset + len(data), self._now(), clear_suid)
        if stable == StableHow.UNSTABLE:
            if self._meta.pending_due():
                await self._flush(sync=False)
            return after, StableHow.UNSTABLE
        await self._sync_file(after.ino, touched)
        return after, StableHow.FILE_SYNC  # the metadata is synced too: more than DATA_SYNC

    async def _cut_partial_write(self, inode: Inode) -> None:
        """A failed WRITE may have put some bytes past EOF; a later hole must not show them.
        Best effort: if this fails too, the next start's repair does it (the disk is sick)."""
        with contextlib.suppress(ChunkIOError):
            await self._chunks.truncate(inode.ino, inode.chunk_size, inode.size)

    async def _flush(self, *, sync: bool) -> None:
        """Commit pending WRITE metadata (durably if sync)."""
        async with self._writing():
            await self._commit([], sync=sync)

    async def _sync_file(self, ino: int, indexes: list[int] | None) -> None:
        try:
            if self._chunks.needs_sync(ino):  # most COMMITs of small files: nothing to fsync
                await self._chunks.fsync(ino, indexes, data_only=indexes is not None)
        except ChunkIOError as e:
            self._regenerate_verifier()  # what we promised may not be on disk
            raise disk_error(e) from e
        await self._flush(sync=True)

    async def commit(self, cred: Cred, fid: FileId, offset: int, count: int) -> CommitResult:
        """Everything written to the file is on disk before the reply (RFC 1813 §3.3.21); we
        sync the whole file whatever the range, as the RFC allows."""
        async with self._ino_lock(fid.ino):
            before = await self._get(fid)
            require_reg(before)
            await self._sync_file(fid.ino, None)
            after = await self._get(fid)
        return CommitResult(self._verifier, wcc(before, after, self.fsid))


def _inline_slice(blob: bytes, offset: int, n: int) -> bytes:
    data = blob[offset : offset + n]
    if len(data) < n:
        data += bytes(n - len(data))  # set by a SETATTR that grew the file
    return data
