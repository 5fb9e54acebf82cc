"""The plane's WebSocket framing (server/rpc/ws_framing.py) writes and reads exactly the bytes
wsproto's own code does, masked and unmasked, whole and in pieces."""

from __future__ import annotations

import os
import random

import pytest
from wsproto import frame_protocol
from wsproto.frame_protocol import FrameProtocol, Opcode

import server.rpc.connection  # noqa: F401  (installs the framing)
from server.rpc import ws_framing

SIZES = [0, 1, 125, 126, 127, 65535, 65536, (1 << 20) + 3]
KEY = b"\x9a\x01\xfe\x37"


def masked_by_the_book(key: bytes, data: bytes) -> bytes:
    """RFC 6455 §5.3: octet i is XORed with key octet i mod 4."""
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


@pytest.fixture
def fixed_key(monkeypatch):
    """Both serializers draw the same masking key, so their output can be compared (os is one
    module: this patches os.urandom for the whole test)."""
    monkeypatch.setattr(os, "urandom", lambda n: KEY[:n])


@pytest.fixture
def wsproto_own(monkeypatch):
    """A switch back to wsproto's own framing, for a reference to compare with."""
    def switch() -> None:
        monkeypatch.setattr(frame_protocol, "XorMaskerSimple", ws_framing._wsproto_masker)
        monkeypatch.setattr(FrameProtocol, "_serialize_frame",
                            ws_framing._wsproto_serialize_frame)
        monkeypatch.setattr(frame_protocol.FrameDecoder, "process_buffer",
                            ws_framing._wsproto_process_buffer)
    return switch


def test_the_plane_uses_the_fast_framing() -> None:
    assert ws_framing.apply_mask is not None, "websockets' C speedups are missing"
    assert frame_protocol.XorMaskerSimple is ws_framing.CXorMasker
    assert FrameProtocol._serialize_frame is ws_framing.serialize_frame
    assert frame_protocol.FrameDecoder.process_buffer is ws_framing.process_buffer


@pytest.mark.parametrize("sizes", [[0], [1], [3, 5, 7], [4, 4], [1, 1, 1, 1, 1], [1000, 3, 4097]])
def test_masker_pieces_continue_the_key_where_the_last_stopped(sizes: list[int]) -> None:
    pieces = [os.urandom(n) for n in sizes]
    masker = ws_framing.CXorMasker(KEY)
    got = b"".join(bytes(masker.process(p)) for p in pieces)
    assert got == masked_by_the_book(KEY, b"".join(pieces))


@pytest.mark.parametrize("client", [False, True], ids=["server", "client"])
@pytest.mark.parametrize("n", SIZES)
def test_a_frame_is_the_bytes_wsproto_writes(client: bool, n: int, fixed_key) -> None:
    payload = random.Random(n).randbytes(n)  # not os.urandom: fixed_key patched it
    proto = FrameProtocol(client=client, extensions=[])
    for opcode, fin in ((Opcode.BINARY, True), (Opcode.BINARY, False), (Opcode.TEXT, True),
                        (Opcode.CONTINUATION, True)):
        ours = ws_framing.serialize_frame(proto, opcode, payload, fin)
        theirs = ws_framing._wsproto_serialize_frame(proto, opcode, payload, fin)
        assert bytes(ours) == bytes(theirs)
    if client and n:  # and the masking is RFC 6455's, not merely the same as wsproto's
        assert bytes(ours)[-n:] == masked_by_the_book(KEY, payload)


def test_a_control_frame_over_125_bytes_is_refused_as_wsproto_refuses_it() -> None:
    proto = FrameProtocol(client=False, extensions=[])
    with pytest.raises(ValueError, match="control frame"):
        ws_framing.serialize_frame(proto, Opcode.PING, b"x" * 126)


def _frames(client_wire: bytes, pieces: list[int]) -> list[tuple]:
    """What a server-side FrameProtocol reads from `client_wire`, fed in pieces of these sizes."""
    server = FrameProtocol(client=False, extensions=[])
    out, at = [], 0
    for size in [*pieces, len(client_wire)]:
        server.receive_bytes(client_wire[at:at + size])
        at += size
        out += [(f.opcode, bytes(f.payload), f.frame_finished, f.message_finished)
                for f in server.received_frames()]
        if at >= len(client_wire):
            break
    return out


@pytest.mark.parametrize("seed", range(8))
def test_frames_read_in_pieces_are_what_wsproto_reads(seed: int, wsproto_own) -> None:
    rng = random.Random(seed)
    client = FrameProtocol(client=True, extensions=[])
    wire = b"".join(
        bytes(client.send_data(os.urandom(rng.choice(SIZES)), fin=rng.random() < 0.7))
        for _ in range(6))
    wire += bytes(client.send_data(b"end", fin=True)) + bytes(client.ping(b"are you there"))
    pieces = [rng.choice([1, 2, 7, 100, 4096, 70000, 300000]) for _ in range(200)]
    ours = _frames(wire, pieces)
    wsproto_own()
    assert ours == _frames(wire, pieces)
    assert ours[-1][0] == Opcode.PING and ours[-1][1] == b"are you there"


def test_a_client_reads_unmasked_frames_and_refuses_masked_ones() -> None:
    server, client = FrameProtocol(client=False, extensions=[]), FrameProtocol(True, [])
    payload = os.urandom(200_000)
    client.receive_bytes(bytes(server.send_data(payload, fin=True)))
    assert b"".join(bytes(f.payload) for f in client.received_frames()) == payload
    other_client = FrameProtocol(client=True, extensions=[])
    client.receive_bytes(bytes(other_client.send_data(b"masked", fin=True)))
    with pytest.raises(frame_protocol.ParseFailed, match="masked"):
        list(client.received_frames())
