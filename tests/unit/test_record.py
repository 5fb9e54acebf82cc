"""Record marking (RFC 5531 §11): fragments, chunking, limits, encoding."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nfs_gateway.record import (
    LAST_FRAGMENT,
    RecordDecoder,
    RecordError,
    encode_fragments,
    encode_record,
)

LIMIT = 4096


def feed_in_chunks(decoder: RecordDecoder, data: bytes, cuts: list[int]) -> list[bytes]:
    out: list[bytes] = []
    prev = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        out += [bytes(r) for r in decoder.feed(data[prev:cut])]
        prev = cut
    return out


@given(
    st.lists(st.binary(max_size=600), max_size=8),
    st.integers(1, 700),
    st.lists(st.integers(0, 10_000), max_size=20),
)
def test_any_fragmenting_and_chunking_gives_the_records_back(records, frag, cuts):
    stream = b"".join(encode_fragments(r, frag) for r in records)
    decoder = RecordDecoder(LIMIT)
    assert feed_in_chunks(decoder, stream, cuts) == records
    assert decoder.idle


def test_multi_fragment_record():
    stream = struct.pack(">I", 3) + b"abc" + struct.pack(">I", LAST_FRAGMENT | 2) + b"de"
    decoder = RecordDecoder(LIMIT)
    assert decoder.feed(stream[:5]) == []
    assert not decoder.idle
    assert decoder.feed(stream[5:]) == [bytearray(b"abcde")]


def test_empty_last_fragment_ends_a_record():
    stream = struct.pack(">I", 2) + b"ab" + struct.pack(">I", LAST_FRAGMENT)
    assert RecordDecoder(LIMIT).feed(stream) == [bytearray(b"ab")]


def test_fragment_over_the_limit_is_refused_before_buffering():
    decoder = RecordDecoder(LIMIT)
    with pytest.raises(RecordError):
        decoder.feed(struct.pack(">I", LAST_FRAGMENT | (LIMIT + 1)))


def test_record_over_the_limit_across_fragments_is_refused():
    decoder = RecordDecoder(LIMIT)
    half = LIMIT // 2 + 1
    decoder.feed(struct.pack(">I", half) + bytes(half))
    with pytest.raises(RecordError):
        decoder.feed(struct.pack(">I", LAST_FRAGMENT | half))


def test_record_of_exactly_the_limit_is_accepted():
    stream = encode_fragments(bytes(LIMIT), 1000)
    assert RecordDecoder(LIMIT).feed(stream) == [bytearray(LIMIT)]


def test_records_are_not_reused_by_the_decoder():
    decoder = RecordDecoder(LIMIT)
    (first,) = decoder.feed(encode_fragments(b"1234", 4))
    view = memoryview(first)  # the RPC layer keeps views into records
    decoder.feed(encode_fragments(b"5678", 4))
    assert bytes(view) == b"1234"


def test_encode_record_prepends_one_marker_and_does_not_copy():
    payload = bytes(10000)
    out = encode_record([b"head", payload])
    assert out[0] == struct.pack(">I", LAST_FRAGMENT | 10004)
    assert out[2] is payload
    assert RecordDecoder(20000).feed(b"".join(out)) == [bytearray(b"head" + payload)]


@given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=5))
def test_any_stream_gives_records_or_a_record_error(stream, cuts):
    decoder = RecordDecoder(64)
    try:
        for record in feed_in_chunks(decoder, stream, cuts):
            assert len(record) <= 64
    except RecordError:
        pass  # the caller closes the connection


# Receives of at least 512 bytes: a 1-byte receive loop over 100 KB ran into hypothesis's
# 200 ms deadline on a loaded machine.
@given(st.integers(0, 3), st.lists(st.integers(512, 70_000), min_size=1, max_size=6))
def test_large_records_are_received_directly_into_their_buffer(pad, chunks):
    """A large record is filled through direct_view()/received() after its first bytes came
    through feed(); the bytes after it go through feed() again."""
    big = bytes(range(256)) * 400 + bytes(pad)  # over DIRECT_MIN_BYTES
    stream = encode_fragments(big, len(big)) + encode_fragments(b"next", 4)
    decoder = RecordDecoder(1 << 20)
    out: list[bytes] = [bytes(r) for r in decoder.feed(stream[:100])]
    pos, i = 100, 0
    while pos < len(stream):
        view = decoder.direct_view()
        n = min(chunks[i % len(chunks)], len(stream) - pos)
        i += 1
        if view is None:
            out += [bytes(r) for r in decoder.feed(stream[pos : pos + n])]
        else:
            n = min(n, len(view))
            view[:n] = stream[pos : pos + n]
            out += [bytes(r) for r in decoder.received(n)]
        pos += n
    assert out == [big, b"next"]
    assert decoder.idle
