"""Leases on another group's metadata: what a group's leader granted, and what a gateway holds.

A gateway answers GetInodes and Lookup of another node's group from a reply it holds under a
lease, as it answers its own group's from LevelDB; before a change to an inode, the group's
leader takes back every lease on it. The leader's side is wired in group_leases.py, the
gateway's in gateway.py.

Rules:
- Pure: time is passed in (trio.current_time(), each side its own clock); nothing here sleeps
  or sends.
- The holder's lease runs from when it sent the request; the leader's record from when it
  granted, plus LEASE_MARGIN_S and LEASE_DRIFT of the lease. The grant happens after the send,
  so the holder's lease ends first in real time as long as the two clocks' rates differ by
  less than LEASE_DRIFT (monotonic clocks on one host, or hosts kept by NTP).
- LeaseTable (the leader): `holders(ino, now)` are the nodes that may still serve `ino` from a
  lease. A change to `ino` (`begin_change` ... `end_change`, from before its record is
  proposed until it is applied) waits until each has acknowledged a Revoke (`release`) or its
  lease has run out (`wait_until`), and meanwhile no lease on `ino` is granted: a reply read
  before the change applies would be stale at once. Bounded: past `limit` inodes it grants
  no more (the gateway then asks every time, as without leases).
- A new leader knows none of its predecessor's grants: until `quiet_until()` (its start plus
  one whole lease) every inode counts as leased by someone it cannot name. `quiet_from(now)`
  starts such a period again (a ring change brought inodes another group may have leased).
- An inode whose lease a change took back is not leased again until it went a whole lease
  without changes (`grant` refuses it): a file being written or a directory filling up
  would otherwise cost a Revoke round trip per change.
- LeaseCache (the gateway): bounded (LRU); an entry names every inode its reply shows (a
  Lookup: the directory and the child), and a Revoke of any of them drops it. A ring change
  drops everything (the entries' groups may have moved).
- A Revoke can overtake the reply it revokes on the way into the cache (the reply wakes its
  caller, which stores it later; the Revoke is handled at once): the caller takes `token()`
  before it sends, and `put` stores nothing if any Revoke came meanwhile.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

LEASE_MARGIN_S = 0.05  # the leader's record outlives the holder's lease by this much...
LEASE_DRIFT = 0.01  # ...and by this share of the lease (clock rates that differ by up to 1 %)


def record_s(lease_s: float) -> float:
    """How long after granting the leader must still count a lease of lease_s."""
    return lease_s * (1 + LEASE_DRIFT) + LEASE_MARGIN_S


@dataclass
class LeaseTable:
    """The leases a group's leader granted on its inodes, by inode (module rules)."""

    lease_s: float
    started: float  # when this node became leader: it knows no grant from before
    limit: int = 100_000
    _by_ino: dict[int, dict[int, float]] = field(default_factory=dict)  # ino -> node -> end
    _changing: dict[int, int] = field(default_factory=dict)  # ino -> changes under way
    _changed: dict[int, float] = field(default_factory=dict)  # ino -> when its last change ended

    def quiet_until(self) -> float:
        """Until then a predecessor's leases may still run: no change may be acknowledged."""
        return self.started + record_s(self.lease_s)

    def quiet_from(self, now: float) -> None:
        self.started = max(self.started, now)

    def grant(self, node: int, inos: Iterable[int], now: float) -> float | None:
        """Record a lease of `node` on `inos` from now; the lease to tell the holder, or None
        when the table is full (answer without a lease)."""
        inos = list(inos)
        if any(ino in self._changing or now - self._changed.get(ino, -self.lease_s) < self.lease_s
               for ino in inos):
            return None
        if len(self._by_ino) + len(self._changed) + len(inos) > self.limit:
            self._prune(now)
            if len(self._by_ino) + len(self._changed) + len(inos) > self.limit:
                return None
        end = now + record_s(self.lease_s)
        for ino in inos:
            self._by_ino.setdefault(ino, {})[node] = end
        return self.lease_s

    def holders(self, ino: int, now: float) -> dict[int, float]:
        """node -> when its lease on `ino` ends (leader clock), for the leases still running."""
        held = self._by_ino.get(ino)
        if not held:
            return {}
        running = {node: end for node, end in held.items() if end > now}
        if len(running) != len(held):
            self._set(ino, running)
        return running

    def release(self, ino: int, node: int) -> None:
        """`node` acknowledged a Revoke of `ino`: it no longer serves it from a lease."""
        held = self._by_ino.get(ino)
        if held is not None:
            held.pop(node, None)
            self._set(ino, held)

    def begin_change(self, inos: Iterable[int], now: float) -> tuple[float, dict[int, list[int]]]:
        """A change to `inos` starts: no more grants on them until `end_change`. Returns how
        long it may have to wait (wait_until) and whom to send Revokes: node -> its inodes."""
        inos = list(dict.fromkeys(inos))
        for ino in inos:
            self._changing[ino] = self._changing.get(ino, 0) + 1
        revoke: dict[int, list[int]] = {}
        for ino in inos:
            for node in self.holders(ino, now):
                revoke.setdefault(node, []).append(ino)
                self._changed[ino] = now  # hot from now on (module rules)
        return self.wait_until(inos, now), revoke

    def end_change(self, inos: Iterable[int], now: float) -> None:
        """The change to `inos` (begun with begin_change) was applied, or given up."""
        for ino in dict.fromkeys(inos):
            left = self._changing.get(ino, 0) - 1
            if left > 0:
                self._changing[ino] = left
            else:
                self._changing.pop(ino, None)
            if ino in self._changed:  # leased when the change began, or changed since
                self._changed[ino] = now

    def wait_until(self, inos: Iterable[int], now: float) -> float:
        """The latest time a change to `inos` may have to wait for: the end of the last lease
        on them, or of the predecessor's (quiet_until); `now` when nothing holds them."""
        until = max(now, self.quiet_until())
        for ino in inos:
            for end in self.holders(ino, now).values():
                until = max(until, end)
        return until

    def _set(self, ino: int, held: dict[int, float]) -> None:
        if held:
            self._by_ino[ino] = held
        else:
            self._by_ino.pop(ino, None)

    def _prune(self, now: float) -> None:
        for ino in list(self._by_ino):
            self.holders(ino, now)
        for ino, when in list(self._changed.items()):
            if now - when >= self.lease_s:
                del self._changed[ino]


