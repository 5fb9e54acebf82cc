"""The write fence of one gateway: while a drain holds it, client changes answer JUKEBOX.

Rules:
- A drain (drain.py) holds the fence of every node's gateway for its whole duration, so that
  nothing changes between the bucket being verified and the nodes exiting. Every client
  change (the Backend methods marked @fenced: SETATTR, WRITE, CREATE, MKDIR, SYMLINK, MKNOD,
  REMOVE, RMDIR, RENAME, LINK) then fails with Jukebox (NFS3ERR_JUKEBOX, RFC 1813 §2.6: "the
  client should retry later"); reads go on. The cluster's own changes (write-back marking
  files clean, a directory loaded from the bucket) do not pass through it.
- A hold is a lease: it lapses at `until` unless renewed, so a drain whose coordinator died
  does not fence the cluster forever. Holders are named (the drain's id): lifting one drain's
  hold never lifts another's. `close_for_good` is the end: the node exits after a drain.
- Changes that passed the fence before it was raised are counted; the drain waits for them
  (`wait_idle`) before it flushes, so none of them lands after the verification.
- No clock is read here: callers pass `now` (trio.current_time()).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import trio

from nfs_gateway.backend import Jukebox

MAX_HOLDERS = 64  # drains holding one fence at once

T = TypeVar("T")


class WriteFence:
    def __init__(self) -> None:
        self._holders: dict[int, float] = {}  # holder -> lease end (trio time)
        self._for_good = False
        self.in_flight = 0  # client changes that passed the fence and have not returned
        self._idle = trio.Event()
        self._idle.set()

    def hold(self, holder: int, until: float) -> None:
        assert holder in self._holders or len(self._holders) < MAX_HOLDERS, "too many drains"
        self._holders[holder] = until

    def release(self, holder: int) -> None:
        self._holders.pop(holder, None)

    def close_for_good(self) -> None:
        self._for_good = True

    def closed(self, now: float) -> bool:
        for holder, until in list(self._holders.items()):
            if until <= now:
                del self._holders[holder]  # the lease lapsed: its drain is gone
        return self._for_good or bool(self._holders)

    @contextmanager
    def passing(self, now: float) -> Iterator[None]:
        """Around one client change: Jukebox while fenced; counted while it runs."""
        if self.closed(now):
            raise Jukebox("writes are fenced: the cluster is draining to its bucket")
        self.in_flight += 1
        self._idle = trio.Event() if self.in_flight == 1 else self._idle
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Until no client change that passed the fence is running."""
        while self.in_flight:
            await self._idle.wait()


def fenced(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Mark a ClusterBackend method as a client change (module rules)."""

    @functools.wraps(method)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        with self.fence.passing(trio.current_time()):
            return await method(self, *args, **kwargs)

    return wrapper
