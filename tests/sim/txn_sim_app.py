"""The application the txn simulation makes transactional: accounts, directories, inodes.

Ops for one group are a CBOR list of small ops; `("mark", txn)` records that the txn's ops were
applied in this group, so the checker can see all-or-nothing and exactly-once (applying a mark
twice is an assertion failure). Id ranges keep the three kinds of object apart:
accounts 1.., directories 100.., inodes 1000.. (all of them lock ids).
"""

from __future__ import annotations

import cbor2

from txn.kv import KvBatch, KvView, MemKv, Overlay

ACCOUNT_BASE, DIR_BASE, INODE_BASE = 1, 100, 1000
START_BALANCE = 100


def acct_key(a: int) -> bytes:
    return b"app/a/%d" % a


def dirent_key(d: int, name: str) -> bytes:
    return b"app/d/%d/%s" % (d, name.encode())


def inode_key(ino: int) -> bytes:
    return b"app/i/%d" % ino


def mark_key(txn: bytes) -> bytes:
    return b"app/t/" + txn.hex().encode()


def encode_ops(ops: list[tuple]) -> bytes:
    return cbor2.dumps([list(op) for op in ops])


def decode_ops(raw: bytes) -> list[tuple]:
    return [tuple(op) for op in cbor2.loads(raw)]


def _lock_of(op: tuple) -> int | None:
    kind = op[0]
    if kind == "add":
        return op[1]
    if kind in ("mkname", "rmname"):
        return op[1]
    if kind == "mkinode":
        return op[1]
    return None


def _balance(view: KvView, a: int) -> int:
    raw = view.get(acct_key(a))
    return START_BALANCE if raw is None else int(raw)


def _step(op: tuple, view: KvView, batch: KvBatch) -> str | None:
    """Check one op against `view`; if it fits, write it to `batch`."""
    kind = op[0]
    if kind == "add":
        _, a, delta = op
        if _balance(view, a) + delta < 0:
            return "NOFUNDS"
        batch.put(acct_key(a), b"%d" % (_balance(view, a) + delta))
    elif kind == "mkname":
        _, d, name, ino = op
        if view.get(dirent_key(d, name)) is not None:
            return "EEXIST"
        batch.put(dirent_key(d, name), b"%d" % ino)
    elif kind == "rmname":
        _, d, name, ino = op
        if view.get(dirent_key(d, name)) != b"%d" % ino:
            return "ENOENT"
        batch.delete(dirent_key(d, name))
    elif kind == "mkinode":
        if view.get(inode_key(op[1])) is not None:
            return "EINODE"
        batch.put(inode_key(op[1]), b"1")
    elif kind == "mark":
        assert view.get(mark_key(op[1])) is None, f"txn {op[1].hex()} applied twice"
        batch.put(mark_key(op[1]), b"1")
    else:
        raise AssertionError(f"unknown op {op!r}")
    return None


class SimApp:
    """txn.state.Application for the simulation."""

    def locks_of(self, ops: bytes) -> tuple[int, ...]:
        return tuple(sorted({x for op in decode_ops(ops) if (x := _lock_of(op)) is not None}))

    def check(self, ops: bytes, view: KvView) -> str | None:
        dry = Overlay(view)  # type: ignore[arg-type]  # reads only: any KvView will do
        for op in decode_ops(ops):
            reason = _step(op, dry, dry)
            if reason is not None:
                return reason
        return None

    def apply(self, ops: bytes, view: KvView, batch: KvBatch) -> None:
        # `view` reads through `batch` (txn.kv contract), so ops compose in order.
        for op in decode_ops(ops):
            reason = _step(op, view, batch)
            assert reason is None, f"apply after a passed check failed: {op} {reason}"


def total_balance(stores: list[MemKv], accounts: list[int]) -> int:
    out = 0
    for a in accounts:
        for kv in stores:
            raw = kv.get(acct_key(a))
            if raw is not None:
                out += int(raw)
                break
        else:
            out += START_BALANCE
    return out
