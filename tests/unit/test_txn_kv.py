"""txn/kv.py: MemKv and Overlay against a dict model (hypothesis)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from txn.kv import MemKv, Overlay

keys = st.sampled_from([b"", b"a", b"aa", b"ab", b"b", b"a\xff", b"ba"])
writes = st.lists(st.tuples(keys, st.none() | st.binary(min_size=1, max_size=2)), max_size=12)


def _model_scan(model: dict[bytes, bytes], prefix: bytes, limit: int) -> list:
    return sorted((k, v) for k, v in model.items() if k.startswith(prefix))[:limit]


def _write(store: MemKv | Overlay, model: dict[bytes, bytes], ops: list) -> None:
    for k, v in ops:
        if v is None:
            store.delete(k)
            model.pop(k, None)
        else:
            store.put(k, v)
            model[k] = v


@given(writes, writes, keys, st.integers(0, 8))
def test_overlay_reads_its_writes_over_the_base(base_ops: list, ops: list, prefix: bytes,
                                                limit: int) -> None:
    base, model = MemKv(), {}
    _write(base, model, base_ops)
    assert base.scan(prefix, limit) == _model_scan(model, prefix, limit)
    overlay = Overlay(base)
    _write(overlay, model, ops)
    assert overlay.scan(prefix, limit) == _model_scan(model, prefix, limit)
    assert all(overlay.get(k) == model.get(k) for k, _ in ops)
    overlay.commit()
    assert base.items() == sorted(model.items())
