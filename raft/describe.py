"""Stable one-line descriptions of messages and entries, for logs and test transcripts."""

from __future__ import annotations

import dataclasses

from raft.conf_change import ConfChange
from raft.messages import Message
from raft.types import Entry, EntryType, SnapshotMeta


def describe_entry(e: Entry) -> str:
    if e.type is EntryType.CONF_CHANGE:
        cc = ConfChange.decode(e.data)
        return f"{e.term}/{e.index} {cc.type.name.lower()} {cc.node_id}"
    if e.type is EntryType.NOOP:
        return f"{e.term}/{e.index} noop"
    return f"{e.term}/{e.index} {_short_bytes(e.data)}"


def describe_meta(meta: SnapshotMeta) -> str:
    return (
        f"index={meta.index} term={meta.term} voters={sorted(meta.conf.voters)}"
        f" learners={sorted(meta.conf.learners)}"
    )


def _short_bytes(data: bytes, limit: int = 24) -> str:
    text = data[:limit].decode("utf-8", "backslashreplace")
    return f'"{text}"' + ("..." if len(data) > limit else "")


def _field(name: str, value: object) -> str:
    if name == "entries":
        return "entries=[" + ", ".join(describe_entry(e) for e in value) + "]"  # type: ignore[attr-defined]
    if name == "meta":
        return f"snap=({describe_meta(value)})"  # type: ignore[arg-type]
    if isinstance(value, bytes):
        return f"{name}={_short_bytes(value)}" if name != "data" else f"bytes={len(value)}"
    return f"{name}={value}"


def describe_message(m: Message) -> str:
    parts = [f"{m.frm}->{m.to} {type(m).__name__} term={m.term}"]
    for f in dataclasses.fields(m):
        if f.name in ("frm", "to", "term"):
            continue
        value = getattr(m, f.name)
        if f.default is not dataclasses.MISSING and value == f.default:
            continue  # keep transcripts short: omit fields at their default
        parts.append(_field(f.name, value))
    return " ".join(parts)
