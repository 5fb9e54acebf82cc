"""What moves in a ring change: the keys and chunk bytes a group gives away (ringchange.py's
export steps, a mixin of RingMember).

    pre-copy (unfrozen)   materialized chunks the group gives away ──RingStage──▶ new owner
    export (frozen)       once no prepared transaction holds a frozen inode: every key it
                          gives away, and the chunks written since their pre-copy
                          ──RingImport──▶ new owner; then `exported` in the group's log

Rules:
- Import entries are about BATCH_BYTES each (a chunk may exceed it alone), SEND_PARALLEL in
  flight to one group: the next batch travels while the new owner logs the one before.
- A chunk pre-copied at its current version is not sent again.
- Chunk files are read in worker threads; a materialized chunk with no file is empty.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import trio

from server import metrics
from server.cluster import ringstate
from server.cluster.ringmsgs import RingImport, RingStage
from server.cluster.statemachine import StateView
from server.fs import keys

if TYPE_CHECKING:
    from server.cluster.ringchange import RingMember

    _Base = RingMember
else:
    _Base = object

log = logging.getLogger("objcache.ringchange")

BATCH_BYTES = 4 << 20  # one import entry (chunk bytes and keys); a chunk may exceed it alone
SEND_PARALLEL = 3  # import entries in flight to one group
QUIET_TIMEOUT_S = 30.0  # waiting for prepared transactions on frozen inodes to finish
KEY_LOCK_BASE = 1 << 63  # key-table locks (fsops.key_lock) live above this


class StateMover(_Base):
    async def _precopy(self, change_id: bytes) -> int:
        """Before the freeze: the bytes of every materialized chunk this group gives away, to
        its new owner (stage entries). The freeze then only waits for what changed since."""
        freeze = self._pending(change_id)
        if freeze.frozen or freeze.exported:
            return 0
        group, ring, kv = self.rt.group, freeze.new, self.rt.kv

        def scan() -> dict[int, list[tuple[bytes, bytes]]]:
            out: dict[int, list[tuple[bytes, bytes]]] = {}
            for k, v in ringstate.scan_all(kv, keys.MATERIALIZED):
                ino, index = keys.parse_materialized_key(k)
                where = ring.group_of_chunk(ino, index)
                if where != group and int.from_bytes(v, "big"):
                    out.setdefault(where, []).append((k, v))
            return out

        by_group = await trio.to_thread.run_sync(scan)
        members = freeze.nodelist.groups()
        staged = self._staged.setdefault(change_id, {})
        moved = 0
        for dest, items in sorted(by_group.items()):
            moved += await self._stage(members[dest], dest, change_id, items, staged)
        metrics.MIGRATED_BYTES.inc(moved)
        log.info("group %d: pre-copied %d chunks (%d bytes) for ring version %d", group,
                 len(staged), moved, ring.version)
        return moved

    async def _stage(self, members: tuple[int, ...], dest: int, change_id: bytes,
                     items: list[tuple[bytes, bytes]], staged: dict[tuple[int, int], int]
                     ) -> int:
        chunks_dir = self.rt.sm.chunks
        version = {keys.parse_materialized_key(k): int.from_bytes(v, "big") for k, v in items}
        plan = await trio.to_thread.run_sync(_batches, chunks_dir, items)
        limit = trio.Semaphore(SEND_PARALLEL)
        moved = 0

        async def one(blobs: list[tuple[int, int, bytes]]) -> None:
            try:
                await self.caller.call(members, dest, RingStage(change_id, tuple(
                    (ino, index, version[ino, index], data) for ino, index, data in blobs)))
                for ino, index, _ in blobs:
                    staged[ino, index] = version[ino, index]
            finally:
                limit.release()

        async with trio.open_nursery() as nursery:
            for _, marked in plan:
                await limit.acquire()
                blobs = await trio.to_thread.run_sync(_read_chunks, chunks_dir, marked)
                moved += sum(len(b[2]) for b in blobs)
                nursery.start_soon(one, blobs)
        return moved

    async def _export(self, change_id: bytes) -> int:
        freeze = self._pending(change_id)
        version = freeze.new.version
        if freeze.exported:
            return 0
        if not freeze.frozen:
            await self._propose(ringstate.encode_freeze(change_id))
            freeze = self._pending(change_id)
        group = self.rt.group
        ring = freeze.new
        kv = self.rt.kv

        def scan() -> dict[int, list[tuple[bytes, bytes]]]:
            out: dict[int, list[tuple[bytes, bytes]]] = {}
            for where, k, v in ringstate.leaving(kv, ring, group, ringstate.store_roots(kv)):
                out.setdefault(where, []).append((k, v))
            return out

        start = time.perf_counter()
        await self._quiet(freeze)
        quiet = time.perf_counter()
        by_group = await trio.to_thread.run_sync(scan)
        scanned = time.perf_counter()
        members = freeze.nodelist.groups()
        moved = 0
        staged = self._staged.pop(change_id, {})
        for dest, items in sorted(by_group.items()):
            moved += await self._send(members[dest], dest, change_id, items, staged)
        await self._propose(ringstate.encode_exported(change_id))
        metrics.MIGRATED_BYTES.inc(moved)
        log.info("group %d: sent %d keys (%d bytes) for ring version %d (quiet %.3f s, scan "
                 "%.3f s, send %.3f s)", group, sum(len(v) for v in by_group.values()), moved,
                 version, quiet - start, scanned - quiet, time.perf_counter() - scanned)
        return moved

    async def _quiet(self, freeze: ringstate.Freeze) -> None:
        """Until no prepared transaction holds a frozen inode (or a moving key table)."""
        with trio.fail_after(QUIET_TIMEOUT_S):
            while True:
                locks = await trio.to_thread.run_sync(self.rt.sm.txn.locks, StateView(self.rt.kv))
                if not any(ino in freeze.inos or (freeze.stores and ino >= KEY_LOCK_BASE)
                           for ino in locks):
                    return
                await trio.sleep(0.01)

    async def _send(self, members: tuple[int, ...], dest: int, change_id: bytes,
                    items: list[tuple[bytes, bytes]], staged: dict[tuple[int, int], int]
                    ) -> int:
        """Import entries at `dest`, each up to BATCH_BYTES (a chunk may exceed it alone),
        SEND_PARALLEL at a time: the next batch travels while `dest` logs the one before."""
        chunks_dir = self.rt.sm.chunks
        moved = 0
        limit = trio.Semaphore(SEND_PARALLEL)

        async def one(batch: list[tuple[bytes, bytes]], blobs: list[tuple[int, int, bytes]]
                      ) -> None:
            try:
                await self.caller.call(members, dest, RingImport(change_id, tuple(batch),
                                                                 tuple(blobs)))
            finally:
                limit.release()

        plan = await trio.to_thread.run_sync(_batches, chunks_dir, items, staged)
        async with trio.open_nursery() as nursery:
            for batch, marked in plan:
                await limit.acquire()
                blobs = await trio.to_thread.run_sync(_read_chunks, chunks_dir, marked)
                moved += sum(len(b[2]) for b in blobs)
                nursery.start_soon(one, batch, blobs)
        return moved + sum(len(k) + len(v) for k, v in items)


Batch = tuple[list[tuple[bytes, bytes]], list[tuple[int, int]]]  # keys, chunks to read


def _batches(chunks: Any, items: list[tuple[bytes, bytes]],
             staged: dict[tuple[int, int], int] | None = None) -> list[Batch]:
    """`items` cut into import entries of about BATCH_BYTES, with the materialized chunks
    whose bytes go along: those not pre-copied at their current version (`staged`). Worker
    thread: it looks at the chunk files' sizes."""
    staged = staged or {}
    out: list[Batch] = []
    batch: list[tuple[bytes, bytes]] = []
    marked: list[tuple[int, int]] = []
    size = 0
    for k, v in items:
        batch.append((k, v))
        size += len(k) + len(v)
        if k[:4] == keys.MATERIALIZED and v and int.from_bytes(v, "big"):
            ino, index = keys.parse_materialized_key(k)
            if staged.get((ino, index)) == int.from_bytes(v, "big"):
                continue  # its bytes are there already, unchanged since
            marked.append((ino, index))
            with contextlib.suppress(FileNotFoundError):
                size += chunks.chunk_path(ino, index).stat().st_size
        if size >= BATCH_BYTES:
            out.append((batch, marked))
            batch, marked, size = [], [], 0
    if batch:
        out.append((batch, marked))
    return out


def _read_chunks(chunks: Any, marked: list[tuple[int, int]]) -> list[tuple[int, int, bytes]]:
    """The bytes of these materialized chunk files (worker thread)."""
    out = []
    for ino, index in marked:
        try:
            out.append((ino, index, chunks.chunk_path(ino, index).read_bytes()))
        except FileNotFoundError:
            out.append((ino, index, b""))  # materialized, never written past its start
    return out
