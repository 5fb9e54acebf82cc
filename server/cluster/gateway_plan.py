"""A change as the gateway plans it: records per group, and how to answer (gateway.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from server.fs.records import Dirent, Inode


@dataclass
class Done:
    """A change that needs no transaction: its answer."""

    value: Any


@dataclass
class Plan:
    """One attempt of a change: records per group, in order, and how to answer."""

    coordinator: int
    before: dict[int, Inode]  # what was read (for wcc, and the local apply of the records)
    dirents: dict[tuple[int, bytes], Dirent] = field(default_factory=dict)
    parts: dict[int, list[object]] = field(default_factory=dict)
    finish: Callable[[dict[int, Inode | None]], Any] = lambda after: None
    on_abort: Callable[[str], None] | None = None  # told the abort reason before a rebuild

    def add(self, group: int, *records: object) -> None:
        self.parts.setdefault(group, []).extend(records)


class PlanView:
    """server/fs/state.View over what a plan read (for computing the after-attributes)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def inode(self, ino: int) -> Inode | None:
        return self.plan.before.get(ino)

    def dirent(self, dir_ino: int, name: bytes) -> Dirent | None:
        return self.plan.dirents.get((dir_ino, name))

    def meta_int(self, key: bytes) -> int:
        return 1 << 62  # the group's counters do not matter here; keep them from going < 0

    def inline(self, ino: int) -> bytes:
        return b""

    def entry_names(self, dir_ino: int, limit: int) -> list[bytes]:
        return []


class Reread(Exception):
    """What the gateway read does not fit together (a change raced between two reads): read
    again and rebuild, like after an abort."""
