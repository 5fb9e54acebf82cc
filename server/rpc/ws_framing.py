"""The plane's WebSocket framing (RFC 6455 §5.2, §5.3) without per-byte Python work.

Chunk data between nodes (a READ served from another node's cache, a WRITE staged at a chunk's
owner) rides in WebSocket frames of up to 1 MiB, and wsproto spent more on each such frame
than the socket did:
- masking: every frame a dialing node sends is masked and its peer unmasks it; wsproto XORs in
  Python (four strided bytes.translate() passes), about 1.1 ms per MiB at each end. websockets
  ships the same XOR in C (websockets.speedups.apply_mask, ~0.05 ms per MiB); CXorMasker puts
  it behind wsproto's masker interface.
- building a frame: wsproto's _serialize_frame copies the payload four or five times
  (bytearray() twice, the masking, header + payload, bytearray() of that) into fresh memory,
  where each 1 MiB copy costs its page faults too; serialize_frame builds the same bytes with
  one join.
- taking a received payload out of the buffer: wsproto slices it out (a copy), unmasks it (a
  copy) and makes bytes of it (a copy); process_buffer does it in one, from a memoryview.
The masking keys are still fresh from os.urandom per frame and the bytes on the wire are the
ones wsproto writes, so peers with or without this interoperate. Frames with extensions
(none on the plane) keep wsproto's own path.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from wsproto import frame_protocol
from wsproto.frame_protocol import MAX_PAYLOAD_NORMAL, MAX_PAYLOAD_TWO_BYTE, Opcode

try:
    from websockets.speedups import apply_mask
except ImportError:  # no C build for this platform: keep wsproto's own framing
    apply_mask = None

# wsproto's own, kept for frames with extensions (and as the tests' reference)
_wsproto_masker = frame_protocol.XorMaskerSimple
_wsproto_serialize_frame = frame_protocol.FrameProtocol._serialize_frame
_wsproto_process_buffer = frame_protocol.FrameDecoder.process_buffer


class CXorMasker:
    """wsproto's XorMaskerSimple contract: process() XORs successive pieces of one payload,
    continuing the key where the previous piece stopped."""

    __slots__ = ("_key",)

    def __init__(self, masking_key: bytes | bytearray) -> None:
        self._key = bytes(masking_key)

    def process(self, data: bytes | bytearray) -> bytes | bytearray:
        if not data:
            return data
        masked = apply_mask(data, self._key)
        turn = len(data) % 4
        if turn:  # the next piece starts `turn` bytes into the key
            self._key = self._key[turn:] + self._key[:turn]
        return masked


def serialize_frame(self: Any, opcode: Opcode, payload: Any = b"", fin: bool = True) -> Any:
    """FrameProtocol._serialize_frame with one copy of the payload. Returns bytes, which
    wsproto's Connection.send appends to b"" without another copy."""
    if self.extensions:
        return _wsproto_serialize_frame(self, opcode, payload, fin)
    n = len(payload)
    first = (0x80 if fin else 0) | int(opcode)
    masked = 0x80 if self.client else 0
    if n <= MAX_PAYLOAD_NORMAL:
        head = struct.pack("!BB", first, masked | n)
    elif opcode.iscontrol():
        raise ValueError("payload too long for control frame")  # wsproto's own refusal
    elif n <= MAX_PAYLOAD_TWO_BYTE:
        head = struct.pack("!BBH", first, masked | 126, n)
    else:
        head = struct.pack("!BBQ", first, masked | 127, n)
    if not self.client:
        return b"".join((head, payload))
    key = os.urandom(4)  # §5.3: a fresh, unpredictable key per frame, as wsproto picks it
    return b"".join((head, key, apply_mask(payload, key)))


def process_buffer(self: Any) -> frame_protocol.Frame | None:
    """FrameDecoder.process_buffer, step for step, with one copy of the payload piece."""
    if self.extensions:
        return _wsproto_process_buffer(self)
    if not self.header and not self.parse_header():
        return None
    header, buf = self.header, self.buffer
    if len(buf) < self.payload_required:  # a control frame is taken whole
        return None
    start = buf.bytes_used
    n = min(header.payload_len - self.payload_consumed, len(buf.buffer) - start)
    if n <= 0 and header.payload_len > 0:
        return None
    with memoryview(buf.buffer) as whole, whole[start:start + n] as piece:
        payload = bytes(self.masker.process(piece))  # bytes of bytes: the same object
    buf.bytes_used = start + n
    buf.commit()  # the views are released: the bytearray may shrink now
    self.payload_consumed += n
    finished = self.payload_consumed == header.payload_len
    frame = frame_protocol.Frame(self.effective_opcode, payload, finished, header.fin)
    if finished:
        self.header = None
        self.effective_opcode = None
        self.masker = None
    else:
        self.effective_opcode = Opcode.CONTINUATION
    return frame


def install() -> None:
    """Idempotent; called when server.rpc.connection is imported. wsproto looks the masker
    class up in its module at every frame, so replacing the names is enough."""
    if apply_mask is not None:
        frame_protocol.XorMaskerSimple = CXorMasker  # type: ignore[misc, assignment]
        frame_protocol.FrameProtocol._serialize_frame = serialize_frame  # type: ignore[method-assign]
        frame_protocol.FrameDecoder.process_buffer = process_buffer  # type: ignore[method-assign]
