"""Write-back of many files at once (a mixin of flush.py's Flusher, used by its rounds).

    batch of files ──KeyClaim x N──▶ root group          one transaction
                   ──uploads──▶ the bucket                `parallel` at a time (as one by one)
                      small files: lanes of LANE_FILES     one PutObjects per lane, at the
                      (LANE_BYTES) of one group            files' group
                   ──SetClean + KeyLive (+ KeyRelease of the old key) x N──▶ their groups
                                                           one transaction
                   ──Unpin──▶ each chunk group             one transaction per group

Rules:
- The steps and checks are flush_inode's, batched: nothing is marked clean before the store
  confirmed its upload, and each SetClean still checks its file's version. A batched
  transaction that is refused (one key busy, one file changed during its upload) is redone one
  file at a time, so each file is claimed and marked by its own checks alone.
- What stays with flush_inode: a file with no key (unnamed) or the store's root, a moved
  directory (its subtree is walked), a key that is busy or wanted twice in one round.
- A batch is at most BATCH files, and the batches of a round run side by side: the uploads
  share the round's limiter, so its width is what bounds the store's load.
- Files PutObject would upload (one chunk at most, bytes of ours) go in lanes: a lane is a few
  files of one group, sent as one PutObjects that uploads them one after another, so a lane
  holds one place of the limiter as one file does. A lane saves a request and two worker-
  thread trips per file (measured: the write-back's CPU per file was the drain's bound). A file
  of a lane that met anything but a store failure (a lock, a leader change, a ring change)
  goes again on its own, the way of every other file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from nfs_gateway.backend import FileType, FsError
from server.cluster import protocol as p
from server.cluster.bucket_listing import metadata_of
from server.cluster.flush_claim import RoundClaim
from server.cluster.gateway_plan import Plan
from server.fs.records import Inode, KeyLive, KeyRelease, SetClean, Unpin
from server.rpc.frames import RemoteError
from storage.objstore.base import StoreError

if TYPE_CHECKING:
    from server.cluster.flush import Flusher, RoundResult

    _Base = Flusher
else:
    _Base = object

log = logging.getLogger("objcache.flush")

BATCH = 64  # files per batched transaction
LANE_FILES = 8  # files per PutObjects
LANE_BYTES = 4 << 20  # their bytes together (the group holds them all while it uploads)
ERRORS = (FsError, p.Unavailable, p.RingChanged, RemoteError, StoreError)


@dataclass(frozen=True, slots=True)
class _Uploaded:
    inode: Inode
    key: bytes
    etag: str
    size: int
    versions: dict[int, int]  # chunk index -> its pin version when read


class BatchWriteBack(_Base):
    def batchable(self, store: int, inode: Inode, key: bytes | None, seen: set[bytes]) -> bool:
        """Whether the file can go in a batch (module rules); `seen`: keys batched already."""
        if not key or key in seen or (store, key) in self._busy_keys:
            return False
        if inode.ftype == FileType.DIR and inode.okey and inode.okey != key:
            return False
        seen.add(key)
        return True

    async def flush_batches(self, store: int, items: list[tuple[Inode, bytes]],
                            res: RoundResult, limiter: trio.CapacityLimiter) -> None:
        async with trio.open_nursery() as nursery:
            for i in range(0, len(items), BATCH):
                nursery.start_soon(self._batch, store, items[i:i + BATCH], res, limiter)

    async def _batch(self, store: int, items: list[tuple[Inode, bytes]], res: RoundResult,
                     limiter: trio.CapacityLimiter) -> None:
        busy = {(store, key) for _, key in items}
        self._busy_keys |= busy
        claim = RoundClaim(self, store)
        try:
            try:
                claimed = await self._claim_all(claim, items, limiter)
            except ERRORS as e:
                for inode, key in items:
                    self.failed(res, inode, key, e)
                return
            res.dirty_left += len(items) - len(claimed)
            if not claimed:
                return
            uploaded: list[_Uploaded] = []
            settled: set[int] = set()
            async with claim.working():
                await self._upload_all(store, claimed, res, limiter, claim, uploaded, settled)
            res.dirty_left += len(claimed) - len(uploaded) - len(settled)  # cut by the claim
            marked = await self._mark_all(store, uploaded, res, limiter, claim)
            claim.live([u.key for u in marked])
            await self._unpin_all(marked)
        finally:
            await claim.release()
            self._busy_keys -= busy

    async def _claim_all(self, claim: RoundClaim, items: list[tuple[Inode, bytes]],
                         limiter: trio.CapacityLimiter) -> list[tuple[Inode, bytes]]:
        rg = self._root_group(claim.store)
        recs = [claim.record(inode, key) for inode, key in items]
        if await self._txn(rg, recs):
            claim.held(recs)
            return items
        claimed: list[tuple[Inode, bytes]] = []  # one was refused: each on its own

        async def one(inode: Inode, key: bytes) -> None:
            async with limiter:
                rec = claim.record(inode, key)
                if await self._txn(rg, [rec]):
                    claimed.append((inode, key))
                    claim.held([rec])

        async with trio.open_nursery() as nursery:
            for inode, key in items:
                nursery.start_soon(one, inode, key)
        return claimed

    async def _upload_all(self, store: int, items: list[tuple[Inode, bytes]],
                          res: RoundResult, limiter: trio.CapacityLimiter, claim: RoundClaim,
                          out: list[_Uploaded], settled: set[int]) -> None:
        """Upload every item: those done go to `out`; those that changed first or failed are
        counted in `res` and named in `settled` (a claim that ends cuts the rest)."""

        def done(inode: Inode, key: bytes, etag: str | None, size: int,
                 versions: dict[int, int]) -> None:
            if etag is None:  # it changed first: the next round uploads it again
                res.dirty_left += 1
                settled.add(inode.ino)
            else:
                out.append(_Uploaded(inode, key, etag, size, versions))

        def failed(inode: Inode, key: bytes, e: Exception) -> None:
            self.failed(res, inode, key, e)
            settled.add(inode.ino)

        async def one(inode: Inode, key: bytes) -> None:
            async with limiter:
                versions: dict[int, int] = {}
                try:
                    etag, size = await self._upload(self.b.stores[store], store, inode, key,
                                                    versions, claim)
                except ERRORS as e:
                    failed(inode, key, e)
                    return
            done(inode, key, etag, size, versions)

        async def lane(group: int, files: list[tuple[Inode, bytes]]) -> None:
            async with limiter:
                try:
                    answers = await self._put_lane(store, group, files, claim)
                except ERRORS as e:
                    log.debug("write-back: a lane of %d files at group %d: %s", len(files),
                              group, e)
                    answers = [None] * len(files)
            for (inode, key), answer in zip(files, answers, strict=True):
                if answer is None:  # refused as a lane: on its own
                    nursery.start_soon(one, inode, key)
                elif isinstance(answer, RemoteError):
                    failed(inode, key, answer)
                else:
                    done(inode, key, *answer)

        async with trio.open_nursery() as nursery:
            alone, lanes = self._lanes(items)
            for inode, key in alone:
                nursery.start_soon(one, inode, key)
            for group, files in lanes:
                nursery.start_soon(lane, group, files)

    def _lanes(self, items: list[tuple[Inode, bytes]]
               ) -> tuple[list[tuple[Inode, bytes]], list[tuple[int, list[tuple[Inode, bytes]]]]]:
        """(files uploaded on their own, lanes as (group, files)): a lane holds files that
        PutObject would upload (Flusher._upload), of one group, LANE_FILES and LANE_BYTES at
        most."""
        alone: list[tuple[Inode, bytes]] = []
        open_lanes: dict[int, tuple[list[tuple[Inode, bytes]], int]] = {}
        lanes: list[tuple[int, list[tuple[Inode, bytes]]]] = []
        for inode, key in items:
            if not lane_fits(inode):
                alone.append((inode, key))
                continue
            group = self.b.ring.group_of_inode(inode.ino)
            files, size = open_lanes.get(group, ([], 0))
            if files and (len(files) >= LANE_FILES or size + inode.size > LANE_BYTES):
                lanes.append((group, files))
                files, size = [], 0
            files.append((inode, key))
            open_lanes[group] = (files, size + inode.size)
        lanes += [(group, files) for group, (files, _) in open_lanes.items()]
        return alone, lanes

    async def _put_lane(self, store: int, group: int, files: list[tuple[Inode, bytes]],
                        claim: RoundClaim
                        ) -> list[tuple[str | None, int, dict[int, int]] | RemoteError | None]:
        """One PutObjects: per file (etag or None if it changed first, size, pin versions),
        a RemoteError of the store's (the file stays dirty), or None (to go on its own)."""
        puts = tuple(p.PutObject(0, inode.ino, inode.dver, store, key,
                                 tuple(sorted(metadata_of(inode).items())), claim.stop_ns)
                     for inode, key in files)
        reply = await self.b._call(group, p.PutObjects(0, puts))
        answers: list[tuple[str | None, int, dict[int, int]] | RemoteError | None] = []
        for put, (code, message) in zip(reply.replies, reply.errors, strict=True):
            if code == p.STORE_FAILED:
                answers.append(RemoteError(code, message))
            elif code:
                answers.append(None)
            elif not put.ok:
                answers.append((None, 0, {}))
            else:
                self.stats["uploads"] += 1
                self.stats["bytes"] += put.size
                answers.append((put.etag, put.size, {0: put.chunk_version}
                                if put.chunk_version else {}))
        return answers

    async def _mark_all(self, store: int, items: list[_Uploaded], res: RoundResult,
                        limiter: trio.CapacityLimiter, claim: RoundClaim) -> list[_Uploaded]:
        """SetClean + KeyLive (+ KeyRelease) of every item in one transaction; if refused,
        each on its own (flush_inode's _mark)."""
        if not items:
            return []
        rg = self._root_group(store)
        plan = Plan(rg, {})
        for u in items:
            plan.add(self.b.ring.group_of_inode(u.inode.ino),
                     SetClean(u.inode.ino, u.inode.dver, u.key, u.etag.encode(), u.size))
            plan.add(rg, KeyLive(store, u.key, u.inode.ino, claim.round))
            if u.inode.okey and u.inode.okey != u.key:
                plan.add(rg, KeyRelease(store, u.inode.okey, u.inode.ino, True))
        try:
            if await self._run(plan):
                res.flushed += len(items)
                return items
        except ERRORS as e:
            log.info("write-back: marking %d files clean at once: %s", len(items), e)
        marked: list[_Uploaded] = []

        async def one(u: _Uploaded) -> None:
            async with limiter:
                try:
                    ok = await self._mark(store, u.inode, u.key, u.etag, u.size, claim)
                except ERRORS as e:
                    self.failed(res, u.inode, u.key, e)
                    return
            if ok:
                marked.append(u)
                res.flushed += 1
            else:  # it changed during its upload: the next round uploads it again
                res.dirty_left += 1

        async with trio.open_nursery() as nursery:
            for u in items:
                nursery.start_soon(one, u)
        return marked

    async def _unpin_all(self, items: list[_Uploaded]) -> None:
        """flush_inode's _unpin for every item: one transaction per chunk group."""
        by_group: dict[int, list[object]] = {}
        for u in items:
            for index, version in sorted(u.versions.items()):
                g = self.b.ring.group_of_chunk(u.inode.ino, index)
                by_group.setdefault(g, []).append(
                    Unpin(u.inode.ino, index, version, u.etag.encode()))
        for g, recs in sorted(by_group.items()):
            try:
                await self._txn(g, recs)
            except ERRORS as e:
                log.info("write-back: unpinning %d chunks in group %d: %s", len(recs), g, e)

    def failed(self, res: RoundResult, inode: Inode, key: bytes | None, e: Exception) -> None:
        """Count a file that stays dirty because of `e` (RoundResult.failed says why)."""
        self.stats["errors"] += 1
        res.dirty_left += 1
        res.errors.append(f"inode {inode.ino} ({key!r}): {type(e).__name__}: {e}")
        refused = isinstance(e, StoreError) or (
            isinstance(e, RemoteError) and e.code == p.STORE_FAILED)
        res.failed[inode.ino] = (key, f"{type(e).__name__}: {e}", refused)


def copyable(inode: Inode) -> bool:
    """Its bytes are the bucket object's it came from: written by a copy inside the store."""
    return not inode.cdirty and bool(inode.okey and inode.etag)


def one_put(inode: Inode) -> bool:
    """Small enough for one PutObject at the inode's group (at most one chunk)."""
    return inode.inline or inode.size <= min(inode.chunk_size, p.MAX_PUT_BYTES)


def lane_fits(inode: Inode) -> bool:
    """Whether Flusher._upload would send the inode as one PutObject: what a lane takes."""
    return inode.ftype == FileType.REG and not copyable(inode) and one_put(inode)
