"""The one CBOR codec for node-to-node RPC (STYLE habit 3: one codec per plane).

Rules:
- Every message is a frozen dataclass registered with a tag (a short string, unique in the
  process) and a version. `encode(obj)` gives bytes; `decode(bytes)` gives the object back.
- Wire form of a registered message: the CBOR array `[tag, version, [field values in declaration
  order]]`. Field values are encoded by their *declared* type, so nothing but the top-level tag is
  self-describing and decoding checks every field against its annotation:
    int, bool, float, str, bytes, None      as CBOR primitives (bool is not an int here)
    enum.Enum subclasses                    by value
    tuple[T, ...], tuple[A, B], list[T]     CBOR array
    frozenset[T], set[T]                    CBOR array (sorted when the items sort: determinism)
    dict[K, V]                              CBOR map
    T | None                                null or T
    a dataclass                             the array of its fields (need not be registered)
    Any / object / a union of dataclasses   a nested registered message `[tag, version, fields]`
- A changed field list needs a new version; an unknown tag or version, bad CBOR, a wrong field
  count or a wrong field type raise CodecError. Nothing else escapes decode().
- Types from other layers (raft messages) are registered by the server with `register_type`;
  the raft package never imports this module.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
import types
import typing
from collections.abc import Callable
from typing import Any

import cbor2

Encoder = Callable[[Any], Any]
Decoder = Callable[[Any], Any]


class CodecError(Exception):
    """Bytes that are not a valid message: the peer sent garbage (or a newer version)."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Compiled:
    encoders: tuple[Encoder, ...]
    decoders: tuple[Decoder, ...]
    values: Callable[[Any], tuple[Any, ...]]  # an object's field values, in order
    plain: bool  # every encoder is the identity: the values are the encoding


@dataclasses.dataclass(frozen=True, slots=True)
class _Registered:
    cls: type
    tag: str
    version: int


_by_tag: dict[str, _Registered] = {}
_by_cls: dict[type, _Registered] = {}
_field_codecs: dict[type, _Compiled] = {}  # compiled on first use, so order of definition is free


def register_type(cls: type, tag: str, version: int = 1) -> type:
    """Register a frozen dataclass under `tag`; idempotent for the same (cls, tag, version)."""
    assert dataclasses.is_dataclass(cls), f"{cls!r} is not a dataclass"
    assert cls.__dataclass_params__.frozen, f"{cls.__name__} must be frozen"  # type: ignore[attr-defined]
    entry = _Registered(cls, tag, version)
    known = _by_tag.get(tag)
    assert known is None or known == entry, f"tag {tag!r} already names {known}"
    assert _by_cls.get(cls, entry) == entry, f"{cls.__name__} already registered"
    _by_tag[tag] = entry
    _by_cls[cls] = entry
    return cls


def message(tag: str, version: int = 1) -> Callable[[type], type]:
    """Class decorator: `@message("rpc.ping")` on a frozen dataclass."""
    return lambda cls: register_type(cls, tag, version)


def is_registered(cls: type) -> bool:
    return cls in _by_cls


SPLICE_BYTES = 32 << 10  # a trailing byte string this long is joined on, not given to cbor2


def encode(obj: Any) -> bytes:
    """Encode a registered message. An unregistered or ill-typed object is a programmer error.

    Chunk data rides in the last field of its message (ReadChunkReply.data inside a Reply, a
    write's bytes), as bytes, bytearray or memoryview: when the encoding ends with a long
    one, it is joined on after the rest is encoded, because cbor2 copies a large byte string
    about ten times slower than one join does (0.75 against 0.04 ms per MiB). The bytes are
    the same either way."""
    raw = _encode_tagged(obj)
    holder = raw
    while isinstance(holder[-1], list) and holder[-1]:  # the encoding's last item, nested
        holder = holder[-1]
    data = holder[-1]
    if not isinstance(data, bytes | bytearray | memoryview):
        return cbor2.dumps(raw)
    if len(data) < SPLICE_BYTES:
        if not isinstance(data, bytes):  # cbor2 would write a memoryview as a list of ints
            holder[-1] = bytes(data)
        return cbor2.dumps(raw)
    holder[-1] = b""  # raw is this call's own list tree: nothing outside sees the change
    return _splice(cbor2.dumps(raw), data)


