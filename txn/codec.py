"""The CBOR form of txn records (for the Raft log) and messages (for a transport).

Rules:
- Wire form: CBOR array [VERSION, tag, [field, ...]] with fields in dataclass order; tuples are
  arrays. Field types are checked on decode against the annotations; anything that does not fit
  raises TxnCodecError, nothing is guessed.
- Tags are part of the on-disk format: never renumber, only add.
- The server may instead register the message classes with its RPC codec; this module exists so
  that the txn layer needs nothing outside txn/ to persist its records.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any

import cbor2

from txn.messages import (
    DecisionNotice,
    FinishAck,
    OutcomeAnswer,
    OutcomeQuery,
    PrepareRequest,
    PrepareVote,
)
from txn.records import Outcome, TxnDecision, TxnFinish, TxnForget, TxnLocal, TxnPrepare

VERSION = 1

_TAGS: dict[type, int] = {
    TxnLocal: 1,
    TxnPrepare: 2,
    TxnDecision: 3,
    TxnFinish: 4,
    TxnForget: 5,
    Outcome: 6,
    PrepareRequest: 20,
    PrepareVote: 21,
    DecisionNotice: 22,
    FinishAck: 23,
    OutcomeQuery: 24,
    OutcomeAnswer: 25,
}
_BY_TAG = {tag: cls for cls, tag in _TAGS.items()}
_INTS = tuple[int, ...]


class TxnCodecError(Exception):
    """Bytes that are not a txn record or message of a known version."""


def to_cbor(obj: Any) -> bytes:
    tag = _TAGS.get(type(obj))
    assert tag is not None, f"{type(obj).__name__} is not a txn record or message"
    fields = [_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)]
    return cbor2.dumps([VERSION, tag, fields])


def from_cbor(data: bytes) -> Any:
    try:
        raw = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as e:
        raise TxnCodecError(f"bad CBOR: {e}") from e
    if not (isinstance(raw, list) and len(raw) == 3):
        raise TxnCodecError("not a [version, tag, fields] array")
    version, tag, values = raw
    if version != VERSION:
        raise TxnCodecError(f"unknown version {version!r}")
    cls = _BY_TAG.get(tag) if isinstance(tag, int) else None
    if cls is None:
        raise TxnCodecError(f"unknown tag {tag!r}")
    return _build(cls, values)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@functools.cache
def _schema(cls: type) -> tuple[tuple[str, Any], ...]:
    """(field name, type) in order; typing.get_type_hints is far too slow per decode."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls))


def _build(cls: type, values: Any) -> Any:
    schema = _schema(cls)
    if not isinstance(values, list) or len(values) != len(schema):
        raise TxnCodecError(f"{cls.__name__}: expected {len(schema)} fields")
    args = [_field(tp, v, cls, name) for (name, tp), v in zip(schema, values, strict=True)]
    return cls(*args)


def _field(tp: Any, value: Any, cls: type, name: str) -> Any:
    if tp == _INTS:
        if isinstance(value, list) and all(_is_int(x) for x in value):
            return tuple(value)
    elif tp is int:
        if _is_int(value):
            return value
    elif isinstance(value, tp):
        return value
    raise TxnCodecError(f"{cls.__name__}.{name}: {type(value).__name__} does not fit {tp}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
