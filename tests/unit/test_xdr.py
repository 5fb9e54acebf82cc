"""XDR primitives (RFC 4506): hypothesis round trips, padding, and refusal of bad lengths."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nfs_gateway.xdr import Packer, Unpacker, XdrError, pad_len

u32 = st.integers(0, 2**32 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)


def roundtrip(pack, unpack, value):
    p = Packer()
    pack(p, value)
    data = p.get_bytes()
    assert len(data) % 4 == 0  # §3: everything is a multiple of four bytes
    u = Unpacker(data)
    out = unpack(u)
    u.done()
    return out, data


@given(u32)
def test_uint(v):
    assert roundtrip(Packer.pack_uint, Unpacker.unpack_uint, v)[0] == v


@given(i32)
def test_int(v):
    assert roundtrip(Packer.pack_int, Unpacker.unpack_int, v)[0] == v


@given(u64)
def test_uhyper(v):
    assert roundtrip(Packer.pack_uhyper, Unpacker.unpack_uhyper, v)[0] == v


@given(i64)
def test_hyper(v):
    assert roundtrip(Packer.pack_hyper, Unpacker.unpack_hyper, v)[0] == v


@given(st.booleans())
def test_bool(v):
    assert roundtrip(Packer.pack_bool, Unpacker.unpack_bool, v)[0] is v


@given(st.binary(max_size=300))
def test_opaque_is_length_bytes_padding(data):
    out, enc = roundtrip(Packer.pack_opaque, lambda u: u.unpack_opaque(300), data)
    assert out == data
    assert len(enc) == 4 + len(data) + pad_len(len(data))
    assert enc[4 + len(data) :] == b"\0" * pad_len(len(data))  # §4.10: zero padding


@given(st.binary(max_size=40))
def test_fixed_opaque(data):
    n = len(data)
    out, enc = roundtrip(lambda p, d: p.pack_fopaque(n, d), lambda u: u.unpack_fopaque(n), data)
    assert out == data and len(enc) == n + pad_len(n)


@given(st.binary(min_size=0, max_size=20000))
def test_opaque_ref_gives_the_same_bytes_as_a_copy(data):
    a, b = Packer(), Packer()
    a.pack_uint(7)
    a.pack_opaque_ref(data)
    a.pack_uint(9)
    b.pack_uint(7)
    b.pack_opaque(data)
    b.pack_uint(9)
    assert a.nbytes() == b.nbytes()
    assert b"".join(a.buffers()) == b.get_bytes()


def test_large_opaque_ref_is_not_copied():
    data = bytes(8192)
    p = Packer()
    p.pack_opaque_ref(data)
    assert any(buf is data for buf in p.buffers())


@given(st.lists(u32, max_size=50))
def test_array(items):
    out, _ = roundtrip(
        lambda p, v: p.pack_array(v, p.pack_uint),
        lambda u: u.unpack_array(u.unpack_uint, 50),
        items,
    )
    assert out == items


@given(st.one_of(st.none(), u32))
def test_optional(v):
    out, _ = roundtrip(
        lambda p, x: p.pack_optional(x, p.pack_uint),
        lambda u: u.unpack_optional(u.unpack_uint),
        v,
    )
    assert out == v


@pytest.mark.parametrize(
    "data, unpack",
    [
        (b"\0\0\0", Unpacker.unpack_uint),  # truncated unit
        (b"\0\0\0\x08abcd", lambda u: u.unpack_opaque(100)),  # length past the end
        (b"\0\0\0\x05abcde", lambda u: u.unpack_opaque(100)),  # padding missing
        (b"\0\0\x01\0" + bytes(256), lambda u: u.unpack_opaque(100)),  # over the limit
        (b"\xff\xff\xff\xff", lambda u: u.unpack_array(u.unpack_uint, 2**32)),  # count too big
        (b"\0\0\0\x02", Unpacker.unpack_bool),  # bool is 0 or 1
        (b"\0\0\0\x03", lambda u: u.unpack_enum(frozenset({0, 1}))),
    ],
)
def test_malformed_input_raises_xdrerror(data, unpack):
    with pytest.raises(XdrError):
        unpack(Unpacker(data))


def test_trailing_bytes_are_garbage():
    u = Unpacker(b"\0\0\0\x01\0\0\0\x02")
    u.unpack_uint()
    with pytest.raises(XdrError):
        u.done()
