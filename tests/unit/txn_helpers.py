"""A tiny Application for txn unit tests: ops set or create objects named by inode id."""

from __future__ import annotations

import cbor2

from txn.kv import KvBatch, KvView, MemKv, Overlay
from txn.state import Applied, TxnState, TxnStateConfig


def ops(*items: tuple[str, int, str]) -> bytes:
    """("set"|"create", ino, value) ...: create fails with EEXIST if the object exists."""
    return cbor2.dumps([list(i) for i in items])


def obj_key(ino: int) -> bytes:
    return b"obj/%d" % ino


class TinyApp:
    def __init__(self) -> None:
        self.applied: list[bytes] = []

    def locks_of(self, raw: bytes) -> tuple[int, ...]:
        return tuple(sorted({ino for _, ino, _ in cbor2.loads(raw)}))

    def check(self, raw: bytes, view: KvView) -> str | None:
        for kind, ino, _ in cbor2.loads(raw):
            if kind == "create" and view.get(obj_key(ino)) is not None:
                return "EEXIST"
        return None

    def apply(self, raw: bytes, view: KvView, batch: KvBatch) -> None:
        self.applied.append(raw)
        for _, ino, value in cbor2.loads(raw):
            batch.put(obj_key(ino), value.encode())


class Group:
    """One group's state machine over a MemKv, applying one record per batch."""

    def __init__(self, max_outcomes: int = 100) -> None:
        self.app = TinyApp()
        self.kv = MemKv()
        self.state = TxnState(self.app, TxnStateConfig(max_outcomes=max_outcomes))

    def apply(self, record: object) -> Applied:
        batch = Overlay(self.kv)
        result = self.state.apply(record, batch, batch)  # type: ignore[arg-type]
        batch.commit()
        return result

    def get(self, ino: int) -> bytes | None:
        return self.kv.get(obj_key(ino))
