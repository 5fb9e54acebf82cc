"""XDR, the External Data Representation (RFC 4506).

Rules of this module:
- Pure code: bytes in, values out; values in, buffers out. No I/O.
- Every unit is 4 bytes, big-endian; opaque data is padded with zeros to a multiple of 4 (§3).
- Decoding never trusts a length: every variable-length item is checked against the bytes that
  remain and against a caller-given maximum, and raises XdrError instead of reading past the end.
  The RPC layer turns XdrError into GARBAGE_ARGS.
- Large opaque payloads (READ replies) are not copied: `Packer.pack_opaque_ref` keeps a reference
  to the caller's buffer, and `Packer.buffers()` hands out the pieces for one scatter-gather send.
  `Unpacker.unpack_opaque` returns a memoryview into the record, so WRITE data is not copied either.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")

# Copy payloads shorter than this into the header buffer: a separate buffer costs more than a copy.
_REF_THRESHOLD = 4096


class XdrError(ValueError):
    """The bytes are not a valid encoding of the expected type (RFC 4506)."""


def pad_len(n: int) -> int:
    """Bytes of zero padding after `n` bytes of opaque data."""
    return (4 - n % 4) % 4


class Packer:
    """Encodes values into a list of buffers (header bytes plus referenced payloads)."""

    __slots__ = ("_buf", "_parts")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._parts: list[bytes | bytearray | memoryview] = []

    def pack_uint(self, v: int) -> None:
        self._buf += _U32.pack(v)

    def pack_int(self, v: int) -> None:
        self._buf += _I32.pack(v)

    def pack_uhyper(self, v: int) -> None:
        self._buf += _U64.pack(v)

    def pack_hyper(self, v: int) -> None:
        self._buf += _I64.pack(v)

    def pack_bool(self, v: bool) -> None:
        self._buf += _U32.pack(1 if v else 0)

    pack_enum = pack_int

    def pack_fopaque(self, n: int, data: bytes | memoryview) -> None:
        """Fixed-length opaque: exactly n bytes, padded (§4.9)."""
        assert len(data) == n, (len(data), n)
        self._buf += data
        self._buf += _PAD[n % 4]

    def pack_opaque(self, data: bytes | bytearray | memoryview) -> None:
        """Variable-length opaque or string: a length, the bytes, padding (§4.10, §4.11)."""
        n = len(data)
        self._buf += _U32.pack(n)
        self._buf += data
        self._buf += _PAD[n % 4]

    pack_string = pack_opaque

    def pack_opaque_ref(self, data: bytes | bytearray | memoryview) -> None:
        """Like pack_opaque, but large data is referenced, not copied, until `buffers()`."""
        n = len(data)
        if n < _REF_THRESHOLD:
            self.pack_opaque(data)
            return
        self._buf += _U32.pack(n)
        self._parts.append(self._buf)
        self._parts.append(data)
        self._buf = bytearray(_PAD[n % 4])

    def pack_array(self, items: list[T], pack_item: Callable[[T], None]) -> None:
        """Variable-length array: a count, then each item (§4.13)."""
        self.pack_uint(len(items))
        for item in items:
            pack_item(item)

    def pack_optional(self, item: T | None, pack_item: Callable[[T], None]) -> None:
        """Optional data, `*` in XDR: a bool, then the item if present (§4.19)."""
        if item is None:
            self.pack_bool(False)
        else:
            self.pack_bool(True)
            pack_item(item)

    def buffers(self) -> list[bytes | bytearray | memoryview]:
        """The encoding as buffers to send in order (ends the packer's use)."""
        if self._buf:
            self._parts.append(self._buf)
            self._buf = bytearray()
        return self._parts

    def nbytes(self) -> int:
        return len(self._buf) + sum(len(p) for p in self._parts)

    def get_bytes(self) -> bytes:
        """The encoding as one bytes object (copies; for small messages and tests)."""
        return b"".join(self.buffers())


class Unpacker:
    """Decodes values from one record, never reading past its end."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes | bytearray | memoryview, pos: int = 0) -> None:
        self._data = memoryview(data)
        self._pos = pos

    @property
    def pos(self) -> int:
        return self._pos

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def _take(self, n: int) -> memoryview:
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise XdrError(f"need {n} bytes at offset {self._pos}, have {self.remaining()}")
        view = self._data[self._pos : end]
        self._pos = end
        return view

    def unpack_uint(self) -> int:
        return _U32.unpack(self._take(4))[0]

    def unpack_int(self) -> int:
        return _I32.unpack(self._take(4))[0]

    def unpack_uhyper(self) -> int:
        return _U64.unpack(self._take(8))[0]

    def unpack_hyper(self) -> int:
        return _I64.unpack(self._take(8))[0]

    def unpack_bool(self) -> bool:
        v = self.unpack_uint()
        if v > 1:
            raise XdrError(f"bool must be 0 or 1, got {v}")
        return v == 1

    def unpack_enum(self, allowed: frozenset[int] | None = None) -> int:
        v = self.unpack_int()
        if allowed is not None and v not in allowed:
            raise XdrError(f"enum value {v} not in {sorted(allowed)}")
        return v

    def unpack_fopaque(self, n: int) -> bytes:
        data = bytes(self._take(n))
        self._take(pad_len(n))
        return data

    def unpack_opaque_view(self, max_len: int) -> memoryview:
        """Variable-length opaque as a view into the record (no copy)."""
        n = self.unpack_uint()
        if n > max_len:
            raise XdrError(f"opaque length {n} exceeds limit {max_len}")
        view = self._take(n)
        self._take(pad_len(n))
        return view

    def unpack_opaque(self, max_len: int) -> bytes:
        return bytes(self.unpack_opaque_view(max_len))

    unpack_string = unpack_opaque

    def unpack_array(self, unpack_item: Callable[[], T], max_items: int) -> list[T]:
        n = self.unpack_uint()
        if n > max_items:
            raise XdrError(f"array length {n} exceeds limit {max_items}")
        # Each item takes at least 4 bytes: refuse a count the record cannot hold before looping.
        if n * 4 > self.remaining():
            raise XdrError(f"array of {n} items cannot fit in {self.remaining()} bytes")
        return [unpack_item() for _ in range(n)]

    def unpack_optional(self, unpack_item: Callable[[], T]) -> T | None:
        return unpack_item() if self.unpack_bool() else None

    def done(self) -> None:
        """Assert that the record was consumed exactly (trailing bytes are garbage)."""
        if self.remaining():
            raise XdrError(f"{self.remaining()} unexpected bytes after the last field")
