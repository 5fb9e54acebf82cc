"""Fuzzing the node RPC plane's receiving side: the CBOR codec (server/rpc/codec.py), the
handshake (handshake.py) and a connection's reader (connection.py: frames, batches, chunked
messages), with arbitrary CBOR, well-typed messages of every registered type and mutations of
valid frames.

What must hold: decode() raises only CodecError; the handshake ends only in its typed errors
(CodecError, ProtocolViolation, AuthFailed, NotAdmitted) or the peer's close; a connection
ends garbage with a counted protocol error and a policy-violation close, and nothing escapes
it; a chunked message never holds more than max_message_bytes; garbage never reaches a handler
as a handler error. Most cases play their frames through a fake WebSocket (fakews.py, no
sockets); the last test sends them to a real RpcPlane over real WebSockets, authenticated or
not, after which no connection task crashed and a real peer's call is still answered.
"""

from __future__ import annotations

import itertools
from typing import Any

import cbor2
import pytest
import trio
from cborgen import REGISTERED, cbor_values, dumps, wire_form
from fakews import LIMITS, SECRET, FakeWs, Ping, Pong, ping_handler
from fuzzlib import CASE_TIMEOUT_S, count, fuzz_settings, maybe_mutated, watchdog
from hypothesis import given
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, open_websocket_url

from server.rpc import handshake
from server.rpc.codec import CodecError, decode, encode
from server.rpc.connection import POLICY_VIOLATION, Connection, Counters
from server.rpc.frames import (
    MAX_TIMEOUT_MS,
    Batch,
    Chunk,
    Failure,
    OneWay,
    Proof,
    ProtocolViolation,
    Reply,
    Request,
)
from server.rpc.plane import RpcConfig, RpcPlane

# --- the codec -----------------------------------------------------------------------------


def _decode_only_codec_error(data: bytes) -> None:
    count("plane-codec")
    with watchdog():
        try:
            decode(data)
        except CodecError:
            pass


@fuzz_settings(300)
@given(data=st.binary(max_size=256))
def test_decode_of_arbitrary_bytes_raises_only_codec_error(data: bytes) -> None:
    _decode_only_codec_error(data)


@fuzz_settings(500)
@given(value=cbor_values)
def test_decode_of_arbitrary_cbor_raises_only_codec_error(value: Any) -> None:
    data = dumps(value)
    if data is not None:
        _decode_only_codec_error(data)


@fuzz_settings(600)
@given(
    data=st.sampled_from(tuple(REGISTERED))
    .flatmap(wire_form)
    .map(dumps)
    .flatmap(lambda d: maybe_mutated(d, p_valid=0.5))
)
def test_decode_of_typed_and_mutated_messages_raises_only_codec_error(data: bytes) -> None:
    _decode_only_codec_error(data)


# --- frames after the handshake ---------------------------------------------------------------

ids = st.integers(0, 8) | st.integers()  # request ids
pings = st.builds(Ping, st.integers(), st.binary(max_size=32))
_valid_frame = st.one_of(
    st.builds(OneWay, pings),
    st.builds(Request, ids, st.integers(0, 60_000) | st.integers(0, MAX_TIMEOUT_MS), pings),
    st.builds(Reply, ids, st.builds(Pong, st.integers())),
    st.builds(Failure, ids, st.text(max_size=8), st.text(max_size=8)),
).map(encode)


def _chunks(data: bytes, step: int, stream_id: int) -> list[bytes]:
    return [
        encode(Chunk(stream_id, off, len(data), data[off : off + step]))
        for off in range(0, len(data), step)
    ]


@st.composite
def frame_groups(draw: st.DrawFn) -> list[bytes | str]:
    """One valid frame, a batch, a chunked message, or garbage; mutated or not."""
    kind = draw(st.integers(0, 9))
    if kind <= 3:
        group = [draw(_valid_frame)]
    elif kind == 4:
        group = [encode(Batch(tuple(draw(st.lists(_valid_frame, max_size=5)))))]
    elif kind <= 6:  # a message streamed in chunks (over the limit sometimes)
        size = draw(st.integers(1, LIMITS.max_message_bytes + 2048))
        msg = encode(Request(draw(ids), 1000, Ping(1, bytes(size))))
        group = _chunks(msg, draw(st.integers(1, 8192)), draw(st.integers(0, 3)))
    elif kind == 7:
        group = [dumps(draw(cbor_values)) or b""]
    elif kind == 8:
        group = [dumps(draw(st.sampled_from(tuple(REGISTERED)).flatmap(wire_form))) or b""]
    else:
        return [draw(st.text(max_size=8))]  # a text frame
    if draw(st.integers(0, 2)) == 0:
        i = draw(st.integers(0, len(group) - 1))
        group[i] = draw(maybe_mutated(group[i], p_valid=0))
    return group


frame_lists = st.lists(frame_groups(), max_size=6).map(lambda gs: [f for g in gs for f in g])


