"""Record marking for RPC over TCP (RFC 5531 §11), sans-I/O.

A record is one or more fragments; each fragment starts with a 4-byte big-endian marker whose
high bit says "last fragment" and whose low 31 bits give the fragment's length.

Rules:
- `RecordDecoder.feed(bytes)` returns the records completed by those bytes. It never buffers more
  than the record being assembled plus up to 3 bytes of a marker: fragment payload is copied once,
  straight into the record's buffer, whatever the chunking of the stream.
- A fragment, or a record, longer than `max_record_bytes` is a protocol error (RecordError): the
  caller closes the connection. Nothing is buffered beyond the limit.
- Records are handed out as bytearrays that the decoder no longer touches, so the RPC layer may
  keep memoryviews into them (WRITE data is not copied again).
- A large last fragment that starts a record (a WRITE's payload) gets its final buffer at once;
  `direct_view()` hands out its unfilled rest so the socket receives straight into it and
  `received(n)` accounts for the bytes: the kernel's copy is then the only one.
- `encode_record` emits one fragment: the marker, then the caller's buffers unchanged, ready for a
  single scatter-gather send.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

LAST_FRAGMENT = 0x8000_0000
MAX_FRAGMENT_LEN = 0x7FFF_FFFF
# Fragments at least this long are received into their own buffer (direct_view), not copied.
DIRECT_MIN_BYTES = 32 * 1024
_U32 = struct.Struct(">I")

Buffer = bytes | bytearray | memoryview


class RecordError(Exception):
    """The byte stream violates record marking or our limits: close the connection."""


class RecordDecoder:
    __slots__ = (
        "_direct",
        "_fill",
        "_hdr",
        "_in_fragment",
        "_last",
        "_need",
        "_rec",
        "max_record_bytes",
    )

    def __init__(self, max_record_bytes: int) -> None:
        assert 0 < max_record_bytes <= MAX_FRAGMENT_LEN
        self.max_record_bytes = max_record_bytes
        self._hdr = bytearray()  # a marker split across reads
        self._rec = bytearray()  # the record being assembled
        self._need = 0  # bytes still to come in the current fragment
        self._last = False
        self._in_fragment = False
        self._direct: bytearray | None = None  # a whole record's buffer, being filled
        self._fill = 0  # bytes of _direct filled so far

    @property
    def idle(self) -> bool:
        """True between records: nothing partial is buffered."""
        return not (self._hdr or self._rec or self._in_fragment)

    def feed(self, data: Buffer) -> list[bytearray]:
        """Consume stream bytes; return the records they complete, in order."""
        mv = memoryview(data)
        n = len(mv)
        pos = 0
        out: list[bytearray] = []
        while pos < n:
            if not (self._in_fragment or self._hdr or self._rec) and n - pos >= 4:
                # The common case, a whole small record in one piece: one slice, one copy.
                marker = _U32.unpack_from(mv, pos)[0]
                length = marker & MAX_FRAGMENT_LEN
                end = pos + 4 + length
                if (
                    marker & LAST_FRAGMENT
                    and end <= n
                    and length < DIRECT_MIN_BYTES
                    and length <= self.max_record_bytes
                ):
                    out.append(bytearray(mv[pos + 4 : end]))
                    pos = end
                    continue
            if not self._in_fragment:
                take = min(4 - len(self._hdr), n - pos)
                self._hdr += mv[pos : pos + take]
                pos += take
                if len(self._hdr) < 4:
                    break
                self._start_fragment(_U32.unpack(self._hdr)[0])
                self._hdr.clear()
            take = min(self._need, n - pos)
            if self._direct is not None:
                self._direct[self._fill : self._fill + take] = mv[pos : pos + take]
                self._fill += take
            else:
                self._rec += mv[pos : pos + take]
            pos += take
            self._need -= take
            if self._need == 0:
                self._end_fragment(out)
        return out

    def _start_fragment(self, marker: int) -> None:
        length = marker & MAX_FRAGMENT_LEN
        if length > self.max_record_bytes or len(self._rec) + length > self.max_record_bytes:
            raise RecordError(
                f"fragment of {length} bytes (record so far {len(self._rec)}) exceeds the "
                f"limit of {self.max_record_bytes}"
            )
        self._need = length
        self._last = bool(marker & LAST_FRAGMENT)
        self._in_fragment = True
        if self._last and not self._rec and length >= DIRECT_MIN_BYTES:
            self._direct = bytearray(length)
            self._fill = 0

    def _end_fragment(self, out: list[bytearray]) -> None:
        self._in_fragment = False
        if self._direct is not None:
            out.append(self._direct)
            self._direct = None
        elif self._last:
            out.append(self._rec)
            self._rec = bytearray()

    def direct_view(self) -> memoryview | None:
        """The unfilled rest of a large record, to receive into; None: use `feed`."""
        if self._direct is None:
            return None
        return memoryview(self._direct)[self._fill :]

    def received(self, n: int) -> list[bytearray]:
        """Account for `n` bytes received into `direct_view()`; the record if it is complete."""
        assert self._direct is not None and 0 < n <= self._need, (n, self._need)
        self._fill += n
        self._need -= n
        out: list[bytearray] = []
        if self._need == 0:
            self._end_fragment(out)
        return out


def encode_record(buffers: Sequence[Buffer]) -> list[Buffer]:
    """One last fragment holding `buffers`: the marker followed by the buffers, not copied."""
    total = sum(len(b) for b in buffers)
    assert total <= MAX_FRAGMENT_LEN, total
    return [_U32.pack(LAST_FRAGMENT | total), *buffers]


def encode_fragments(record: bytes, fragment_bytes: int) -> bytes:
    """`record` split into fragments of at most `fragment_bytes` (clients and tests)."""
    assert fragment_bytes > 0
    chunks = [record[i : i + fragment_bytes] for i in range(0, len(record), fragment_bytes)]
    chunks = chunks or [b""]
    out = bytearray()
    for i, chunk in enumerate(chunks):
        last = LAST_FRAGMENT if i == len(chunks) - 1 else 0
        out += _U32.pack(last | len(chunk)) + chunk
    return bytes(out)
