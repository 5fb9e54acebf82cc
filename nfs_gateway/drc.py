"""A bounded duplicate request cache for non-idempotent procedures (RFC 1813 §4.4, RFC 5531 §8).

Why: NFS over ONC RPC is at-least-once. A client that times out retransmits with the same xid; a
REMOVE or CREATE run twice answers NFS3ERR_NOENT or NFS3ERR_EXIST to an operation that succeeded.

Rules:
- A call is identified by the client's address (not port: clients reconnect from new ports),
  xid, program, version, procedure, and a checksum and length of its arguments (so an xid that
  wraps or is reused for different arguments is not mistaken for a retransmission).
- `begin` of a new call records it as in progress. A retransmission that arrives while the
  original is in progress is dropped (the client will retransmit again and get the reply); one
  that arrives after `finish` gets the original reply bytes.
- Bounded by entries and bytes. Completed entries are evicted oldest first; in-progress entries
  are never evicted. When the cache is full of in-progress calls, a new call runs uncached.
- Pure code: no clock, no I/O.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

log = logging.getLogger("objcache.drc")


@dataclass(frozen=True, slots=True)
class DrcLimits:
    max_entries: int = 1024
    max_bytes: int = 4 * 1024 * 1024
    max_reply_bytes: int = 64 * 1024  # larger replies are not kept (non-idempotent ones are small)


class DrcKey(NamedTuple):
    """A tuple: hashed and compared in C, several times per non-idempotent call."""

    host: str
    xid: int
    prog: int
    vers: int
    proc: int
    args_crc: int
    args_len: int


@dataclass(frozen=True, slots=True)
class DrcHit:
    """A retransmission: `reply` is the original reply, or None while the original runs."""

    reply: bytes | None


_IN_PROGRESS = DrcHit(None)


class DuplicateRequestCache:
    def __init__(self, limits: DrcLimits = DrcLimits()) -> None:
        assert limits.max_entries > 0 and limits.max_bytes > 0
        self.limits = limits
        self._entries: OrderedDict[DrcKey, DrcHit] = OrderedDict()
        self._bytes = 0
        self.uncached = 0  # calls that ran without protection because the cache was full

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def begin(self, key: DrcKey) -> DrcHit | None:
        """None: a new call, now in progress (call finish or abandon). Else a retransmission."""
        hit = self._entries.get(key)
        if hit is not None:
            return hit
        if len(self._entries) >= self.limits.max_entries:
            self._evict(len(self._entries) - self.limits.max_entries + 1, 0)
        if len(self._entries) >= self.limits.max_entries:
            self.uncached += 1
            log.warning("duplicate request cache full of in-progress calls; running uncached")
            return None
        self._entries[key] = _IN_PROGRESS
        return None

    def finish(self, key: DrcKey, reply: bytes) -> None:
        """The call's reply is known: keep it for retransmissions, within the limits."""
        if self._entries.get(key) is not _IN_PROGRESS:
            return  # ran uncached
        if len(reply) > self.limits.max_reply_bytes or len(reply) > self.limits.max_bytes:
            del self._entries[key]
            return
        self._entries[key] = DrcHit(reply)
        self._entries.move_to_end(key)
        self._bytes += len(reply)
        if self._bytes > self.limits.max_bytes:
            self._evict(0, self._bytes - self.limits.max_bytes)

    def abandon(self, key: DrcKey) -> None:
        """The call did not complete (cancelled): forget it so a retransmission runs it."""
        if self._entries.get(key) is _IN_PROGRESS:
            del self._entries[key]

    def _evict(self, count: int, min_bytes: int) -> None:
        """Drop completed entries, oldest first, until `count` dropped and `min_bytes` freed."""
        if count == 1 and not min_bytes:  # a full cache takes one more call: the usual case
            key, hit = next(iter(self._entries.items()))
            if hit.reply is not None:
                del self._entries[key]
                self._bytes -= len(hit.reply)
                return
        freed = 0
        victims = []
        for key, hit in self._entries.items():
            if len(victims) >= count and freed >= min_bytes:
                break
            if hit.reply is not None:
                victims.append(key)
                freed += len(hit.reply)
        for key in victims:
            del self._entries[key]
        self._bytes -= freed
