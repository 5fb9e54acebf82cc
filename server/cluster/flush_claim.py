"""A write-back round's hold on the bucket keys it writes: one writer per key, per round.

    round ──KeyClaim(round, until)──▶ root group      refused while another round's lease runs
          ── uploads, each store request started before  stop = until - margin
          ── every lease/RENEWALS: KeyClaim again (the holder renews: until moves on)
          ── KeyLive(round) with SetClean (refused unless the round still holds the key)
             or KeyUnclaim(round) when it gives up

Why (FINDINGS.md 11): claims used to be per inode. Two rounds of one file on two nodes (the
root group's leader moved) both wrote its key; the older round's PUT, slowed by S3 retries,
landed after the newer round had marked the file clean, and the bucket held stale bytes that
revalidation then took for a change made in the bucket.

Rules:
- A lease is `lease_s` of wall-clock time from the claim (wall clocks of the nodes, which are
  assumed to agree within the margin). The round starts no store request past `stop_ns`:
  `margin_s` before the lease ends, so that an attempt already running (bounded by the store's
  timeouts: node.py sets the margin from them) is over before another round may claim.
- Requests a group makes for the round (PutObject, PutPart) carry `stop_ns` and are cut at it
  the same way (bucket_upload.py).
- The renewer extends the lease while the round works; a renewal the root group refuses or
  cannot commit leaves the old lease, and the round's store work is cut at its stop.
- Let go at the end (KeyUnclaim, best effort: otherwise the lease runs out).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from server.cluster import protocol as p
from server.fs.records import Inode, KeyClaim, KeyUnclaim
from server.rpc.frames import RemoteError

if TYPE_CHECKING:
    from server.cluster.flush import Flusher

log = logging.getLogger("objcache.flush")

RENEWALS = 6  # renewals per lease: a late one or two still leave time


def trio_deadline(at_ns: int, now_ns: int) -> float:
    """The trio clock's reading at wall-clock time `at_ns`, the wall clock reading `now_ns`."""
    return trio.current_time() + (at_ns - now_ns) / 1e9


class RoundClaim:
    """The keys one round (flush_inode's, or a batch's) writes, held for it."""

    def __init__(self, flusher: Flusher, store: int, *,
                 wall_ns: Callable[[], int] = time.time_ns) -> None:
        self.f = flusher
        self.store = store
        self.round = secrets.randbits(62) + 1  # never 0: 0 is "no round" in the key table
        self.lease_ns = int(flusher.config.claim_lease_s * 1e9)
        self.margin_ns = int(flusher.config.claim_margin_s * 1e9)
        self._wall = wall_ns
        self.until_ns = 0
        self.keys: list[bytes] = []  # the keys held
        self._scope: trio.CancelScope | None = None  # the store work of `working`

    @property
    def stop_ns(self) -> int:
        """No store request of the round starts after this (wall clock, ns)."""
        return self.until_ns - self.margin_ns

    def record(self, inode: Inode, key: bytes) -> KeyClaim:
        now = self._wall()
        return KeyClaim(self.store, key, inode.ino, inode.dver, self.round, now + self.lease_ns,
                        now)

    def held(self, records: list[KeyClaim]) -> None:
        """The claims in `records` committed: the lease ends with the earliest of them."""
        self.keys += [r.key for r in records]
        until = min(r.until_ns for r in records)
        self.until_ns = min(self.until_ns, until) if self.until_ns else until

    def live(self, keys: list[bytes]) -> None:
        """`keys` were marked live (KeyLive ended their hold): no longer the round's."""
        done = set(keys)
        self.keys = [k for k in self.keys if k not in done]

    @asynccontextmanager
    async def working(self) -> AsyncIterator[None]:
        """While the body writes to the store: the lease is renewed, and the body is cut at
        `stop_ns` (moved on by each renewal)."""
        scope = self._scope = trio.CancelScope(deadline=self._deadline())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.renew)
            with scope:
                yield
            nursery.cancel_scope.cancel()
        if scope.cancelled_caught:
            log.warning("write-back: round %x stopped at the end of its claim on %d keys "
                        "(the store is slow or the root group did not renew it)",
                        self.round, len(self.keys))

    def _deadline(self) -> float:
        return trio_deadline(self.stop_ns, self._wall())

    async def renew(self) -> None:
        """Extend the lease every lease/RENEWALS until cancelled."""
        while True:
            await trio.sleep(self.lease_ns / 1e9 / RENEWALS)
            if not self.keys:
                continue
            now = self._wall()
            recs = [KeyClaim(self.store, k, 0, -1, self.round, now + self.lease_ns, now)
                    for k in self.keys]
            try:
                ok = await self.f._txn(self.f._root_group(self.store), recs)
            except (p.Unavailable, p.RingChanged, RemoteError) as e:
                log.info("write-back: renewing round %x: %s", self.round, e)
                continue
            if ok:
                self.until_ns = now + self.lease_ns
                if self._scope is not None:
                    self._scope.deadline = self._deadline()

    async def release(self) -> None:
        """KeyUnclaim the keys still held (those not marked live), shielded, best effort."""
        keys = self.keys
        if not keys:
            return
        with trio.CancelScope(shield=True):
            with trio.move_on_after(10):
                try:
                    await self.f._txn(self.f._root_group(self.store),
                                      [KeyUnclaim(self.store, k, self.round) for k in keys])
                except (p.Unavailable, p.RingChanged, RemoteError) as e:
                    log.info("write-back: letting go of %d keys: %s (their lease runs out)",
                             len(keys), e)
