"""The linearizability checker itself: it must accept and reject the textbook cases."""

from __future__ import annotations

import math

from kv_linearizability import Op, check_history, check_key


def put(value: str, call: float, ret: float, key: str = "k") -> Op:
    return Op(0, "put", key, value, call, ret)


def get(value: str | None, call: float, ret: float, key: str = "k") -> Op:
    return Op(1, "get", key, value, call, ret)


def test_sequential_history() -> None:
    assert check_key([put("1", 0, 1), get("1", 2, 3), put("2", 4, 5), get("2", 6, 7)])


def test_stale_read_after_a_completed_write_is_rejected() -> None:
    assert not check_key([put("1", 0, 1), put("2", 2, 3), get("1", 4, 5)])


def test_concurrent_operations_may_take_effect_in_either_order() -> None:
    assert check_key([put("1", 0, 10), get(None, 1, 2), get("1", 3, 4)])
    assert check_key([put("1", 0, 10), put("2", 0, 10), get("2", 11, 12)])
    assert check_key([put("1", 0, 10), put("2", 0, 10), get("1", 11, 12)])


def test_reads_cannot_go_back_in_time() -> None:
    # Once a read saw "1", a later read must not see the initial state.
    assert not check_key([put("1", 0, 10), get("1", 1, 2), get(None, 3, 4)])


def test_unknown_outcome_may_apply_late_or_never() -> None:
    assert check_key([put("1", 0, math.inf), get(None, 1, 2)])
    assert check_key([put("1", 0, math.inf), get(None, 1, 2), get("1", 5, 6)])
    assert not check_key([put("1", 3, math.inf), get("1", 0, 1)])  # read before the call


def test_history_is_checked_per_key() -> None:
    ok = [put("1", 0, 1, "a"), get("1", 2, 3, "a"), get(None, 2, 3, "b")]
    assert check_history(ok) is None
    assert check_history([*ok, get(None, 4, 5, "a")]) == "a"
