"""The one versioned CBOR codec of metadata records and stored values (records.py).

Rules:
- Wire form: CBOR array [VERSION, tag, [field, ...]] with fields in dataclass order. Nested records
  (Multi) nest the same form. Unknown version or tag, or fields that do not fit, raise a typed
  RecordError; nothing is ever guessed.
- Tags are part of the on-disk format: never renumber, only add. A type may gain fields only at
  its end and only with defaults; an older encoding (fewer fields) decodes with those defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable
from typing import Any

import cbor2

from nfs_gateway.backend import FileType
from server.fs.records import (
    AdjustLinks,
    ChunkDelete,
    ChunkTrim,
    ChunkWrite,
    CookieEntry,
    CreateInode,
    Dirent,
    ExpectChunk,
    ExpectInode,
    Inode,
    KeyClaim,
    KeyGone,
    KeyHold,
    KeyLive,
    KeyRelease,
    KeyUnclaim,
    LinkDirent,
    MaterializeChunk,
    Multi,
    SetAttr,
    SetClean,
    SetListed,
    SetName,
    SetOrigin,
    SetParent,
    UnInline,
    UnlinkDirent,
    Unpin,
    WriteInline,
    WriteMeta,
)

VERSION = 1


class RecordError(Exception):
    """Bytes that do not decode to a record of a known version and type."""


class UnknownVersion(RecordError):
    pass


class UnknownType(RecordError):
    pass


class CorruptRecord(RecordError):
    pass


# Tags are part of the on-disk format: never renumber, only add.
_TAGS: dict[type, int] = {
    Inode: 1,
    Dirent: 2,
    CookieEntry: 3,
    CreateInode: 16,
    LinkDirent: 17,
    UnlinkDirent: 18,
    AdjustLinks: 19,
    SetParent: 20,
    SetAttr: 21,
    WriteMeta: 22,
    Multi: 23,
    WriteInline: 24,
    UnInline: 25,
    ChunkWrite: 26,
    ChunkTrim: 27,
    ChunkDelete: 28,
    ExpectInode: 29,
    SetOrigin: 30,
    SetListed: 31,
    MaterializeChunk: 32,
    ExpectChunk: 33,
    SetName: 34,
    SetClean: 35,
    KeyHold: 36,
    KeyClaim: 37,
    KeyLive: 38,
    KeyRelease: 39,
    KeyGone: 40,
    Unpin: 41,
    KeyUnclaim: 42,
}
_BY_TAG = {tag: cls for cls, tag in _TAGS.items()}
_DEFAULTS = {cls: tuple(f.default for f in dataclasses.fields(cls)) for cls in _TAGS}
# Types that gained fields after databases existed: how many leading fields are always written.
_ALWAYS_ENCODED = {UnlinkDirent: 3, UnInline: 1, Inode: 18, ExpectInode: 6}
_FIELDS = {cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in _TAGS}
_FTYPE_AT = {cls: names.index("ftype") for cls, names in _FIELDS.items() if "ftype" in names}


def _reader(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """All fields in one C call: attrgetter of several names gives a tuple (of one, the value)."""
    if len(names) > 1:
        return operator.attrgetter(*names)
    return lambda obj: tuple(getattr(obj, name) for name in names)


_VALUES = {cls: _reader(names) for cls, names in _FIELDS.items()}
# How many leading fields an encoding must carry: those without defaults.
_REQUIRED = {
    cls: sum(
        1
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    for cls in _TAGS
}


def _to_wire(obj: Any) -> list[Any]:
    cls = type(obj)
    tag = _TAGS.get(cls)
    assert tag is not None, f"not an on-disk record: {cls.__name__}"
    if cls is Multi:
        return [VERSION, tag, [[_to_wire(r) for r in obj.records]]]
    # Hot path (every metadata change encodes a few values): plain getattr, except the enum
    # field, which goes out as its int. Tuples (rdev) encode as CBOR arrays by themselves.
    values = list(_VALUES[cls](obj))
    i = _FTYPE_AT.get(cls)
    if i is not None:
        values[i] = int(values[i])
    # Fields added by the cluster are left out while at their defaults (they decode as the
    # defaults), so records that do not use them keep their earlier encoding.
    n = len(values)
    keep = _ALWAYS_ENCODED.get(cls)
    if keep is not None:
        defaults = _DEFAULTS[cls]
        while n > keep and values[n - 1] == defaults[n - 1]:
            n -= 1
    return [VERSION, tag, values if n == len(values) else values[:n]]


def encode(obj: Any) -> bytes:
    """The on-disk bytes of a record or stored value."""
    return cbor2.dumps(_to_wire(obj))


@functools.lru_cache(maxsize=16384)
def decode_value(data: bytes) -> Any:
    """decode() for small stored values (Inode, Dirent, CookieEntry) read again and again:
    they are immutable, so equal bytes can share one decoded object."""
    return decode(data)


def decode(data: bytes) -> Any:
    try:
        wire = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError) as e:
        raise CorruptRecord(f"not CBOR: {e}") from e
    return _from_wire(wire)


def _from_wire(wire: Any) -> Any:
    if not isinstance(wire, list) or len(wire) != 3:
        raise CorruptRecord("expected [version, tag, fields]")
    version, tag, values = wire
    if version != VERSION:
        raise UnknownVersion(f"record version {version!r}, this build reads {VERSION}")
    cls = _BY_TAG.get(tag) if isinstance(tag, int) else None
    if cls is None:
        raise UnknownType(f"record tag {tag!r}")
    names = _FIELDS[cls]
    if not isinstance(values, list) or not _REQUIRED[cls] <= len(values) <= len(names):
        raise CorruptRecord(f"{cls.__name__}: expected {len(names)} fields")
    try:  # the hot path: each field through its class's compiled check
        args = [convert(v) for convert, v in zip(_CONVERTERS[cls], values, strict=False)]
    except _Bad:  # the slow path says which field is wrong
        args = [_field(cls, name, v) for name, v in zip(names, values, strict=False)]
    try:
        return cls(*args)
    except (TypeError, ValueError) as e:
        raise CorruptRecord(f"{cls.__name__}: {e}") from e


def _field(cls: type, name: str, v: Any) -> Any:
    if cls is Multi and name == "records":
        if not isinstance(v, list):
            raise CorruptRecord("Multi.records: expected a list")
        return tuple(_from_wire(r) for r in v)
    if name == "ftype":
        try:
            return FileType(v)
        except ValueError as e:
            raise CorruptRecord(f"{cls.__name__}.ftype: {v!r}") from e
    if name == "rdev":
        if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) for x in v)):
            raise CorruptRecord(f"{cls.__name__}.rdev: {v!r}")
        return (v[0], v[1])
    _check_scalar(cls, name, v)
    return v


_BYTES_FIELDS = {"name", "target", "verf", "data", "okey", "etag", "pname", "key"}
_BOOL_FIELDS = {"clear_suid", "inline", "to_chunk", "empty", "cdirty", "delete", "has_okey",
                "has_etag"}
_OPTIONAL = {"mode", "uid", "gid", "size", "atime_ns", "mtime_ns"}


def _check_scalar(cls: type, name: str, v: Any) -> None:
    if name in _BYTES_FIELDS:
        ok = isinstance(v, bytes)
    elif name in _BOOL_FIELDS:
        ok = isinstance(v, bool)
    elif cls is SetAttr and name in _OPTIONAL:
        ok = v is None or (isinstance(v, int) and not isinstance(v, bool))
    else:
        ok = isinstance(v, int) and not isinstance(v, bool)
    if not ok:
        raise CorruptRecord(f"{cls.__name__}.{name}: unexpected {type(v).__name__}")


# -- compiled field checks: what _field decides, per field of each class, decided once ---------
# (decoding runs on every apply and read; the name tests of _field cost most of an Inode's
# decode: measured here 29 us an Inode before, 13 us after)


class _Bad(Exception):
    """A field failed its fast check; _field then names it in a CorruptRecord."""


def _int(v: Any) -> Any:
    if type(v) is not int:
        raise _Bad
    return v


def _optional_int(v: Any) -> Any:
    if v is not None and type(v) is not int:
        raise _Bad
    return v


def _bytes(v: Any) -> Any:
    if type(v) is not bytes:
        raise _Bad
    return v


def _bool(v: Any) -> Any:
    if type(v) is not bool:
        raise _Bad
    return v


_FILE_TYPES = {int(t): t for t in FileType}


def _ftype(v: Any) -> Any:
    t = _FILE_TYPES.get(v) if type(v) is int else None
    if t is None:
        raise _Bad
    return t


def _rdev(v: Any) -> Any:
    if not (type(v) is list and len(v) == 2 and type(v[0]) is int and type(v[1]) is int):
        raise _Bad
    return (v[0], v[1])


def _records(v: Any) -> Any:
    if type(v) is not list:
        raise _Bad
    return tuple(_from_wire(r) for r in v)


def _converter(cls: type, name: str) -> Callable[[Any], Any]:
    if cls is Multi and name == "records":
        return _records
    if name == "ftype":
        return _ftype
    if name == "rdev":
        return _rdev
    if name in _BYTES_FIELDS:
        return _bytes
    if name in _BOOL_FIELDS:
        return _bool
    if cls is SetAttr and name in _OPTIONAL:
        return _optional_int
    return _int


_CONVERTERS = {cls: tuple(_converter(cls, name) for name in names)
               for cls, names in _FIELDS.items()}
