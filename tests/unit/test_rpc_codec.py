"""server/rpc/codec.py: round trips of every supported field type; garbage gives CodecError."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from raft.messages import ALL_MESSAGE_TYPES
from raft.types import ConfState, Entry, EntryType
from server.rpc import codec
from server.rpc.codec import CodecError, decode, encode, message
from server.rpc.frames import Batch, Chunk, Reply
from server.rpc.raft_wire import register_raft_types


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Point:  # nested, not registered: encoded as its field array
    x: int
    y: float


@message("test.inner")
@dataclass(frozen=True)
class Inner:
    name: str
    blob: bytes


@message("test.outer", version=3)
@dataclass(frozen=True)
class Outer:
    id: int
    flag: bool
    color: Color
    kind: EntryType
    points: tuple[Point, ...]
    pair: tuple[int, str]
    ids: frozenset[int]
    attrs: dict[str, int]
    maybe: Inner | None
    body: Any  # any registered message
    either: Inner | Outer | None = None


register_raft_types()  # Entry, ConfState and every raft message, as the server does


inners = st.builds(Inner, name=st.text(max_size=20), blob=st.binary(max_size=64))
entries = st.builds(Entry, term=st.integers(0, 2**63), index=st.integers(0, 2**63),
                    type=st.sampled_from(EntryType), data=st.binary(max_size=64))
floats = st.floats(allow_nan=False)


def outers(depth: int = 0) -> st.SearchStrategy[Outer]:
    bodies: st.SearchStrategy[Any] = st.one_of(inners, entries)
    if depth < 1:
        bodies = st.one_of(bodies, st.deferred(lambda: outers(depth + 1)))
    return st.builds(
        Outer,
        id=st.integers(-(2**63), 2**64 - 1),
        flag=st.booleans(),
        color=st.sampled_from(Color),
        kind=st.sampled_from(EntryType),
        points=st.lists(st.builds(Point, x=st.integers(), y=floats), max_size=4).map(tuple),
        pair=st.tuples(st.integers(), st.text(max_size=8)),
        ids=st.frozensets(st.integers(0, 1000), max_size=8),
        attrs=st.dictionaries(st.text(max_size=8), st.integers(), max_size=4),
        maybe=st.none() | inners,
        body=bodies,
        either=st.none() | inners,
    )


@given(outers())
def test_round_trip(obj: Outer) -> None:
    assert decode(encode(obj)) == obj


@given(entries)
def test_round_trip_of_a_registered_foreign_type(e: Entry) -> None:
    assert decode(encode(e)) == e


@given(st.frozensets(st.integers(1, 9)), st.frozensets(st.integers(1, 9)))
def test_sets_encode_deterministically(voters, learners) -> None:
    a = ConfState(voters, learners)
    b = ConfState(frozenset(reversed(sorted(voters))), learners)
    assert encode(a) == encode(b)


@given(st.binary(max_size=200))
def test_garbage_bytes_give_codec_error_only(data: bytes) -> None:
    try:
        decode(data)
    except CodecError:
        pass


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers() | floats | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=20,
)


@given(cbor_values)
def test_well_formed_cbor_of_the_wrong_shape_gives_codec_error(value) -> None:
    with pytest.raises(CodecError):
        decode(cbor2.dumps(["test.outer", 3, value]))


@given(st.lists(cbor_values, max_size=4))
def test_wrong_fields_for_inner_give_codec_error(values) -> None:
    data = cbor2.dumps(["test.inner", 1, values])
    try:
        obj = decode(data)
    except CodecError:
        return
    assert isinstance(obj.name, str) and isinstance(obj.blob, bytes)


def test_unknown_tag() -> None:
    with pytest.raises(CodecError, match="unknown message tag 'nope'"):
        decode(cbor2.dumps(["nope", 1, []]))


def test_unknown_version() -> None:
    with pytest.raises(CodecError, match="version 2"):
        decode(cbor2.dumps(["test.inner", 2, ["a", b""]]))


def test_bad_cbor() -> None:
    with pytest.raises(CodecError, match="bad CBOR"):
        decode(b"\xff\xff\x00")


def test_wrong_field_type_names_the_field() -> None:
    with pytest.raises(CodecError, match=r"Inner.blob: expected bytes, got str"):
        decode(cbor2.dumps(["test.inner", 1, ["a", "not bytes"]]))


def test_bool_is_not_an_int() -> None:
    raw = cbor2.loads(encode(Entry(term=1, index=2)))
    raw[2][0] = True
    with pytest.raises(CodecError, match="expected int"):
        decode(cbor2.dumps(raw))


@pytest.mark.parametrize("value", [99, "1", [1], {"a": 1}])
def test_unknown_enum_value(value) -> None:
    # Unhashable values too: the decoder looks the value up in a dict of the members.
    raw = cbor2.loads(encode(Entry(term=1, index=2)))
    raw[2][2] = value
    with pytest.raises(CodecError, match="not a EntryType"):
        decode(cbor2.dumps(raw))


def test_union_member_of_the_wrong_type_refused() -> None:
    obj = Outer(1, True, Color.RED, EntryType.NORMAL, (), (1, "a"), frozenset(), {}, None,
                Inner("a", b""), either=Inner("b", b""))
    raw = cbor2.loads(encode(obj))
    raw[2][10] = cbor2.loads(encode(Entry(1, 1)))
    with pytest.raises(CodecError, match="is not one of"):
        decode(cbor2.dumps(raw))


def test_registering_a_tag_twice_is_a_programmer_error() -> None:
    @dataclass(frozen=True)
    class Other:
        a: int

    with pytest.raises(AssertionError):
        codec.register_type(Other, "test.inner")


# ---- raft messages, as the server registers them ----


@pytest.mark.parametrize("cls", ALL_MESSAGE_TYPES, ids=lambda c: c.__name__)
@given(data=st.data())
def test_raft_messages_round_trip(cls, data) -> None:
    m = data.draw(st.from_type(cls))
    assert decode(encode(m)) == m


@pytest.mark.parametrize("n", [0, 1, 23, 24, 255, 256, 65535, 65536, (1 << 20) - 128])
def test_a_chunk_encoded_around_its_bytes_is_the_same_as_encoded_whole(n: int) -> None:
    """encode_with_bytes (the plane's streamed slices) writes exactly what encode() does."""
    data = bytes(range(256)) * (n // 256) + bytes(n % 256)
    whole = Chunk(7, 1 << 33, 1 << 34, data)
    fast = codec.encode_with_bytes(Chunk(7, 1 << 33, 1 << 34, b""), memoryview(data))
    assert fast == encode(whole) == cbor2.dumps(codec._encode_tagged(whole))
    assert decode(fast) == whole


@pytest.mark.parametrize("n", [codec.SPLICE_BYTES - 1, codec.SPLICE_BYTES, 1 << 20])
def test_a_message_ending_in_long_bytes_encodes_as_cbor2_would(n: int) -> None:
    """encode() joins a long trailing byte string on, however deep it is nested (a chunk's
    bytes inside a reply inside a batch); the result is what cbor2 writes for the whole."""
    data = bytes(range(256)) * (n // 256) + bytes(n % 256)
    for m in (Chunk(1, 2, 3, data), Reply(9, Chunk(1, 2, 3, data)),
              Batch((b"x", data)), Reply(9, Batch((data, b"short")))):
        assert encode(m) == cbor2.dumps(codec._encode_tagged(m))
        assert encode(m) == encode(m)  # encoding does not change what the message holds
        assert decode(encode(m)) == m


@pytest.mark.parametrize("n", [0, 5, codec.SPLICE_BYTES - 1, codec.SPLICE_BYTES, 1 << 20])
def test_trailing_bytes_may_be_a_bytearray_or_memoryview(n: int) -> None:
    """A read answered from the page cache carries its bytes as the bytearray it read into
    (group_reads.read_now): any size encodes exactly as the same bytes would, and decodes
    to bytes. (cbor2 alone would write a memoryview as a list of integers.)"""
    data = bytes(range(256)) * (n // 256) + bytes(n % 256)
    for held in (bytearray(data), memoryview(data), memoryview(bytearray(data))):
        assert encode(Reply(9, Chunk(1, 2, 3, held))) == encode(Reply(9, Chunk(1, 2, 3, data)))
    got = decode(encode(Reply(9, Chunk(1, 2, 3, bytearray(data)))))
    assert got == Reply(9, Chunk(1, 2, 3, data)) and type(got.body.data) is bytes
