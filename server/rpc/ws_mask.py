"""WebSocket masking (RFC 6455 §5.3) at C speed for the node-to-node plane.

Every frame a dialing node sends is masked, and its peer unmasks it. wsproto does the XOR in
Python, four strided bytes.translate() passes per payload: about 1.1 ms per MiB at each end,
which made masking the largest single cost of moving chunk data between nodes (a warm read
served by another node's cache). websockets ships the same XOR as a C function
(websockets.speedups.apply_mask, ~0.05 ms per MiB); this puts it behind wsproto's masker
interface. The masking keys are still wsproto's (os.urandom per frame), so the wire is
unchanged: peers running either masker interoperate.
"""

from __future__ import annotations

from wsproto import frame_protocol

try:
    from websockets.speedups import apply_mask
except ImportError:  # no C build for this platform: keep wsproto's own masker
    apply_mask = None


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


def install() -> None:
    """Idempotent; called when server.rpc.connection is imported. wsproto looks the masker
    class up in its module at every frame, so replacing the name is enough."""
    if apply_mask is not None:
        frame_protocol.XorMaskerSimple = CXorMasker  # type: ignore[misc, assignment]
