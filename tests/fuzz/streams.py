"""Byte streams for RPC over TCP (RFC 5531 §11, record marking): records in one or more
fragments (empty ones too), large records that take RecordDecoder's direct path, markers over
the limit, garbage, streams cut short; and two readings of a stream to compare: all at once
(`reference_records`) and as server.py's read loop does it (`read_like_the_server`).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from hypothesis import strategies as st
from wire import records

from nfs_gateway.backend import StableHow
from nfs_gateway.nfs3 import types as t
from nfs_gateway.nfs3.client_codec import CLIENT_CODECS
from nfs_gateway.nfs3.const import NFS_PROGRAM, NFS_V3, Proc
from nfs_gateway.record import LAST_FRAGMENT, MAX_FRAGMENT_LEN, RecordDecoder, RecordError
from nfs_gateway.xdr import Packer


def fragments(record: bytes, sizes: Sequence[int]) -> bytes:
    """`record` as fragments of `sizes` (zero-length ones too), the rest as the last one."""
    out, pos = bytearray(), 0
    for n in sizes:
        if pos + n >= len(record):
            break
        out += struct.pack(">I", n) + record[pos : pos + n]
        pos += n
    rest = record[pos:]
    return bytes(out + struct.pack(">I", LAST_FRAGMENT | len(rest)) + rest)


def big_write(handles: Sequence[bytes], nbytes: int, which: int) -> bytes:
    """A WRITE call of `nbytes` of data: large records take the decoder's direct path."""
    args = t.WriteArgs(handles[which % len(handles)], 0, nbytes, StableHow.UNSTABLE, bytes(nbytes))
    p = Packer()
    CLIENT_CODECS[Proc.WRITE][0](p, args)
    head = struct.pack(">10I", which, 0, 2, NFS_PROGRAM, NFS_V3, Proc.WRITE, 0, 0, 0, 0)
    return head + p.get_bytes()


@st.composite
def stream_items(draw: st.DrawFn, handles: Sequence[bytes], limit: int) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind < 6:  # a record, in one or more fragments
        sizes = draw(st.lists(st.integers(0, 64), max_size=4))
        return fragments(draw(records(handles)), sizes)
    if kind == 6:  # a large record, maybe over the limit
        nbytes = draw(st.integers(32 * 1024, min(limit + 1024, 96 * 1024)))
        record = big_write(handles, nbytes, draw(st.integers(0, 100)))
        return fragments(record, draw(st.lists(st.integers(0, 40_000), max_size=2)))
    if kind == 7:  # a marker over the limit (never followed by that many bytes)
        length = draw(st.integers(limit + 1, MAX_FRAGMENT_LEN))
        last = draw(st.sampled_from((0, LAST_FRAGMENT)))
        return struct.pack(">I", last | length) + draw(st.binary(max_size=16))
    return draw(st.binary(min_size=1, max_size=16))  # garbage in the stream


@st.composite
def streams(draw: st.DrawFn, handles: Sequence[bytes], limit: int) -> tuple[bytes, list[int]]:
    """A byte stream of records and garbage, maybe cut short, and the sizes of the receives
    that a server would read it in."""
    stream = b"".join(draw(st.lists(stream_items(handles, limit), max_size=5)))
    if draw(st.booleans()):  # the client stops mid-stream
        stream = stream[: draw(st.integers(0, len(stream)))]
    reads = draw(st.lists(st.integers(1, 70_000) | st.integers(1, 8), max_size=12))
    return stream, reads


def reference_records(stream: bytes, limit: int) -> tuple[list[bytes], bool]:
    """RFC 5531 §11 read all at once: the whole records, and whether a limit was broken."""
    out: list[bytes] = []
    rec, pos = b"", 0
    while len(stream) - pos >= 4:
        marker = struct.unpack_from(">I", stream, pos)[0]
        length = marker & MAX_FRAGMENT_LEN
        if length > limit or len(rec) + length > limit:
            return out, True
        if pos + 4 + length > len(stream):
            break
        rec += stream[pos + 4 : pos + 4 + length]
        pos += 4 + length
        if marker & LAST_FRAGMENT:
            out.append(rec)
            rec = b""
    return out, False


def read_like_the_server(stream: bytes, reads: list[int], limit: int) -> tuple[list[bytes], bool]:
    """RecordDecoder driven as server.py's read loop drives it: `feed` receives of the given
    sizes, or receives straight into `direct_view()` for large records."""
    dec = RecordDecoder(limit)
    out: list[bytes] = []
    pos, i = 0, 0
    while pos < len(stream):
        n = reads[i % len(reads)] if reads else len(stream)
        i += 1
        piece = stream[pos : pos + n]
        direct = dec.direct_view()
        try:
            if direct is None:
                out += map(bytes, dec.feed(piece))
                pos += len(piece)
            else:
                k = min(len(direct), len(piece))
                direct[:k] = piece[:k]
                out += map(bytes, dec.received(k))
                pos += k
        except RecordError:
            return out, True
        # Memory bound: what the decoder holds (its private buffers) never exceeds the limit.
        held = len(dec._rec) + (len(dec._direct) if dec._direct is not None else 0)
        assert held <= limit, held
    return out, False
