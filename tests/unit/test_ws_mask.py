"""The C masker behind wsproto's interface writes the bytes wsproto's own masker writes."""

from __future__ import annotations

import os

import pytest
from wsproto import frame_protocol

import server.rpc.connection  # noqa: F401  (installs the masker)
from server.rpc import ws_mask


def masked_by_the_book(key: bytes, pieces: list[bytes]) -> bytes:
    """RFC 6455 §5.3 by the book: octet i is XORed with key octet i mod 4."""
    data = b"".join(pieces)
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


def test_the_plane_masks_with_the_c_masker() -> None:
    assert ws_mask.apply_mask is not None, "websockets' C speedups are missing"
    assert frame_protocol.XorMaskerSimple is ws_mask.CXorMasker


@pytest.mark.parametrize("sizes", [[0], [1], [3, 5, 7], [4, 4], [1, 1, 1, 1, 1], [1000, 3, 4097]])
def test_pieces_continue_the_key_where_the_last_stopped(sizes: list[int]) -> None:
    key = os.urandom(4)
    pieces = [os.urandom(n) for n in sizes]
    masker = ws_mask.CXorMasker(key)
    got = b"".join(bytes(masker.process(p)) for p in pieces)
    assert got == masked_by_the_book(key, pieces)


def test_a_frame_masked_by_a_client_reads_back_at_the_server() -> None:
    """Through wsproto's own framing both ways: what a client masks, a server unmasks."""
    payload = os.urandom((1 << 20) + 3)
    client = frame_protocol.FrameProtocol(client=True, extensions=[])
    server = frame_protocol.FrameProtocol(client=False, extensions=[])
    wire = client.send_data(payload, fin=True)
    assert payload not in wire  # it went masked
    server.receive_bytes(bytes(wire))
    got = b"".join(bytes(frame.payload) for frame in server.received_frames())
    assert got == payload
