"""What travels in one WebSocket message between two nodes, and the plane's typed errors.

Every WebSocket message carries exactly one frame, encoded with server/rpc/codec.py. A message
(one-way, request or reply) whose encoding is larger than the configured max frame goes as a
sequence of Chunk frames carrying consecutive slices of its encoding; the receiver reassembles
them (up to max_message_bytes) and decodes the whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.rpc.codec import message

# ---- handshake (see handshake.py) ----


MAX_NODE_ID = (1 << 64) - 1  # the handshake's MAC packs node ids as u64


def _check_node_id(node_id: int) -> None:
    # Checked at decode (a ValueError there is a CodecError), before any MAC is computed.
    if not 0 <= node_id <= MAX_NODE_ID:
        raise ValueError(f"node id {node_id} is not a u64")


@message("rpc.hello")
@dataclass(frozen=True, slots=True)
class Hello:
    """Dialer → acceptor: who I am, and a fresh nonce for the acceptor to prove itself on."""

    node_id: int
    incarnation: int  # random per process start: tells a restarted peer from a duplicate dial
    nonce: bytes
    protocol: int

    def __post_init__(self) -> None:
        _check_node_id(self.node_id)


@message("rpc.challenge")
@dataclass(frozen=True, slots=True)
class Challenge:
    """Acceptor → dialer: who I am, and a fresh nonce for the dialer to prove itself on."""

    node_id: int
    incarnation: int
    nonce: bytes

    def __post_init__(self) -> None:
        _check_node_id(self.node_id)


@message("rpc.proof")
@dataclass(frozen=True, slots=True)
class Proof:
    """Dialer → acceptor: the dialer's MAC over both nonces and both ids."""

    mac: bytes


@message("rpc.welcome")
@dataclass(frozen=True, slots=True)
class Welcome:
    """Acceptor → dialer: the dialer is accepted; this is the acceptor's own MAC."""

    mac: bytes


# ---- traffic ----


@message("rpc.oneway")
@dataclass(frozen=True, slots=True)
class OneWay:
    body: Any


MAX_TIMEOUT_MS = 1 << 53  # a deadline the handler's cancel scope takes (exact as a float)


@message("rpc.request")
@dataclass(frozen=True, slots=True)
class Request:
    id: int
    timeout_ms: int  # the caller's remaining deadline: the handler is cancelled after it
    body: Any

    def __post_init__(self) -> None:
        # Checked at decode (a ValueError there is a CodecError): a peer's negative or
        # astronomic deadline is garbage, not a handler failure.
        if not 0 <= self.timeout_ms <= MAX_TIMEOUT_MS:
            raise ValueError(f"timeout_ms {self.timeout_ms} is not in 0..{MAX_TIMEOUT_MS}")


@message("rpc.reply")
@dataclass(frozen=True, slots=True)
class Reply:
    id: int
    body: Any


@message("rpc.failure")
@dataclass(frozen=True, slots=True)
class Failure:
    id: int
    code: str
    message: str


@message("rpc.batch")
@dataclass(frozen=True, slots=True)
class Batch:
    """Several small encoded frames in one WebSocket message: one send() for many replies."""

    frames: tuple[bytes, ...]


@message("rpc.chunk")
@dataclass(frozen=True, slots=True)
class Chunk:
    """A slice of one large encoded frame: `offset` into it, `total` its full length."""

    stream_id: int
    offset: int
    total: int
    data: bytes


# ---- errors the caller of the plane sees ----


class RpcError(Exception):
    """Base of the plane's operating errors."""


class PeerUnavailable(RpcError):
    """No authenticated connection to the peer (unknown peer, or not connected in time)."""


class RpcTimeout(RpcError):
    """The call's deadline passed before a reply came."""


class ConnectionLost(RpcError):
    """The connection closed while the call was outstanding; it may or may not have run."""


DEADLINE = "deadline"  # a RemoteError code: the handler ran past the caller's deadline


class RemoteError(RpcError):
    """The peer's handler answered with a typed failure. Handlers raise it to reply with one."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ProtocolViolation(RpcError):
    """The peer broke the framing protocol; its connection is closed."""
