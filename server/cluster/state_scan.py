"""The leader's side of ScanState: a group's replicated state in pages that agree.

fsck and drain read a group's state in pages of a few thousand keys while clients keep
changing it. Read page by page from the live store, a create landing between two pages could
show its directory entry (in a later page) without its inode (in an earlier one), and fsck
would report a fault that never existed. So the first page (scan_id 0) takes a LevelDB
snapshot and names it in its reply; later pages pass that id and read the same snapshot.

Rules:
- Snapshots live on the leader that took them. A scan whose snapshot is gone (the leader
  changed, the scan sat idle past IDLE_S, or MAX_OPEN newer scans pushed it out) is refused
  with RemoteError(SCAN_EXPIRED); the caller starts over.
- The last page closes its snapshot; a LevelDB snapshot pins old versions of every key it
  shows, so none outlives its scan by more than IDLE_S.
- Bookkeeping runs on the trio thread; only the iteration goes to a worker thread.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from server.cluster import protocol as p
from server.rpc.frames import RemoteError
from storage.kv import KvSnapshot, KvStore

SCAN_SPACES = (b"fs.", b"txn/")  # in key order
MAX_PAGE = 10_000
MAX_OPEN = 8  # scans at once (an admin's fsck and a drain need one each per group)
IDLE_S = 60.0  # a scan that asked for no page this long is dropped
RESTARTS = 5  # a caller's scan dropped this often (leader changes) gives up


@dataclass
class _Open:
    view: KvSnapshot
    used_at: float
    reading: bool = False  # a worker thread iterates the view: closing it waits for the page


class StateScans:
    """The open scans of one group's leader."""

    def __init__(self, kv: KvStore) -> None:
        self._kv = kv
        self._open: dict[int, _Open] = {}
        self._ids = itertools.count(1)

    async def page(self, req: p.ScanState) -> p.ScanStateReply:
        now = trio.current_time()
        scan_id = req.scan_id
        self._expire(now, opening=scan_id == 0)
        if scan_id == 0:
            scan_id = next(self._ids)
            self._open[scan_id] = _Open(self._kv.snapshot_sync(), now)
        scan = self._open.get(scan_id)
        if scan is None:
            raise RemoteError(p.SCAN_EXPIRED, f"scan {scan_id} is not open here; start over")
        if scan.reading:
            raise RemoteError(p.SCAN_EXPIRED, f"scan {scan_id} is reading a page already")
        scan.used_at, scan.reading = now, True
        try:
            items, next_start = await trio.to_thread.run_sync(_read_page, scan.view, req)
        finally:
            scan.reading = False
            if self._open.get(scan_id) is not scan:  # dropped meanwhile: its close waited
                scan.view.close()
        if not next_start and self._open.pop(scan_id, None) is not None:
            scan.view.close()
        return p.ScanStateReply(tuple(items), next_start, scan_id if next_start else 0)

    def close(self) -> None:
        """Release every snapshot (the group stops); one being read is closed by its reader."""
        for scan_id in list(self._open):
            self._drop(scan_id)

    def _expire(self, now: float, *, opening: bool) -> None:
        idle = [i for i, s in self._open.items() if now - s.used_at > IDLE_S]
        if opening:  # room for one more
            oldest = sorted(self._open, key=lambda i: self._open[i].used_at)
            idle += oldest[:max(0, len(self._open) - MAX_OPEN + 1)]
        for scan_id in set(idle):
            self._drop(scan_id)

    def _drop(self, scan_id: int) -> None:
        scan = self._open.pop(scan_id)
        if not scan.reading:
            scan.view.close()


def _read_page(view: KvSnapshot, req: p.ScanState) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Up to req.limit pairs from req.start to req.stop: the `fs.` then the `txn/` key space;
    and where the next page starts (b"": nothing is left)."""
    limit = max(1, min(req.limit, MAX_PAGE))
    items: list[tuple[bytes, bytes]] = []
    start = req.start or SCAN_SPACES[0]
    for space in SCAN_SPACES:
        if req.stop and req.stop <= space:
            break  # the range ends before this space
        if start > space and not start.startswith(space):
            continue
        first = start if start.startswith(space) else space
        stop = req.stop if req.stop.startswith(space) else None  # else past this space
        items += view.iterate_sync(prefix=space, start=first, stop=stop,
                                   limit=limit - len(items))
        if len(items) >= limit:
            return items, items[-1][0] + b"\x00"
    return items, b""


async def scan(call: Callable[[p.ScanState], Awaitable[p.ScanStateReply]], *,
               start: bytes = b"", stop: bytes = b"", page: int = 5_000,
               ) -> list[tuple[bytes, bytes]]:
    """The caller's side: every pair from start to stop, one moment of the group's state,
    `call` sending each ScanState to the group. A scan the leader dropped starts over."""
    for _ in range(RESTARTS):
        items: list[tuple[bytes, bytes]] = []
        req = p.ScanState(0, start, page, 0, stop)
        try:
            while True:
                reply = await call(req)
                items += reply.items
                if not reply.next_start:
                    return items
                req = p.ScanState(0, reply.next_start, page, reply.scan_id, stop)
        except RemoteError as e:
            if e.code != p.SCAN_EXPIRED:
                raise
    raise RemoteError(p.SCAN_EXPIRED, f"the scan was dropped {RESTARTS} times")