@dataclass
class _Held:
    ends: float
    reply: Any
    inos: tuple[int, ...]


class LeaseCache:
    """Replies a gateway holds under leases, by request key (module rules)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.ring_version = 0
        self._revokes = 0  # how many Revokes came so far (token)
        self._held: OrderedDict[Hashable, _Held] = OrderedDict()
        self._keys_of: dict[int, set[Hashable]] = {}  # ino -> the keys whose replies show it

    def __len__(self) -> int:
        return len(self._held)

    def token(self) -> int:
        """Taken before a request is sent; `put` of its reply checks it (module rules)."""
        return self._revokes

    def put(self, key: Hashable, reply: Any, inos: Iterable[int], *, token: int,
            ring_version: int, sent_at: float, lease_s: float) -> None:
        """Hold `reply` until sent_at + lease_s (this node's clock: when the request left),
        unless a Revoke came since `token`."""
        if token != self._revokes:
            return
        if ring_version != self.ring_version:
            self.clear(ring_version)
        self._drop(key)
        held = _Held(sent_at + lease_s, reply, tuple(dict.fromkeys(inos)))
        self._held[key] = held
        for ino in held.inos:
            self._keys_of.setdefault(ino, set()).add(key)
        while len(self._held) > self.limit:
            self._drop(next(iter(self._held)))

    def get(self, key: Hashable, *, ring_version: int, now: float) -> Any | None:
        """The reply held for `key` if its lease still runs under this ring; else None."""
        if ring_version != self.ring_version:
            self.clear(ring_version)
            return None
        held = self._held.get(key)
        if held is None:
            return None
        if held.ends <= now:
            self._drop(key)
            return None
        self._held.move_to_end(key)
        return held.reply

    def revoke(self, ino: int) -> int:
        """Drop every reply that shows `ino`; how many there were."""
        self._revokes += 1
        keys = self._keys_of.pop(ino, set())
        for key in keys:
            self._drop(key)
        return len(keys)

    def clear(self, ring_version: int) -> None:
        self._held.clear()
        self._keys_of.clear()
        self.ring_version = ring_version

    def _drop(self, key: Hashable) -> None:
        held = self._held.pop(key, None)
        if held is None:
            return
        for ino in held.inos:
            keys = self._keys_of.get(ino)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._keys_of[ino]