def encode_with_bytes(obj: Any, data: bytes | memoryview) -> bytes:
    """encode(obj) where obj's last field is b"" and `data` goes there instead, joined on as
    encode() joins a long one: for slices of any size, memoryviews too (the plane's streamed
    Chunk frames, connection.py). The bytes are exactly encode() of the object holding `data`."""
    return _splice(encode(obj), data)


def _splice(head: bytes, data: bytes | memoryview) -> bytes:
    assert head.endswith(b"\x40"), "the last item must be b\"\" (CBOR 0x40)"
    return b"".join((head[:-1], _bytes_head(len(data)), data))


def _bytes_head(n: int) -> bytes:
    """The CBOR head of a byte string of n bytes (major type 2, RFC 8949 §3.1)."""
    if n < 24:
        return bytes((0x40 | n,))
    for marker, width in ((0x58, 1), (0x59, 2), (0x5A, 4), (0x5B, 8)):
        if n < 1 << (8 * width):
            return bytes((marker,)) + n.to_bytes(width, "big")
    raise ValueError(f"byte string of {n} bytes")


def decode(data: bytes) -> Any:
    """Decode bytes from a peer; anything malformed raises CodecError."""
    try:
        raw = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise CodecError(f"bad CBOR: {exc}") from exc
    try:
        return _decode_tagged(raw)
    except (TypeError, ValueError) as exc:  # e.g. an unhashable item where a set was declared
        raise CodecError(f"malformed message: {exc}") from exc
    except RecursionError as exc:  # a message that contains itself (CBOR tags 28/29: a cycle)
        raise CodecError("malformed message: nested without end") from exc


# ---- tagged messages ----


def _encode_tagged(obj: Any) -> list[Any]:
    entry = _by_cls.get(type(obj))
    assert entry is not None, f"{type(obj).__name__} is not a registered message"
    return [entry.tag, entry.version, _encode_fields(entry.cls, obj)]


def _encode_fields(cls: type, obj: Any) -> list[Any]:
    # Per field of every message (a Raft append carries dozens of entries): attrgetter reads
    # them all at C speed, and fields of plain types need no encoder call at all.
    c = _codecs_for(cls)
    if c.plain:
        return list(c.values(obj))
    return [enc(v) for enc, v in zip(c.encoders, c.values(obj), strict=False)]  # same length


def _decode_tagged(raw: Any) -> Any:
    if not (isinstance(raw, list) and len(raw) == 3 and isinstance(raw[0], str)):
        raise CodecError(f"not a tagged message: {_short(raw)}")
    tag, version, values = raw
    entry = _by_tag.get(tag)
    if entry is None:
        raise CodecError(f"unknown message tag {tag!r}")
    if version != entry.version:
        raise CodecError(f"{tag!r} version {version!r}; this node knows {entry.version}")
    return _decode_fields(entry.cls, values)


def _decode_fields(cls: type, values: Any) -> Any:
    decoders = _codecs_for(cls).decoders
    if not isinstance(values, list) or len(values) != len(decoders):
        raise CodecError(f"{cls.__name__}: expected {len(decoders)} fields, got {_short(values)}")
    args = [dec(v) for dec, v in zip(decoders, values, strict=False)]  # lengths checked above
    try:
        return cls(*args)
    except (TypeError, ValueError) as exc:  # a __post_init__ check refused the values
        raise CodecError(f"{cls.__name__}: {exc}") from exc


def _codecs_for(cls: type) -> _Compiled:
    compiled = _field_codecs.get(cls)
    if compiled is None:
        hints = typing.get_type_hints(cls)
        names = tuple(f.name for f in dataclasses.fields(cls))
        encoders = tuple(_encoder(hints[name]) for name in names)
        compiled = _Compiled(
            encoders,
            tuple(_decoder(hints[name], f"{cls.__name__}.{name}") for name in names),
            _field_values(names), all(e is _identity for e in encoders))
        _field_codecs[cls] = compiled
    return compiled


# ---- per-type encoders and decoders, built once per field ----