@fuzz_settings(300)
@given(frames=frame_lists)
async def test_connection_survives_any_frames(frames: list[bytes | str]) -> None:
    count("plane-connection")
    ws = FakeWs(frames)
    counters = Counters()
    conn = Connection(
        ws,
        peer_id=2,
        peer_incarnation=1,
        dialer_id=2,
        limits=LIMITS,  # type: ignore[arg-type]
        handlers={Ping: ping_handler},
        counters=counters,
    )
    with watchdog(), trio.fail_after(CASE_TIMEOUT_S):
        await conn.run()  # ends at the fake's close or at garbage; nothing may escape
    assert counters.handler_errors == 0, "garbage reached a handler and made it fail"
    assert conn._assembly is None or len(conn._assembly) <= LIMITS.max_message_bytes
    if ws.closed_with is not None and ws.closed_with[0] == POLICY_VIOLATION:
        assert counters.protocol_errors >= 1
    for data in ws.sent:  # what we sent back is ours: it must decode
        assert isinstance(decode(data), Reply | Failure | Batch | Chunk)


# --- the handshake, acceptor side (an unauthenticated peer) ------------------------------------

_nonce = st.binary(min_size=32, max_size=32)
# Node ids and incarnations at the edges of what the handshake's MAC packs (two u64s).
_ids = st.sampled_from((0, 1, 2, 2**63, 2**64 - 1, 2**64, -1)) | st.integers()
# The wire form, not Hello(...): Hello itself refuses node ids that are not u64.
_hello = st.tuples(_ids, _ids, _nonce, st.just(handshake.PROTOCOL) | st.integers()).map(
    lambda fields: cbor2.dumps(["rpc.hello", 1, list(fields)])
)
_proof = st.builds(Proof, st.binary(max_size=40))
_handshake_frame = st.one_of(
    _hello,
    _proof.map(encode),
    cbor_values.map(lambda v: dumps(v) or b""),
).flatmap(lambda d: maybe_mutated(d, p_valid=0.6))
# Mostly the dialer's script (Hello, then Proof), each maybe mutated; sometimes any frames.
_handshake_script = st.tuples(
    _hello.flatmap(lambda d: maybe_mutated(d, p_valid=0.7)),
    _proof.map(encode).flatmap(lambda d: maybe_mutated(d, p_valid=0.7)),
).map(list) | st.lists(_handshake_frame, max_size=3)

ENDS = (
    CodecError,
    ProtocolViolation,
    handshake.AuthFailed,
    handshake.NotAdmitted,
    ConnectionClosed,
)


@fuzz_settings(300)
@given(frames=_handshake_script)
async def test_handshake_ends_only_in_its_typed_errors(frames: list[bytes]) -> None:
    count("plane-handshake")
    ws = FakeWs(frames)
    with watchdog(), trio.fail_after(CASE_TIMEOUT_S):
        try:
            await handshake.accept(
                ws,
                secret=SECRET,
                my_id=1,
                incarnation=7,  # type: ignore[arg-type]
                admit=lambda peer, inc: None,
            )
        except ENDS:
            return
    raise AssertionError("a peer without the secret was accepted")


# --- a real plane over real WebSockets ------------------------------------------------------------


async def _send_and_sync(url: str, frames: list[bytes | str], node_id: int | None) -> None:
    """Connect (and authenticate as `node_id` unless None), send `frames`, then a Request as a
    probe: its Reply (the connection lived) or the close (it was ended) comes back."""
    async with open_websocket_url(url, max_message_size=1 << 22) as ws:
        try:
            if node_id is not None:
                await handshake.dial(ws, secret=SECRET, my_id=node_id, incarnation=1, expected_id=1)
            for frame in frames:
                await ws.send_message(frame)
            await ws.send_message(encode(Request(424242, 5000, Ping(7))))
            while True:
                frame = decode(await ws.get_message())
                inner = [decode(f) for f in frame.frames] if isinstance(frame, Batch) else [frame]
                if any(isinstance(r, Reply) and r.id == 424242 for r in inner):
                    return
        except (ConnectionClosed, handshake.AuthFailed, ProtocolViolation, CodecError):
            return


@pytest.mark.integration
async def test_plane_over_websockets_survives_fuzzed_frames(nursery: trio.Nursery) -> None:
    config = dict(cluster_secret=SECRET, max_frame_bytes=64 << 10, max_message_bytes=256 << 10)
    a, b = RpcPlane(RpcConfig(node_id=1, **config)), RpcPlane(RpcConfig(node_id=2, **config))
    for plane in (a, b):
        plane.register(Ping, ping_handler)
        await nursery.start(plane.run)
    url = f"ws://127.0.0.1:{a.port}/"
    b.add_peer(1, url)
    node_ids = itertools.count(100)

    @fuzz_settings(100)
    @given(frames=frame_lists, authenticate=st.integers(0, 4))
    def prop(frames: list[bytes | str], authenticate: int) -> None:
        count("plane-websocket")
        node_id = next(node_ids) if authenticate else None
        with watchdog():
            trio.from_thread.run(_bounded, _send_and_sync, url, frames, node_id)
        assert a.counters.connection_crashes == 0, "a peer crashed a connection task"
        assert a.counters.handler_errors == 0, "garbage reached a handler and made it fail"

    await trio.to_thread.run_sync(prop)
    assert await b.call(1, Ping(5), timeout_s=10) == Pong(5)


async def _bounded(fn, *args) -> None:
    with trio.fail_after(CASE_TIMEOUT_S):
        await fn(*args)
