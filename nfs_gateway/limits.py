"""Bounds on what the RPC server holds (server.py): RpcLimits, the configured limits, and
ByteBudget, the bound on request bytes held across all connections.

Rules:
- Every limit is positive (busy_poll_us: 0..10000) and the record size fits a record marker;
  a bad value is refused when the limits are made, before any socket is opened.
- A ByteBudget never lets more than its limit be held: a request larger than the whole budget
  takes all of it (alone), so it is still served, one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from nfs_gateway.record import MAX_FRAGMENT_LEN


@dataclass(frozen=True, slots=True)
class RpcLimits:
    max_record_bytes: int = 1024 * 1024 + 4096  # a 1 MiB WRITE plus its headers
    max_connections: int = 512
    max_in_flight_per_connection: int = 64
    max_in_flight_bytes: int = 256 * 1024 * 1024  # request bytes held, all TCP connections
    idle_timeout_s: float = 600.0
    recv_chunk_bytes: int = 64 * 1024  # larger records are received into their own buffer
    max_udp_in_flight: int = 64
    max_udp_request_bytes: int = 65535
    max_udp_reply_bytes: int = 65507  # the largest IPv4 UDP payload
    join_below_bytes: int = 16 * 1024  # replies smaller than this go out as one buffer
    shutdown_grace_s: float = 10.0
    # After answering the only connected client, poll its socket this long before sleeping in
    # epoll (0: never). A request-reply client sends its next call within tens of µs, and waking
    # an idle vCPU costs about as much (NULL round trip 38 -> 32 µs, cached stat +35%); the price
    # is up to this much CPU per reply, and only while one client is connected and idle.
    busy_poll_us: int = 50

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if name == "busy_poll_us":
                if not 0 <= self.busy_poll_us <= 10_000:
                    raise ValueError("RpcLimits.busy_poll_us must be in 0..10000")
            elif not getattr(self, name) > 0:
                raise ValueError(f"RpcLimits.{name} must be positive")
        if self.max_record_bytes > MAX_FRAGMENT_LEN:
            raise ValueError("RpcLimits.max_record_bytes must fit in a record marker")


class ByteBudget:
    """A bound on bytes held across tasks; waiters re-check whenever bytes are released."""

    def __init__(self, limit: int) -> None:
        assert limit > 0
        self.limit = limit
        self.used = 0
        self._released = trio.Event()

    async def acquire(self, nbytes: int) -> int:
        """Wait until `nbytes` fit; return what to release (larger asks take the whole budget)."""
        nbytes = min(nbytes, self.limit)
        while self.used + nbytes > self.limit:
            await self._released.wait()
        self.used += nbytes
        return nbytes

    def release(self, nbytes: int) -> None:
        self.used -= nbytes
        assert self.used >= 0
        self._released.set()
        self._released = trio.Event()