_PRIMITIVES: dict[Any, tuple[type, ...]] = {
    int: (int,), bool: (bool,), str: (str,), bytes: (bytes,), float: (float, int),
    type(None): (type(None),),
}


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _encoder(tp: Any) -> Encoder:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in _PRIMITIVES:
        return _identity
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return lambda v: v.value
    if _is_union(tp):
        members = [a for a in args if a is not type(None)]
        inner = _encoder(members[0]) if len(members) == 1 else _encode_tagged
        return lambda v: None if v is None else inner(v)
    if origin in (tuple, list):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            encs = [_encoder(a) for a in args]
            return lambda v: [e(x) for e, x in zip(encs, v, strict=True)]
        item = _encoder(args[0])
        return lambda v: [item(x) for x in v]
    if origin in (frozenset, set):
        item = _encoder(args[0])
        return lambda v: _sorted_if_possible([item(x) for x in v])
    if origin is dict:
        k_enc, v_enc = _encoder(args[0]), _encoder(args[1])
        return lambda v: {k_enc(k): v_enc(x) for k, x in v.items()}
    if _is_dataclass_type(tp):
        return lambda v: _encode_fields(tp, v)
    if tp in (Any, object):
        return _encode_tagged
    raise TypeError(f"the RPC codec cannot encode fields of type {tp!r}")


def _decoder(tp: Any, where: str) -> Decoder:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in _PRIMITIVES:
        return _check_primitive(_PRIMITIVES[tp], tp, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _decode_enum(tp, where)
    if _is_union(tp):
        members = [a for a in args if a is not type(None)]
        inner = _decoder(members[0], where) if len(members) == 1 else _decode_tagged_in(members)
        if len(members) == len(args):  # None is not allowed
            return inner
        return lambda v: None if v is None else inner(v)
    if origin in (tuple, list):
        return _decode_sequence(origin, args, where)
    if origin in (frozenset, set):
        item = _decoder(args[0], where)
        return lambda v: origin(item(x) for x in _expect(v, list, where))
    if origin is dict:
        k_dec, v_dec = _decoder(args[0], where), _decoder(args[1], where)
        return lambda v: {k_dec(k): v_dec(x) for k, x in _expect(v, dict, where).items()}
    if _is_dataclass_type(tp):
        return lambda v: _decode_fields(tp, v)
    if tp in (Any, object):
        return _decode_tagged
    raise TypeError(f"the RPC codec cannot decode fields of type {tp!r}")


def _decode_sequence(origin: Any, args: tuple[Any, ...], where: str) -> Decoder:
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        decs = [_decoder(a, where) for a in args]

        def fixed(v: Any) -> tuple[Any, ...]:
            if not isinstance(v, list) or len(v) != len(decs):
                raise CodecError(f"{where}: expected {len(decs)} items, got {_short(v)}")
            return tuple(d(x) for d, x in zip(decs, v, strict=True))

        return fixed
    item = _decoder(args[0], where)
    return lambda v: origin(item(x) for x in _expect(v, list, where))


def _decode_tagged_in(members: list[Any]) -> Decoder:
    allowed = tuple(members)

    def dec(v: Any) -> Any:
        obj = _decode_tagged(v)
        if not isinstance(obj, allowed):
            raise CodecError(f"{type(obj).__name__} is not one of {allowed}")
        return obj

    return dec


def _field_values(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    if not names:
        return lambda obj: ()
    if len(names) == 1:
        name = names[0]
        return lambda obj: (getattr(obj, name),)
    return operator.attrgetter(*names)


def _decode_enum(tp: type[enum.Enum], where: str) -> Decoder:
    members = {m.value: m for m in tp}  # a dict lookup: tp(v) costs several times more

    def dec(v: Any) -> Any:
        try:
            return members[v]
        except (KeyError, TypeError) as exc:  # TypeError: an unhashable value
            raise CodecError(f"{where}: {v!r} is not a {tp.__name__}") from exc

    return dec


def _check_primitive(allowed: tuple[type, ...], tp: Any, where: str) -> Decoder:
    def dec(v: Any) -> Any:
        if type(v) not in allowed:
            raise CodecError(f"{where}: expected {tp.__name__}, got {type(v).__name__}")
        return float(v) if tp is float else v

    return dec


def _identity(v: Any) -> Any:
    return v


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _expect(v: Any, typ: type, where: str) -> Any:
    if not isinstance(v, typ):
        raise CodecError(f"{where}: expected {typ.__name__}, got {_short(v)}")
    return v


def _sorted_if_possible(items: list[Any]) -> list[Any]:
    try:
        return sorted(items)
    except TypeError:  # mixed or unorderable items: keep iteration order
        return items


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."
