"""txn/codec.py round trips (hypothesis) and refusals; txn/ids.py determinism."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from txn import codec
from txn.codec import TxnCodecError, from_cbor, to_cbor
from txn.ids import TXN_ID_BYTES, txn_id
from txn.messages import (
    DecisionNotice,
    FinishAck,
    OutcomeAnswer,
    OutcomeQuery,
    PrepareRequest,
    PrepareVote,
)
from txn.records import Outcome, TxnDecision, TxnFinish, TxnForget, TxnLocal, TxnPrepare

ids = st.binary(min_size=16, max_size=16)
groups = st.integers(min_value=0, max_value=2**32)
inos = st.tuples() | st.lists(st.integers(0, 2**64 - 1), max_size=5).map(tuple)
text = st.text(max_size=20)

objects = st.one_of(
    st.builds(TxnLocal, ids, st.binary()),
    st.builds(TxnPrepare, ids, groups, inos, inos, st.binary()),
    st.builds(TxnDecision, ids, st.booleans(), inos, st.binary(), text),
    st.builds(TxnFinish, ids, st.booleans()),
    st.builds(TxnForget, ids),
    st.builds(Outcome, st.booleans(), text),
    st.builds(PrepareRequest, ids, groups, inos, st.binary()),
    st.builds(PrepareVote, ids, groups, st.booleans(), text),
    st.builds(DecisionNotice, ids, groups, st.booleans()),
    st.builds(FinishAck, ids, groups),
    st.builds(OutcomeQuery, ids, groups),
    st.builds(OutcomeAnswer, ids, groups, st.booleans()),
)


@given(objects)
def test_round_trip(obj: object) -> None:
    assert from_cbor(to_cbor(obj)) == obj


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff",
        cbor2.dumps(7),
        cbor2.dumps([2, 1, []]),  # unknown version
        cbor2.dumps([codec.VERSION, 99, []]),  # unknown tag
        cbor2.dumps([codec.VERSION, 5, []]),  # TxnForget without its field
        cbor2.dumps([codec.VERSION, 4, [b"x" * 16, 1]]),  # TxnFinish.commit not a bool
        cbor2.dumps([codec.VERSION, 23, [b"x" * 16, True]]),  # FinishAck.group a bool
        cbor2.dumps([codec.VERSION, 2, [b"x", 1, [1, "a"], [], b""]]),  # bad participants
    ],
)
def test_garbage_raises_a_typed_error(raw: bytes) -> None:
    with pytest.raises(TxnCodecError):
        from_cbor(raw)


@given(st.binary(max_size=64))
def test_random_bytes_never_escape_as_another_error(raw: bytes) -> None:
    try:
        from_cbor(raw)
    except TxnCodecError:
        pass


def test_txn_ids_are_deterministic_and_distinct() -> None:
    assert txn_id(1, 2) == txn_id(1, 2) == txn_id((1).to_bytes(8, "big"), 2)
    assert len(txn_id(1, 2)) == TXN_ID_BYTES
    distinct = {txn_id(1, 2), txn_id(1, 3), txn_id(2, 2), txn_id(1, 2, 1), txn_id(b"ab", 2)}
    assert len(distinct) == 5
