"""Inputs for the node RPC plane's decoder (server/rpc/codec.py): CBOR values of every kind, and
well-typed wire forms of every registered message, built from its type hints as the codec
reads them.

Rules:
- `cbor_values` covers what cbor2 can decode: integers of any size, floats, text, bytes,
  arrays, maps, simple values and semantic tags, the value-sharing tags 28/29 (which make
  cycles) included, and message-shaped arrays `[tag, version, fields]` with known tags.
- `wire_form(cls)` draws `[tag, version, [fields]]` whose fields have the declared types (the
  checks of a message's __post_init__ may still refuse them): it reaches past the codec's type
  checks into each message. Nested `Any` fields hold a small registered message.
- The registry is the one of a running node: importing this module registers every message
  type the node knows (raft, cluster, transactions, the plane's frames).
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any

import cbor2
from hypothesis import strategies as st

import server.cluster.bucket_admin
import server.cluster.drain
import server.cluster.group
import server.cluster.membership
import server.cluster.nodelist
import server.cluster.protocol
import server.cluster.ringchange
import server.cluster.status
import server.raft_kv
import server.rpc.frames  # noqa: F401  (the imports above and this one register messages)
from server.rpc import codec
from server.rpc.raft_wire import register_raft_types

register_raft_types()
REGISTERED: dict[str, tuple[type, int]] = {
    tag: (entry.cls, entry.version) for tag, entry in sorted(codec._by_tag.items())
}
_TAGS = tuple(REGISTERED)
# Messages that nest other messages (a field of type Any): where a cycle can recurse.
_NESTING = tuple(
    tag for tag, (cls, _v) in REGISTERED.items() if Any in typing.get_type_hints(cls).values()
)
# Semantic tags cbor2 decodes (RFC 8949 §3.4 and the IANA registry), and a few it does not.
SEMANTIC_TAGS = (
    0,
    1,
    2,
    3,
    4,
    5,
    21,
    22,
    23,
    24,
    25,
    28,
    29,
    30,
    32,
    33,
    34,
    35,
    36,
    37,
    100,
    256,
    258,
    260,
    261,
    1004,
    55799,
    0xFFFF,
    2**32,
)

ints = (
    st.sampled_from(
        (0, 1, -1, 23, 24, 255, 256, 2**31, 2**32, 2**63, 2**64, -(2**64) - 1, 2**70, 10**400)
    )
    | st.integers()
)
_leaves = st.one_of(
    ints,
    st.floats(allow_nan=True),
    st.text(max_size=16),
    st.binary(max_size=32),
    st.sampled_from((None, True, False, cbor2.undefined, cbor2.CBORSimpleValue(99))),
    st.sampled_from(_TAGS),
)


def _extend(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.one_of(ints, st.text(max_size=8), st.binary(max_size=8), st.sampled_from(_TAGS))
    return st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(keys, inner, max_size=3),
        st.builds(cbor2.CBORTag, st.sampled_from(SEMANTIC_TAGS), inner),
        st.builds(cbor2.CBORTag, st.just(29), st.integers(0, 3)),  # a shared reference
        st.tuples(
            st.sampled_from(_TAGS), st.sampled_from((0, 1, 2, 3)), st.lists(inner, max_size=4)
        ).map(list),
        # A shareable message holding a reference to itself: a cycle (tags 28/29).
        st.builds(
            _cycle,
            st.sampled_from(_NESTING) | st.sampled_from(_TAGS),
            st.lists(inner, max_size=3),
            st.integers(0, 3),
        ),
    )


def _cycle(tag: str, fields: list[Any], at: int) -> cbor2.CBORTag:
    """`[tag, version, fields]`, shareable, with a reference to itself among its fields."""
    fields = list(fields)
    fields.insert(min(at, len(fields)), cbor2.CBORTag(29, 0))
    return cbor2.CBORTag(28, [tag, REGISTERED[tag][1], fields])


cbor_values = st.recursive(_leaves, _extend, max_leaves=12)


def dumps(value: Any) -> bytes | None:
    """The CBOR encoding, or None for the few values cbor2 cannot encode."""
    try:
        return cbor2.dumps(value)
    except (cbor2.CBOREncodeError, ValueError, TypeError, OverflowError):
        return None


# --- well-typed wire forms -------------------------------------------------------------------

_LEAF_MESSAGES = ("rpc.proof", "rpc.welcome", "raft.Heartbeat")


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _wire(tp: Any, depth: int) -> st.SearchStrategy[Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return ints
    simple = {
        float: st.floats(),
        str: st.text(max_size=24),
        bytes: st.binary(max_size=48),
        type(None): st.none(),
    }
    if tp in simple:
        return simple[tp]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from([m.value for m in tp]) | ints
    if _is_union(tp):
        if depth <= 0:  # a message type that names itself in a union ends on the other members
            args = tuple(a for a in args if a not in codec._by_cls) or args
        return st.one_of([_wire(a, depth) for a in args])
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        return st.tuples(*(_wire(a, depth) for a in args)).map(list)
    if origin in (tuple, list, frozenset, set):
        return st.lists(_wire(args[0], depth), max_size=3)
    if origin is dict:
        keys = _wire(args[0], depth).map(_hashable)
        return st.dictionaries(keys, _wire(args[1], depth), max_size=3)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _fields(tp, depth) if tp not in codec._by_cls else _tagged(tp, depth - 1)
    if tp in (Any, object):
        if depth <= 0:
            return st.sampled_from(_LEAF_MESSAGES).flatmap(lambda t: wire_form(t, 0))
        return st.sampled_from(_TAGS).flatmap(lambda t: wire_form(t, depth - 1))
    raise TypeError(f"no wire form for {tp!r}")


def _hashable(v: Any) -> Any:
    return tuple(map(_hashable, v)) if isinstance(v, list) else v


def _fields(cls: type, depth: int) -> st.SearchStrategy[list[Any]]:
    hints = typing.get_type_hints(cls)
    return st.tuples(*(_wire(hints[f.name], depth) for f in dataclasses.fields(cls))).map(list)


def _tagged(cls: type, depth: int) -> st.SearchStrategy[list[Any]]:
    entry = codec._by_cls[cls]
    return _fields(cls, depth).map(lambda fields: [entry.tag, entry.version, fields])


def wire_form(tag: str, depth: int = 1) -> st.SearchStrategy[list[Any]]:
    """`[tag, version, fields]` of the message registered as `tag`, fields of their types."""
    cls, _version = REGISTERED[tag]
    return _tagged(cls, depth)
