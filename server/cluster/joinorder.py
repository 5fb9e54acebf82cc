"""`objcache admin join`: a node started with `cluster.await_join` joins when an admin says
through which member.

Rules:
- The waiting node runs only its RPC plane (peers and the admin token authenticate as
  usual) and answers one admin message, JoinOrder, with the member's RPC address. Its start-up
  then goes on exactly as a node started with `--join` (ringjoin.py): a new group, or a
  replica when its `cluster.group` is an existing group.
- The order's reply waits for the outcome: JoinDone once the node's group installed a
  NodeList naming it, or RemoteError(JOIN_FAILED) with the reason (the node then stops, as
  a failed `--join` does). A second order, while one is under way or after it, is refused
  (JOIN_BUSY).
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass

import trio

from server.config import ConfigError, Listen, parse_listen
from server.rpc.codec import message
from server.rpc.frames import RemoteError
from server.rpc.plane import RpcPlane

log = logging.getLogger("objcache.node")

JOIN_FAILED = "join-failed"  # the join was refused or timed out (message says why)
JOIN_BUSY = "join-busy"  # this node is joining already
BAD_ADDRESS = "bad-address"
REPLY_GRACE_S = 1.0  # a failed join waits this long for its reply to leave before stopping


@message("cl.join_order")
@dataclass(frozen=True, slots=True)
class JoinOrder:
    through: str  # HOST:PORT of a running member's RPC plane


@message("cl.join_done")
@dataclass(frozen=True, slots=True)
class JoinDone:
    nodelist: bytes  # the first NodeList naming this node
    seconds: float


class AwaitJoin:
    """The waiting node's side: `serve`, then `order()` returns the member to join through;
    the start-up reports `joined` or `failed`."""

    def __init__(self, plane: RpcPlane) -> None:
        self.plane = plane
        self._through: Listen | None = None
        self._ordered = trio.Event()
        self._finished = trio.Event()
        self._started_at = 0.0
        self._nodelist = b""
        self._error = ""

    def serve(self) -> None:
        self.plane.register(JoinOrder, self._on_order, admin=True)

    async def order(self) -> Listen | None:
        """The member to join through; None when SIGTERM or SIGINT came first (the node
        stops, having joined nothing)."""
        log.info("waiting for `objcache admin join` to name a member to join through")
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for signum in signals:
                        log.info("%s: stopping; nothing was joined", signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()

                nursery.start_soon(stop_on_signal)
                await self._ordered.wait()
                nursery.cancel_scope.cancel()
        return self._through if self._ordered.is_set() else None

    def joined(self, nodelist: bytes) -> None:
        self._nodelist = nodelist
        self._finished.set()

    async def failed(self, reason: str) -> None:
        """The join failed: answer the order, then let the start-up stop the node."""
        self._error = reason
        self._finished.set()
        if self._ordered.is_set():
            await trio.sleep(REPLY_GRACE_S)

    async def _on_order(self, _peer: int, req: JoinOrder) -> JoinDone:
        if self._finished.is_set() and not self._error:
            raise RemoteError(JOIN_BUSY, f"a member already (joined through {self._through})")
        if self._ordered.is_set():
            raise RemoteError(JOIN_BUSY, f"already joining through {self._through}")
        try:
            through = parse_listen("through", req.through)
        except ConfigError as e:
            raise RemoteError(BAD_ADDRESS, str(e)) from None
        if through is None:
            raise RemoteError(BAD_ADDRESS, "through: expected HOST:PORT, got 'off'")
        self._through, self._started_at = through, trio.current_time()
        self._ordered.set()
        await self._finished.wait()
        if self._error:
            raise RemoteError(JOIN_FAILED, self._error)
        return JoinDone(self._nodelist, trio.current_time() - self._started_at)
