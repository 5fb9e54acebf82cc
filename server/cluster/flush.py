"""Write-back: make the bucket hold every inode's current version, and mark it clean only then.

Picture (one store; the flusher runs on the leader of the group of the store's root inode):

    every group ──ScanFlush──▶ dirty inodes (dver != cver), and the root group's key table
    flusher: for each inode dirty for `delay_s` (or on `admin flush`):
      key = its path under the store's root (parent / pname up to the root; dirs end in "/")
      1. KeyClaim(key, round, lease)       root group: no other round writes `key` meanwhile
                                           (flush_claim.py: renewed, cut at its end)
      2. the bytes to the bucket:
           a directory        PUT "key/" (an empty marker: empty directories survive)
           content unchanged  CopyObject(okey -> key) with the new x-amz-meta-* (no bytes
                              through the cluster; a rename or a chmod)
           one chunk at most  PutObject at the inode's group (bucket_upload.py)
           larger             multipart: PutPart at each chunk's group, in parallel (a chunk
                              still wholly the old object's is UploadPartCopy'd)
      3. SetClean(ino, dver, key, etag) + KeyLive(key, round) [+ KeyRelease(old okey)] in one
         txn: refused if the inode changed meanwhile (it stays dirty; the next round uploads
         again) or the round lost its claim; else KeyUnclaim
    key table entries to delete (released keys: removed files, old names) ──▶ DeleteObjects,
    then KeyGone.

Rules:
- "Clean" means the bucket holds exactly that version: SetClean is applied only after the
  store confirmed the upload (its ETag), and only if the inode's version did not move.
- One writer per key: the key table (server/fs/state.py KeyClaim/KeyHold/KeyRelease/KeyLive/
  KeyGone) lives in the root's group. A RENAME or REMOVE of an inode that has an object puts
  KeyHold / KeyRelease there in the same transaction (gateway_ns.py), so a name made again
  at that path cannot be written before the old object was moved or deleted; a directory's
  prefix held by a moved directory keeps every key under it.
- A directory moved (its key differs from its okey): its whole subtree is walked (directories
  never listed are loaded on the way, from their old prefix), every descendant is written at
  its new key and released at the old one, then the directory itself.
- Metadata written: mode, uid, gid, mtime-ns, symlink-target, type (bucket_listing.py reads
  the same names back after a cold start).
- Claimed keys whose inode is gone or wants another key now (a crash or a race mid-upload)
  are released for deletion; their multipart uploads are aborted.
- Uploads in flight are bounded (`parallel` inodes, `part_parallel` parts each).
- A round writes most files in batches (flush_batch.py: one claim and one clean-marking
  transaction for many files, the same checks each); the rest one by one (flush_inode).
  The deletes and the claims left behind are flush_keys.py's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import cbor2
import trio

from nfs_gateway.backend import Cred, FileType, FsError
from server.cluster import protocol as p
from server.cluster.bucket import key_below
from server.cluster.bucket_listing import metadata_of
from server.cluster.flush_batch import BatchWriteBack, copyable, one_put
from server.cluster.flush_claim import RoundClaim
from server.cluster.flush_keys import KeyHousekeeping
from server.cluster.gateway import ClusterBackend
from server.cluster.gateway_plan import Plan
from server.fs import keys
from server.fs.keytable import KEY_DELETE, key_hold
from server.fs.record_codec import decode_value
from server.fs.records import Inode, KeyLive, KeyRelease, SetClean, Unpin
from server.rpc.frames import RemoteError
from storage.objstore.base import ObjectStore, PreconditionFailed, StoreError

log = logging.getLogger("objcache.flush")

ROOT = Cred(0, 0)
MAX_DEPTH = 256
STALLED_ROUNDS = 5  # forced rounds in a row that freed nothing: writes get NOSPC
MIN_PART_BYTES = 5 << 20  # S3's smallest part but the last
MAX_GATHER_BYTES = 1 << 30


@dataclass(frozen=True, slots=True)
class FlushConfig:
    delay_s: float = 5.0  # a dirty inode is uploaded this long after it was first seen dirty
    interval_s: float = 1.0  # how often the flusher scans for work
    parallel: int = 8  # inodes uploaded at once
    part_parallel: int = 4  # parts of one multipart upload at once
    scan_page: int = 1000
    claim_lease_s: float = 195.0  # a round's hold on a key (flush_claim.py), renewed meanwhile
    claim_margin_s: float = 65.0  # its store requests start no later than this before its end

    def __post_init__(self) -> None:
        assert 0 < 2 * self.claim_margin_s <= self.claim_lease_s, self


@dataclass
class RoundResult:
    """What one pass did (admin flush reports it; tests check it)."""

    flushed: int = 0
    deleted: int = 0
    dirty_left: int = 0
    deletes_left: int = 0
    held: int = 0  # keys a round (of any node) held at the start: write-back under way there
    errors: list[str] = field(default_factory=list)
    failed: dict[int, tuple[bytes | None, str, bool]] = field(default_factory=dict)  # ino ->
    # (its key, the error that kept it dirty, whether the store refused): what a drain reports


@dataclass
class _Scan:
    dirty: dict[int, Inode] = field(default_factory=dict)
    table: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # key -> (ino, state)
    held: dict[bytes, int] = field(default_factory=dict)  # key -> until_ns of a round's hold

    def held_now(self, key: bytes) -> bool:
        """Whether a write-back round (of any node) may be writing `key` now."""
        return self.held.get(key, 0) > time.time_ns()


class Flusher(BatchWriteBack, KeyHousekeeping):
    def __init__(self, backend: ClusterBackend, config: FlushConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.b = backend
        self.config = config or FlushConfig()
        self._clock = clock
        self._first_seen: dict[int, float] = {}
        self._busy_keys: set[tuple[int, bytes]] = set()
        self._recovered: set[int] = set()  # stores whose orphaned uploads were aborted
        self._stalled_rounds = 0
        self.stats = {"uploads": 0, "copies": 0, "parts": 0, "parts_copied": 0, "deletes": 0,
                      "bytes": 0, "errors": 0, "rounds": 0}

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, leads: Callable[[int], bool],
                  pressed: Callable[[], bool] = lambda: False,
                  *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Every interval: a round for each store whose root's group this node leads; on
        any node whose cache is pressed by bytes only write-back can free, forced rounds
        (flush first, whatever the delay)."""
        task_status.started()
        while True:
            await trio.sleep(self.config.interval_s)
            if self.b.fence.closed(trio.current_time()):
                continue  # a drain runs its own rounds (drain.py)
            force = pressed()
            for store, root in sorted(self.b.store_roots.items()):
                if not (force or leads(self.b.ring.group_of_inode(root))):
                    continue
                try:
                    res = await self.round(store, force=force)
                except (FsError, p.Unavailable, p.RingChanged, RemoteError, StoreError) as e:
                    log.info("write-back of store %d: %s", store, e)
                    res = None
                if force:
                    progress = res is not None and bool(res.flushed or res.deleted)
                    self._stalled_rounds = 0 if progress else self._stalled_rounds + 1
            if not force:
                self._stalled_rounds = 0

    def uploading(self, store: int) -> bool:
        """Whether a round is writing a key of `store` to the bucket right now."""
        return any(s == store for s, _ in self._busy_keys)

    def stalled(self) -> bool:
        """Forced rounds keep freeing nothing (the store is down, or nothing is dirty and
        the cache is still full): a write that needs room gets NOSPC."""
        return self._stalled_rounds >= STALLED_ROUNDS

    async def round(self, store: int, *, force: bool = False, under: bytes | None = None,
                    res: RoundResult | None = None) -> RoundResult:
        """One pass over the store's dirty inodes and released keys. `force`: ignore the
        delay; `under`: only keys under that prefix (admin flush PATH); `res`: filled in as
        the round goes (a caller showing progress reads it meanwhile)."""
        self.stats["rounds"] += 1
        res = res if res is not None else RoundResult()
        scan = await self._scan(store)
        res.held = sum(1 for key in scan.held if scan.held_now(key))
        if store not in self._recovered:
            await self._abort_orphans(store, scan, res)
            self._recovered.add(store)
        await self._reclaim(store, scan, res)
        now = self._clock()
        for ino in list(self._first_seen):
            if ino not in scan.dirty:
                del self._first_seen[ino]
        ready = []
        for ino, inode in sorted(scan.dirty.items()):
            first = self._first_seen.setdefault(ino, now)
            if force or now - first >= self.config.delay_s:
                ready.append(inode)
        limiter = trio.CapacityLimiter(max(1, self.config.parallel))
        paths: dict[int, bytes | None] = {}
        batch: list[tuple[Inode, bytes]] = []
        single: list[tuple[Inode, bytes | None]] = []
        seen: set[bytes] = set()
        for inode, key in await self._keys_of(ready, paths, limiter):
            if under is not None and (key is None or not key.startswith(under)):
                res.dirty_left += 1
            elif self.batchable(store, inode, key, seen):
                assert key is not None
                batch.append((inode, key))
            else:
                single.append((inode, key))

        async def one(inode: Inode, key: bytes | None) -> None:
            async with limiter:
                try:
                    if await self.flush_inode(store, inode, key, paths):
                        res.flushed += 1
                    else:
                        res.dirty_left += 1
                except (FsError, p.Unavailable, p.RingChanged, RemoteError, StoreError) as e:
                    self.failed(res, inode, key, e)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.flush_batches, store, batch, res, limiter)
            for inode, key in single:
                nursery.start_soon(one, inode, key)
        res.dirty_left += len(scan.dirty) - len(ready)
        await self._deletes(store, res, under)
        return res

    async def _keys_of(self, inodes: list[Inode], paths: dict[int, bytes | None],
                       limiter: trio.CapacityLimiter) -> list[tuple[Inode, bytes | None]]:
        """Each inode with its key (_key_of), looked up `limiter` at a time."""
        keys: dict[int, bytes | None] = {}

        async def one(inode: Inode) -> None:
            async with limiter:
                keys[inode.ino] = await self._key_of(inode, paths)

        async with trio.open_nursery() as nursery:
            for inode in inodes:
                nursery.start_soon(one, inode)
        return [(inode, keys[inode.ino]) for inode in inodes]

    async def pending(self, store: int) -> tuple[int, int]:
        """(dirty inodes, keys to delete) of the store, as the groups hold them now."""
        scan = await self._scan(store)
        return len(scan.dirty), sum(1 for _, st in scan.table.values() if st == KEY_DELETE)

    async def key_table(self, store: int) -> dict[bytes, tuple[int, int]]:
        """The store's key table: key -> (inode, state) (server/fs/state.py KEY_*)."""
        return (await self._scan(store, table_only=True)).table

    # -- reading the groups -----------------------------------------------------------------

    async def _scan(self, store: int, *, table_only: bool = False) -> _Scan:
        """Every group's dirty inodes and the root group's key table (`table_only`: the key
        table alone, a scan of the root's group)."""
        out = _Scan()
        root_group = self.b.ring.group_of_inode(self.b.store_roots[store])
        groups = (root_group,) if table_only else (
            getattr(self.b.ring, "groups", None) or (root_group,))
        for g in groups:
            start = b""
            while True:
                reply = await self.b._at(lambda g=g: g,
                                         p.ScanFlush(0, start, self.config.scan_page))
                for k, v in reply.items:
                    if k.startswith(keys.DIRTY) and v:
                        inode: Inode = decode_value(v)
                        if inode.store == store and inode.dver != inode.cver:
                            out.dirty[inode.ino] = inode
                    elif k.startswith(keys.BUCKET_KEY) and g == root_group:
                        s, key = keys.parse_bucket_key(k)
                        if s == store:
                            entry = cbor2.loads(v)
                            out.table[key] = (entry[0], entry[1])
                            held_by, until = key_hold(entry)
                            if held_by:
                                out.held[key] = until
                if not reply.next_start:
                    break
                start = reply.next_start
        return out

    async def _key_of(self, inode: Inode, paths: dict[int, bytes | None]) -> bytes | None:
        """The inode's key under its store's root (directories: their prefix, "x/"), or None
        when it has no path there (unnamed, or not under the root)."""
        root = self.b.store_roots.get(inode.store)
        if root is not None:
            paths.setdefault(root, b"")
        chain: list[Inode] = []
        cur: Inode | None = inode
        prefix: bytes | None = None
        for _ in range(MAX_DEPTH):
            if cur is None:
                return None
            if cur.ino == root:
                prefix = b""
                break
            if cur.ino in paths and cur is not inode:
                prefix = paths[cur.ino]
                break
            if not cur.pname or cur.parent in (0, cur.ino):
                return None
            chain.append(cur)
            if paths.get(cur.parent) is not None:  # a directory already placed: no read
                prefix = paths[cur.parent]
                break
            cur = await self.b._inode(cur.parent)
        if prefix is None:
            return None
        return key_below(prefix, chain, paths)

    # -- one inode --------------------------------------------------------------------------

    async def flush_inode(self, store_id: int, inode: Inode, key: bytes | None,
                          paths: dict[int, bytes | None], *, walk: bool = True) -> bool:
        """Upload `inode` at `key` and mark it clean; False when it must wait (its key is
        busy, it changed meanwhile). A moved directory's subtree is moved first (`walk`:
        unless the caller is walking it already)."""
        store = self.b.stores[store_id]
        if (walk and inode.ftype == FileType.DIR and key is not None and inode.okey
                and inode.okey != key):
            await self._move_subtree(store_id, inode, paths)
        if key is None:  # no path in the bucket (unnamed): its object, if any, goes
            return await self._mark(store_id, inode, b"", "", 0)
        if not key:  # the store's root itself: nothing to write
            return await self._mark(store_id, inode, b"", inode.etag.decode(), 0)
        busy = (store_id, key)
        if busy in self._busy_keys:
            return False
        self._busy_keys.add(busy)
        claim = RoundClaim(self, store_id)
        try:
            rec = claim.record(inode, key)
            if not await self._txn(self._root_group(store_id), [rec]):
                return False
            claim.held([rec])
            versions: dict[int, int] = {}
            etag: str | None = None
            size = 0
            async with claim.working():
                etag, size = await self._upload(store, store_id, inode, key, versions, claim)
            if etag is None or not await self._mark(store_id, inode, key, etag, size, claim):
                return False
            claim.live([key])
            await self._unpin(inode, etag, versions)
            return True
        finally:
            await claim.release()
            self._busy_keys.discard(busy)

    async def _upload(self, store: ObjectStore, store_id: int, inode: Inode, key: bytes,
                      versions: dict[int, int], claim: RoundClaim) -> tuple[str | None, int]:
        """The inode's bytes (or marker) to the bucket: (etag, size), etag None when the
        inode changed first. `versions` gets the pin version of each chunk uploaded; requests
        at other groups stop with the claim (flush_claim.py)."""
        meta = metadata_of(inode)
        k = key.decode()
        if inode.ftype != FileType.REG:  # a directory's marker, a symlink, a device node
            self.stats["uploads"] += 1
            return await store.put(k, b"", metadata=meta), 0
        if copyable(inode):
            try:
                etag = await store.copy(inode.okey.decode(), k, metadata=meta,
                                        if_match=inode.etag.decode())
            except PreconditionFailed:
                # The object we read is not there any more: upload our bytes instead.
                log.warning("write-back: %r changed in the bucket; uploading inode %d",
                            inode.okey, inode.ino)
            else:
                self.stats["copies"] += 1
                return etag, inode.size
        if one_put(inode):
            reply = await self.b._at_inode(inode.ino, p.PutObject(
                0, inode.ino, inode.dver, store_id, key, tuple(sorted(meta.items())),
                claim.stop_ns))
            if not reply.ok:
                return None, 0
            if reply.chunk_version:
                versions[0] = reply.chunk_version
            self.stats["uploads"] += 1
            self.stats["bytes"] += reply.size
            return reply.etag, reply.size
        if inode.chunk_size < MIN_PART_BYTES:  # parts this small: S3 refuses them
            return await self._gathered(store, inode, key, meta), inode.size
        return (await self._multipart(store, store_id, inode, key, meta, versions, claim),
                inode.size)

    async def _gathered(self, store: ObjectStore, inode: Inode, key: bytes,
                        meta: dict[str, str]) -> str | None:
        """A file whose chunks are below S3's part size, read through the gateway and PUT
        whole (configurations with small chunks; at most MAX_GATHER_BYTES)."""
        if inode.size > MAX_GATHER_BYTES:
            raise StoreError(f"{key!r}: {inode.size} bytes in chunks of {inode.chunk_size} "
                             f"(below {MIN_PART_BYTES}): too large to upload in one PUT")
        out = bytearray()
        fid = self.b._fid(inode)
        while len(out) < inode.size:
            r = await self.b.read(ROOT, fid, len(out), min(1 << 20, inode.size - len(out)))
            if not r.data:
                break
            out += r.data
        out += bytes(inode.size - len(out))
        if not await self._unchanged(inode):
            return None
        self.stats["uploads"] += 1
        self.stats["bytes"] += inode.size
        return await store.put(key.decode(), bytes(out[:inode.size]), metadata=meta)

    async def _unchanged(self, inode: Inode) -> bool:
        """Whether the inode is still at the version this round read, just before its object
        is made from parts read at each chunk's group. A round that read an older version
        (a node stalled mid-round) otherwise wrote that version's size over bytes truncated
        since, after a newer round had written the bucket (found by the fault campaign,
        FINDINGS.md 10); its SetClean was refused, but the bucket held the wrong bytes."""
        reply = await self.b._at_inode(inode.ino, p.ReadHead(0, inode.ino, 0, 0))
        return bool(reply.inode) and decode_value(reply.inode).dver == inode.dver

    async def _multipart(self, store: ObjectStore, store_id: int, inode: Inode, key: bytes,
                         meta: dict[str, str], versions: dict[int, int], claim: RoundClaim
                         ) -> str | None:
        k = key.decode()
        cs = inode.chunk_size
        count = -(-inode.size // cs)
        upload_id = await store.create_multipart(k, metadata=meta)
        etags: list[str] = [""] * count
        limiter = trio.CapacityLimiter(max(1, self.config.part_parallel))

        async def part(index: int) -> None:
            async with limiter:
                req = p.PutPart(0, inode.ino, index, cs, min(cs, inode.size - index * cs),
                                store_id, key, upload_id, index + 1, inode.okey,
                                inode.etag, inode.obase, claim.stop_ns)
                reply = await self.b._at(
                    lambda: self.b.ring.group_of_chunk(inode.ino, index), req)
                etags[index] = reply.etag
                if reply.version:
                    versions[index] = reply.version
                self.stats["parts"] += 1
                self.stats["parts_copied"] += reply.copied

        try:
            async with trio.open_nursery() as nursery:
                for index in range(count):
                    nursery.start_soon(part, index)
            if not await self._unchanged(inode):
                await store.abort_multipart(k, upload_id)
                return None
            etag = await store.complete_multipart(k, upload_id,
                                                  [(i + 1, e) for i, e in enumerate(etags)])
        except BaseException:
            with trio.CancelScope(shield=True):
                try:
                    await store.abort_multipart(k, upload_id)
                except StoreError as e:
                    log.warning("write-back: aborting upload %s of %r: %s", upload_id, k, e)
            raise
        self.stats["bytes"] += inode.size
        return etag

    async def _mark(self, store_id: int, inode: Inode, key: bytes, etag: str, size: int,
                    claim: RoundClaim | None = None) -> bool:
        """SetClean + KeyLive (+ KeyRelease of the old key) in one transaction; KeyLive checks
        the round still holds the key."""
        recs: dict[int, list[object]] = {}
        ig = self.b.ring.group_of_inode(inode.ino)
        rg = self._root_group(store_id)
        recs.setdefault(ig, []).append(SetClean(inode.ino, inode.dver, key, etag.encode(), size))
        if key:
            recs.setdefault(rg, []).append(
                KeyLive(store_id, key, inode.ino, claim.round if claim else 0))
        if inode.okey and inode.okey != key:
            recs.setdefault(rg, []).append(KeyRelease(store_id, inode.okey, inode.ino, True))
        plan = Plan(ig, {})
        for g, rs in recs.items():
            plan.add(g, *rs)
        return await self._run(plan)

    async def _unpin(self, inode: Inode, etag: str, versions: dict[int, int]) -> None:
        """The chunks just uploaded become clean cached copies of the new object in their
        groups (unless written since: Unpin checks the version). Best effort: a chunk left
        pinned is only not evictable."""
        by_group: dict[int, list[object]] = {}
        for index, version in sorted(versions.items()):
            g = self.b.ring.group_of_chunk(inode.ino, index)
            by_group.setdefault(g, []).append(Unpin(inode.ino, index, version, etag.encode()))
        for g, recs in sorted(by_group.items()):
            try:
                await self._txn(g, recs)
            except (FsError, p.Unavailable, p.RingChanged, RemoteError) as e:
                log.info("write-back: unpinning chunks of inode %d: %s", inode.ino, e)

    async def _move_subtree(self, store_id: int, d: Inode, paths: dict[int, bytes | None]
                            ) -> None:
        """Write every descendant of a moved directory at its new key (module rules); the
        directories below it are written here too, without walking them again."""
        b = self.b
        todo = [d]
        while todo:
            cur = todo.pop()
            inos = [e.fileid async for e in b.children(b._fid(cur))]
            for child in (await b._inodes(inos)).values() if inos else ():
                if child is None:
                    continue
                if child.ftype == FileType.DIR:
                    todo.append(child)
                key = await self._key_of(child, paths)
                if key is not None and (child.okey != key or child.dver != child.cver):
                    await self.flush_inode(store_id, child, key, paths, walk=False)

    # -- transactions -----------------------------------------------------------------------

    def _root_group(self, store_id: int) -> int:
        return self.b.ring.group_of_inode(self.b.store_roots[store_id])

    async def _txn(self, group: int, records: Iterable[object]) -> bool:
        plan = Plan(group, {})
        plan.add(group, *records)
        return await self._run(plan)

    async def _run(self, plan: Plan) -> bool:
        reply = await self.b._run_txn(plan, next(self.b._requests), 0)
        if not reply.commit:
            log.debug("write-back txn aborted: %s", reply.reason)
        return reply.commit
