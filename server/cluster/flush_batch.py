"""Write-back of many files at once (a mixin of flush.py's Flusher, used by its rounds).

    batch of files ──KeyClaim x N──▶ root group          one transaction
                   ──uploads──▶ the bucket                `parallel` at a time (as one by one)
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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from nfs_gateway.backend import FileType, FsError
from server.cluster import protocol as p
from server.cluster.gateway_plan import Plan
from server.fs.records import Inode, KeyClaim, KeyLive, KeyRelease, SetClean, Unpin
from server.rpc.frames import RemoteError
from storage.objstore.base import StoreError

if TYPE_CHECKING:
    from server.cluster.flush import Flusher, RoundResult

    _Base = Flusher
else:
    _Base = object

log = logging.getLogger("objcache.flush")

BATCH = 64  # files per batched transaction
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
        try:
            try:
                claimed = await self._claim_all(store, items, limiter)
            except ERRORS as e:
                for inode, key in items:
                    self.failed(res, inode, key, e)
                return
            res.dirty_left += len(items) - len(claimed)
            uploaded = await self._upload_all(store, claimed, res, limiter)
            await self._unpin_all(await self._mark_all(store, uploaded, res, limiter))
        finally:
            self._busy_keys -= busy

    async def _claim_all(self, store: int, items: list[tuple[Inode, bytes]],
                         limiter: trio.CapacityLimiter) -> list[tuple[Inode, bytes]]:
        rg = self._root_group(store)
        if await self._txn(rg, [KeyClaim(store, key, inode.ino) for inode, key in items]):
            return items
        claimed: list[tuple[Inode, bytes]] = []  # one was refused: each on its own

        async def one(inode: Inode, key: bytes) -> None:
            async with limiter:
                if await self._txn(rg, [KeyClaim(store, key, inode.ino)]):
                    claimed.append((inode, key))

        async with trio.open_nursery() as nursery:
            for inode, key in items:
                nursery.start_soon(one, inode, key)
        return claimed

    async def _upload_all(self, store: int, items: list[tuple[Inode, bytes]],
                          res: RoundResult, limiter: trio.CapacityLimiter) -> list[_Uploaded]:
        out: list[_Uploaded] = []

        async def one(inode: Inode, key: bytes) -> None:
            async with limiter:
                versions: dict[int, int] = {}
                try:
                    etag, size = await self._upload(self.b.stores[store], store, inode, key,
                                                    versions)
                except ERRORS as e:
                    self.failed(res, inode, key, e)
                    return
            if etag is None:  # it changed first: the next round uploads it again
                res.dirty_left += 1
            else:
                out.append(_Uploaded(inode, key, etag, size, versions))

        async with trio.open_nursery() as nursery:
            for inode, key in items:
                nursery.start_soon(one, inode, key)
        return out

    async def _mark_all(self, store: int, items: list[_Uploaded], res: RoundResult,
                        limiter: trio.CapacityLimiter) -> list[_Uploaded]:
        """SetClean + KeyLive (+ KeyRelease) of every item in one transaction; if refused,
        each on its own (flush_inode's _mark)."""
        if not items:
            return []
        rg = self._root_group(store)
        plan = Plan(rg, {})
        for u in items:
            plan.add(self.b.ring.group_of_inode(u.inode.ino),
                     SetClean(u.inode.ino, u.inode.dver, u.key, u.etag.encode(), u.size))
            plan.add(rg, KeyLive(store, u.key, u.inode.ino))
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
                    ok = await self._mark(store, u.inode, u.key, u.etag, u.size)
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
