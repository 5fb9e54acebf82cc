"""LocalBackend: the Backend protocol over one node's LevelDB and chunk files.

Rules:
- Every namespace or attribute change is a list of records (server/fs/records.py) applied by the
  state machine in one atomic LevelDB batch, under the metadata writer lock; checks happen under
  the same lock, so they hold when the change applies. Records carry their timestamps and ids,
  chosen here; the cluster will put the same records into Raft entries.
- Lock order: an inode's data lock (WRITE, truncate, chunk deletion), then the metadata lock.
  Data effects of a change (deleting or trimming chunks) run after its batch is written, so a
  crash between the two leaves only garbage, collected at the next start.
- Durability (RFC 1813 §3.3.7, §3.3.21): UNSTABLE WRITE data stays in the page cache (small
  files: in memory) and its size and mtime in memory; FILE_SYNC/DATA_SYNC WRITE and COMMIT fsync
  the inode's dirty chunks and write the metadata with sync. Namespace changes reach the kernel
  before the reply and are fsynced first only with config.sync_metadata (see FsConfig).
- The write verifier changes exactly when unstable data may have been lost: it is kept across a
  clean shutdown (close() writes a marker after syncing everything) and replaced otherwise.
- Inode ids are never reused (a persisted counter); the root is inode 1, made at first start,
  root-owned with mode 0755 like a fresh local file system (FsConfig.root_mode/uid/gid).
- The data directory holds `meta/` (LevelDB) and `chunks/` (chunk files).
- GETATTR, ACCESS, LOOKUP and READ also have `*_nowait` twins (the gateway's optional fast
  path, nfs_gateway/backend.py): the same checks and answers from the caches and the page cache,
  or None when I/O is needed. The async methods try them first.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import trio

from nfs_gateway.backend import (
    Attr,
    Cred,
    FileId,
    FileType,
    FsStat,
    IOError_,
    LookupResult,
    NoEnt,
    NotDir,
    ReadDirResult,
    ServerFault,
    Stale,
)
from server.fs import keys, perms
from server.fs.attrops import AttrOps
from server.fs.changes import Changes, StateError
from server.fs.common import DOT, DOTDOT, check_name, disk_error, require_dir, to_attr, wcc
from server.fs.config import FsConfig
from server.fs.datapath import DataOps
from server.fs.meta import NOT_CACHED, InoLock, MetaIOError, MetaStore
from server.fs.namespace import NamespaceOps
from server.fs.readdir import read_dir_page
from server.fs.records import CreateInode, Inode
from storage.chunkio import ChunkIOError
from storage.chunks import ChunkStore
from storage.kv import KvStore

ROOT_INO = 1
_ATTR_MEMO_ENTRIES = 16384


class LocalBackend(NamespaceOps, DataOps, AttrOps):
    """One node's file system. `async with LocalBackend(path) as fs:` or open()/close()."""

    def __init__(
        self,
        data_dir: Path,
        *,
        fsid: int = 1,
        chunk_size: int | None = None,
        config: FsConfig | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.fsid = fsid
        self.config = config or FsConfig()
        self.chunk_size = chunk_size or self.config.chunk_size
        assert self.chunk_size >= 4096, self.chunk_size
        self._clock = clock
        self._verifier = b""
        self._unclean_start = False
        self._ino_locks: dict[int, tuple[trio.Lock, int]] = {}
        self._kv: KvStore | None = None
        self._root_gen = 0
        # fattr3 of the inode objects last seen, by inode id: inodes are immutable, so an
        # unchanged inode (the same object) has the same Attr. Bounded, cleared when full.
        self._attrs: dict[int, tuple[Inode, Attr]] = {}

    # -- life cycle -------------------------------------------------------------------------

    async def open(self) -> None:
        assert self._kv is None, "already open"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._kv = await KvStore.open(self.data_dir / "meta", self.config.kv)
        self._chunks = ChunkStore(self.data_dir / "chunks", self.config.chunks)
        self._meta = MetaStore(self._kv, self.config)
        await self._meta.load()
        clean, verf = await self._kv.get_many([keys.CLEAN_SHUTDOWN, keys.WRITE_VERF])
        root = await self._meta.inode(ROOT_INO)
        if root is None:
            root = await self._make_root()
        self._root_gen = root.gen
        if clean is not None and verf is not None and len(verf) == 8:
            self._verifier = verf
        else:
            # Unstable writes of the last run may be gone: a new verifier tells clients to
            # send them again (RFC 1813 §3.3.7).
            self._verifier = secrets.token_bytes(8)
            self._unclean_start = verf is not None
        # Until close() says otherwise, the next start must assume a crash.
        await self._kv.write(
            [(keys.WRITE_VERF, self._verifier), (keys.CLEAN_SHUTDOWN, None)], sync=True
        )
        if self._unclean_start:
            await self._repair_chunks()

    async def _make_root(self) -> Inode:
        c = self.config
        rec = CreateInode(
            ino=ROOT_INO,
            gen=self._new_gen(),
            ftype=FileType.DIR,
            mode=c.root_mode,
            uid=c.root_uid,
            gid=c.root_gid,
            nlink=2,
            time_ns=self._clock(),
            parent=ROOT_INO,  # the root's `..` is itself
        )
        async with self._writing():
            changes = await self._commit([rec], sync=True)
        root = changes.inodes[ROOT_INO]
        assert root is not None
        return root

    async def _repair_chunks(self) -> None:
        """After a crash: delete the chunks of inodes whose deletion never reached its data
        effect, and cut every file's chunks at its size, since a lost WRITE's bytes may lie past
        EOF and must not reappear inside a later hole. Afterwards bytes past EOF never exist,
        which lets WRITE skip any check (one pass over the chunk directories, at start only)."""
        chunks = self._chunks
        inos = await chunks.run_sync(chunks.stored_inodes_sync)
        live = await self._meta.inodes(inos)

        def repair() -> None:
            for ino, inode in zip(inos, live, strict=True):
                if inode is None or inode.ftype != FileType.REG or inode.size == 0 or inode.inline:
                    chunks.delete_sync(ino)
                else:
                    chunks.truncate_sync(ino, inode.chunk_size, inode.size)

        await chunks.run_sync(repair)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Optional service (start it in the node's nursery, after open()): pending WRITE
        metadata that waited pending_meta_max_age_s reaches LevelDB even if no further WRITE,
        COMMIT or change comes (DESIGN: "or a short timer"). Unsynced, like any UNSTABLE data."""
        task_status.started()
        while True:
            await trio.sleep(self.config.pending_meta_max_age_s)
            if self._kv is not None and self._meta.pending_due():
                await self._flush(sync=False)

    async def close(self) -> None:
        """Make everything durable, then mark the shutdown clean (the verifier survives)."""
        if self._kv is None:
            return
        await self._flush(sync=False)
        await self._chunks.run_sync(self._chunks.sync_all_sync)
        await self._kv.write([(keys.CLEAN_SHUTDOWN, b"1")], sync=True)
        await self._shut()

    async def abort(self) -> None:
        """Stop as a crash would: nothing is flushed and no clean marker is written. For tests
        and simulations (the LevelDB lock must be released to reopen in the same process)."""
        if self._kv is not None:
            await self._shut()

    async def _shut(self) -> None:
        assert self._kv is not None
        self._chunks.close_sync()
        await self._kv.close()
        self._kv = None

    async def __aenter__(self) -> LocalBackend:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def verifier(self) -> bytes:
        """writeverf3 of this run (RFC 1813 §3.3.7)."""
        return self._verifier

    def stats(self) -> dict[str, int]:
        """Gauges and counters for /metrics (names follow Prometheus conventions)."""
        m = self._meta
        return {
            "fs_inodes": m.meta[keys.INODE_COUNT],
            "fs_applied_index": m.meta[keys.APPLIED_INDEX],
            "fs_inode_cache_entries": len(m._inodes),
            "fs_dirent_cache_entries": len(m._dirents),
            "fs_pending_inodes": len(m._pending),
            "fs_pending_inline_bytes": m._pending_bytes,
            "fs_metadata_batches_total": m._written_seq,
            "fs_metadata_batches_durable": m._durable_seq,
            "fs_open_chunk_fds": self._chunks.open_fds(),
            "fs_dirty_chunk_inodes": len(self._chunks.dirty_inodes()),
        }

    @property
    def kv(self) -> KvStore:
        """The node's LevelDB, for tenants that share it (the Raft log under its own prefix)."""
        assert self._kv is not None, "not open"
        return self._kv

    # -- helpers ----------------------------------------------------------------------------

    def _now(self) -> int:
        return self._clock()

    def _new_gen(self) -> int:
        return secrets.randbits(32) | 1  # never 0, so FileId(ino, 0) is always stale

    async def _get(self, fid: FileId) -> Inode:
        inode = await self._meta.inode(fid.ino)
        if inode is None or inode.gen != fid.gen:
            raise Stale(f"no inode {fid.ino} generation {fid.gen}")
        return inode

    def _get_nowait(self, fid: FileId) -> Inode | None:
        """The inode if cached (None: not cached); Stale if it is known to be gone."""
        inode = self._meta.inode_nowait(fid.ino)
        if inode is NOT_CACHED:
            return None
        if inode is None or inode.gen != fid.gen:  # type: ignore[union-attr]
            raise Stale(f"no inode {fid.ino} generation {fid.gen}")
        return inode  # type: ignore[return-value]

    def _fid(self, inode: Inode) -> FileId:
        return FileId(inode.ino, inode.gen)

    def _attr(self, inode: Inode) -> Attr:
        hit = self._attrs.get(inode.ino)
        if hit is not None and hit[0] is inode:
            return hit[1]
        attr = to_attr(inode, self.fsid)
        if len(self._attrs) >= _ATTR_MEMO_ENTRIES:
            self._attrs.clear()
        self._attrs[inode.ino] = (inode, attr)
        return attr

    def _ino_lock(self, ino: int) -> InoLock:
        """Serializes data changes of one inode. The table holds only inodes in use."""
        return InoLock(self._ino_locks, ino)

    def _writing(self):  # type: ignore[no-untyped-def]
        """The metadata writer lock; leaving it waits for the fsync of what was committed."""
        return self._meta.writing(self._metadata_lost)

    def _metadata_lost(self, e: MetaIOError) -> IOError_:
        # Pending WRITE metadata may be gone with the batch: announce it like a crash.
        self._regenerate_verifier()
        return IOError_(str(e))

    def _regenerate_verifier(self) -> None:
        """Unstable data may be lost: a new verifier makes clients send it again (§3.3.7)."""
        self._verifier = secrets.token_bytes(8)

    async def _commit(self, records: list[object], *, sync: bool | None = None) -> Changes:
        """Apply records inside `_writing()`; durable when that block is left (if sync)."""
        try:
            return await self._meta.commit(
                records, sync=self.config.sync_metadata if sync is None else sync
            )
        except StateError as e:
            raise ServerFault(str(e)) from e

    async def _data_effects(self, changes: Changes, held: int | None = None) -> None:
        """Delete or trim chunks after their metadata change is written."""
        try:
            for ino, size in sorted(changes.delete_data.items()):
                if size == 0:
                    continue  # never had bytes (a crash's leftovers are repaired at start)
                if ino == held:
                    await self._chunks.delete(ino)
                else:
                    async with self._ino_lock(ino):
                        await self._chunks.delete(ino)
            for ino, (chunk_size, keep) in sorted(changes.trim_data.items()):
                # Size changes normally hold the inode's data lock (held); if a racing CREATE
                # found another file than it locked, trimming without it is the lesser evil.
                await self._chunks.truncate(ino, chunk_size, keep)
        except ChunkIOError as e:
            raise disk_error(e) from e

    # -- attributes -------------------------------------------------------------------------

    async def export_root(self, path: str) -> FileId:
        """`/` is the root; deeper paths are walked like LOOKUPs by root (MOUNT MNT)."""
        inode = await self._get(FileId(ROOT_INO, self._root_gen))
        root_cred = Cred(0, 0)
        for part in (p for p in path.split("/") if p):
            result = await self.lookup(root_cred, self._fid(inode), part.encode())
            inode = await self._get(result.fid)
        require_dir(inode)
        return self._fid(inode)

    def lookup_nowait(self, cred: Cred, dir_fid: FileId, name: bytes) -> LookupResult | None:
        d = self._get_nowait(dir_fid)
        if d is None:
            return None
        require_dir(d)
        perms.check(cred, d, perms.X)
        if name == DOT:
            child = d
        elif name == DOTDOT:
            child = self._meta.inode_nowait(d.parent)
            if child is NOT_CACHED:
                return None
            if child is None:
                raise ServerFault(f"directory {d.ino} has no parent {d.parent}")
        else:
            check_name(name, self.config.max_name_bytes)
            ent = self._meta.dirent_nowait(d.ino, name)
            if ent is NOT_CACHED:
                return None
            child = None if ent is None else self._meta.inode_nowait(ent.ino)  # type: ignore[union-attr]
            if child is NOT_CACHED:
                return None
            if child is None:
                raise NoEnt(f"{name!r}", wcc=wcc(None, d, self.fsid))
        return LookupResult(self._fid(child), self._attr(child), self._attr(d))  # type: ignore[arg-type]

    async def lookup(self, cred: Cred, dir_fid: FileId, name: bytes) -> LookupResult:
        found = self.lookup_nowait(cred, dir_fid, name)
        if found is not None:
            return found
        d = await self._get(dir_fid)
        require_dir(d)
        perms.check(cred, d, perms.X)
        if name == DOT:
            child = d
        elif name == DOTDOT:
            child = await self._parent(d)
        else:
            check_name(name, self.config.max_name_bytes)
            ent = await self._meta.dirent(d.ino, name)
            child = None if ent is None else await self._meta.inode(ent.ino)
            if child is None:
                raise NoEnt(f"{name!r}", wcc=wcc(None, d, self.fsid))
        return LookupResult(self._fid(child), self._attr(child), self._attr(d))

    async def _parent(self, d: Inode) -> Inode:
        parent = await self._meta.inode(d.parent)
        if parent is None:
            raise ServerFault(f"directory {d.ino} has no parent {d.parent}")
        return parent

    async def fsstat(self, fid: FileId) -> tuple[FsStat, Attr]:
        inode = await self._get(fid)
        st = await self._chunks.run_sync(os.statvfs, self.data_dir)
        used = self._meta.meta[keys.INODE_COUNT]
        free_files = max(self.config.max_files - used, 0)
        stat = FsStat(
            tbytes=st.f_blocks * st.f_frsize,
            fbytes=st.f_bfree * st.f_frsize,
            abytes=st.f_bavail * st.f_frsize,
            tfiles=used + free_files,
            ffiles=free_files,
            afiles=free_files,
            invarsec=0,
        )
        return stat, self._attr(inode)

    # -- directories ----------------------------------------------------------------------

    async def readdir(
        self,
        cred: Cred,
        dir_fid: FileId,
        cookie: int,
        cookieverf: bytes,
        max_entries: int,
        plus: bool,
    ) -> ReadDirResult:
        d = await self._get(dir_fid)
        if d.ftype != FileType.DIR:
            raise NotDir(f"inode {d.ino} is not a directory")
        perms.check(cred, d, perms.R)
        max_entries = max(1, min(max_entries, self.config.max_readdir_entries))
        parent = await self._parent(d) if plus else None
        return await read_dir_page(
            self._meta, d, parent, cookie, cookieverf, max_entries, plus, self.fsid
        )
