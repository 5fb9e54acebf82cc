"""Write-back's housekeeping of the key table (a mixin of flush.py's Flusher, used by its
rounds): keys released for deletion are deleted from the bucket, then dropped (KeyGone);
claims and multipart uploads left by a round that crashed or lost its leadership are cleaned
up. A key a round still holds (flush_claim.py) is left alone: its upload may yet land.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from server.fs.keytable import KEY_CLAIMED, KEY_DELETE
from server.fs.records import KeyGone, KeyLive, KeyRelease
from storage.objstore.base import ObjectStore, StoreError

if TYPE_CHECKING:
    from server.cluster.flush import Flusher, RoundResult, _Scan

    _Base = Flusher
else:
    _Base = object

log = logging.getLogger("objcache.flush")

DELETE_BATCH = 1000


class KeyHousekeeping(_Base):
    async def _deletes(self, store_id: int, res: RoundResult, under: bytes | None) -> None:
        scan = await self._scan(store_id, table_only=True)  # with this round's releases
        # Deepest first: a directory's marker after the keys under it (a store that keeps
        # directories, like a local one, refuses to delete a non-empty one).
        wanted = [(key, ino) for key, (ino, state) in sorted(scan.table.items(), reverse=True)
                  if state == KEY_DELETE and (under is None or key.startswith(under))]
        # A key a round still holds waits: its upload may yet land (flush_claim.py).
        doomed = [(key, ino) for key, ino in wanted if not scan.held_now(key)]
        store = self.b.stores[store_id]
        for i in range(0, len(doomed), DELETE_BATCH):
            batch = doomed[i:i + DELETE_BATCH]
            failed = await store.delete_many([k.decode() for k, _ in batch])
            gone = [(k, ino) for k, ino in batch if k.decode() not in failed]
            for k, why in failed.items():
                res.errors.append(f"delete {k!r}: {why}")
            if gone and await self._txn(self._root_group(store_id),
                                        [KeyGone(store_id, k, ino) for k, ino in gone]):
                res.deleted += len(gone)
                self.stats["deletes"] += len(gone)
        res.deletes_left = len(wanted) - res.deleted

    async def _abort_orphans(self, store_id: int, scan: _Scan, res: RoundResult) -> None:
        """A new flusher has no upload in flight: multipart uploads of keys claimed in the
        table were left by an earlier one that crashed or lost its leadership. Abort them
        (the claims stay; the inodes are dirty and are written again)."""
        store = self.b.stores[store_id]
        for key, (_, state) in sorted(scan.table.items()):
            if state != KEY_CLAIMED or scan.held_now(key):  # held: a live round's upload
                continue
            await self._abort_uploads(store, key, res)

    async def _abort_uploads(self, store: ObjectStore, key: bytes, res: RoundResult) -> None:
        try:
            for k, upload_id, _ in await store.list_multipart(key.decode()):
                if k == key.decode():
                    await store.abort_multipart(k, upload_id)
                    log.info("write-back: aborted the orphaned upload %s of %r", upload_id, k)
        except StoreError as e:
            res.errors.append(f"abort uploads of {key!r}: {e}")

    async def _reclaim(self, store_id: int, scan: _Scan, res: RoundResult) -> None:
        """Claims no round holds any more (it let go, or its lease ran out: no store request
        of it can still land, flush_claim.py) whose inode is gone or now wants another key
        (an upload that crashed, was cut, or lost a race) are released for deletion; one
        whose inode is clean at that key is its object: live. At once, in this round: a
        drain runs until a round leaves nothing to do, and a claim waiting for a second
        round was still pending when it checked the key table (tests/faults/FINDINGS.md 14)."""
        stale = sorted((ino, key) for key, (ino, state) in scan.table.items()
                       if state == KEY_CLAIMED and (store_id, key) not in self._busy_keys
                       and not scan.held_now(key))
        store = self.b.stores[store_id]
        for ino, key in stale:
            inode = scan.dirty.get(ino) or await self.b._inode(ino)
            if inode is not None and await self._key_of(inode, {}) == key:
                if inode.dver == inode.cver and inode.okey == key:
                    await self._txn(self._root_group(store_id),
                                    [KeyLive(store_id, key, ino, 0)])
                continue  # otherwise still its key: the inode is dirty and is written again
            await self._abort_uploads(store, key, res)
            await self._txn(self._root_group(store_id), [KeyRelease(store_id, key, ino, True)])
