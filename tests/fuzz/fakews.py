"""A fake WebSocket and a test message pair for driving the node RPC plane's connection and
handshake without sockets (sans-I/O): the fuzzers and their regression tests share them."""

from __future__ import annotations

from dataclasses import dataclass

import trio
from trio_websocket import CloseReason, ConnectionClosed

from server.rpc.codec import message
from server.rpc.connection import ConnectionLimits

SECRET = b"cluster-secret-for-fuzzing-0123456789"
LIMITS = ConnectionLimits(
    max_frame_bytes=8192,
    max_message_bytes=16384,
    send_queue_frames=16,
    bulk_queue_messages=2,
    max_concurrent_requests=4,
)


@message("fuzz.ping")
@dataclass(frozen=True, slots=True)
class Ping:
    n: int
    pad: bytes = b""


@message("fuzz.pong")
@dataclass(frozen=True, slots=True)
class Pong:
    n: int


class FakeWs:
    """Hands out `frames` in order, then reports the peer's close; keeps what is sent."""

    def __init__(self, frames: list[bytes | str]) -> None:
        self.frames = list(frames)
        self.sent: list[bytes] = []
        self.closed_with: tuple[int, str | None] | None = None

    async def get_message(self) -> bytes | str:
        await trio.lowlevel.checkpoint()
        if not self.frames:
            raise ConnectionClosed(CloseReason(1000, "the fuzzer is done"))
        return self.frames.pop(0)

    async def send_message(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.sent.append(data)

    async def ping(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed_with = (code, reason)


async def ping_handler(peer: int, msg: Ping) -> Pong:
    await trio.lowlevel.checkpoint()
    return Pong(msg.n)
