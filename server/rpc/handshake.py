"""Mutual authentication of two nodes with the cluster secret: HMAC challenge-response.

    dialer   → acceptor   Hello(dialer id, incarnation, dialer nonce, protocol)
    acceptor → dialer     Challenge(acceptor id, incarnation, acceptor nonce)
    dialer   → acceptor   Proof(HMAC(secret, "dialer"   | nonces | ids))
    acceptor → dialer     Welcome(HMAC(secret, "acceptor" | nonces | ids))
                          or a close with DUPLICATE_CLOSE_CODE if `admit` refuses the pair

Rules:
- Each side proves knowledge of the secret over a nonce the *other* side chose, so a recorded
  handshake cannot be replayed; the role label in the MAC stops a proof from being reflected
  back to its sender. Both node ids are in the MAC, so a proof is bound to this pair.
- The dialer proves first, so an acceptor always learns (and counts) a peer with a wrong secret.
- Whoever sees a bad proof raises AuthFailed; the caller counts it, logs it and closes.
- The acceptor calls `admit(peer id, peer incarnation)` after the proof and before Welcome, so
  the one-connection-per-pair decision is taken before either side sends traffic on it.
- Nonces come from `secrets` (I/O-layer randomness, never a seeded generator).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable
from typing import Any, TypeVar

from trio_websocket import WebSocketConnection

from server.rpc.codec import decode, encode
from server.rpc.frames import Challenge, Hello, Proof, ProtocolViolation, RpcError, Welcome

PROTOCOL = 1
NONCE_BYTES = 32
DUPLICATE_CLOSE_CODE = 4002  # application range of WebSocket close codes (RFC 6455 §7.4.2)
T = TypeVar("T")


class AuthFailed(RpcError):
    """The peer did not prove knowledge of the cluster secret (or claimed a bad identity)."""


class BadIdentity(AuthFailed):
    """The peer claimed a node id it may not have (its own, 0, or not the one dialed)."""


class NotAdmitted(RpcError):
    """The peer is authentic but already connected (or losing a simultaneous dial)."""


def _mac(secret: bytes, role: bytes, dialer_nonce: bytes, acceptor_nonce: bytes,
         dialer_id: int, acceptor_id: int) -> bytes:
    text = role + b"\x00" + dialer_nonce + acceptor_nonce + struct.pack(">QQ", dialer_id,
                                                                       acceptor_id)
    return hmac.new(secret, text, hashlib.sha256).digest()


async def _receive(ws: WebSocketConnection, kind: type[T]) -> T:
    data = await ws.get_message()
    if not isinstance(data, bytes):
        raise ProtocolViolation("text frame during the handshake")
    frame: Any = decode(data)  # CodecError on garbage
    if not isinstance(frame, kind):
        raise ProtocolViolation(f"expected {kind.__name__}, got {type(frame).__name__}")
    return frame


async def dial(ws: WebSocketConnection, *, secret: bytes, my_id: int, incarnation: int,
               expected_id: int | None) -> tuple[int, int]:
    """Authenticate as the dialer; returns the acceptor's node id and incarnation."""
    my_nonce = secrets.token_bytes(NONCE_BYTES)
    await ws.send_message(encode(Hello(my_id, incarnation, my_nonce, PROTOCOL)))
    challenge = await _receive(ws, Challenge)
    peer_id = challenge.node_id
    if expected_id is not None and peer_id != expected_id:
        raise BadIdentity(f"dialed node {expected_id} but node {peer_id} answered")
    _check_nonce(challenge.nonce)
    args = (my_nonce, challenge.nonce, my_id, peer_id)
    await ws.send_message(encode(Proof(_mac(secret, b"dialer", *args))))
    welcome = await _receive(ws, Welcome)
    if not hmac.compare_digest(welcome.mac, _mac(secret, b"acceptor", *args)):
        raise AuthFailed(f"node {peer_id} failed to prove the cluster secret")
    return peer_id, challenge.incarnation


async def accept(ws: WebSocketConnection, *, secret: bytes | Callable[[int], bytes], my_id: int,
                 incarnation: int, admit: Callable[[int, int], str | None]) -> int:
    """Authenticate as the acceptor; returns the dialer's node id.

    `secret` may depend on who the dialer says it is (`secret(dialer id)`: the admin token
    for admin clients). `admit(peer_id, peer_incarnation)` returns None to take the
    connection (and has then adopted it) or the reason to refuse it, which raises NotAdmitted.
    """
    hello = await _receive(ws, Hello)
    if callable(secret):
        secret = secret(hello.node_id)
    if hello.protocol != PROTOCOL:
        raise ProtocolViolation(f"protocol {hello.protocol}; this node speaks {PROTOCOL}")
    if hello.node_id < 1 or hello.node_id == my_id:
        raise BadIdentity(f"peer claims node id {hello.node_id}")
    _check_nonce(hello.nonce)
    my_nonce = secrets.token_bytes(NONCE_BYTES)
    await ws.send_message(encode(Challenge(my_id, incarnation, my_nonce)))
    proof = await _receive(ws, Proof)
    args = (hello.nonce, my_nonce, hello.node_id, my_id)
    if not hmac.compare_digest(proof.mac, _mac(secret, b"dialer", *args)):
        raise AuthFailed(f"peer claiming node {hello.node_id} failed to prove the cluster secret")
    refused = admit(hello.node_id, hello.incarnation)
    if refused is not None:
        raise NotAdmitted(refused)
    await ws.send_message(encode(Welcome(_mac(secret, b"acceptor", *args))))
    return hello.node_id


def _check_nonce(nonce: bytes) -> None:
    if len(nonce) != NONCE_BYTES:
        raise ProtocolViolation(f"nonce of {len(nonce)} bytes")
