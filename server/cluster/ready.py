"""The ready file: how a cluster node tells `objcache cluster up` (and tests) that it serves.

Contract: once a cluster node serves NFS and its group has a leader, it writes
`<data_dir>/ready.json` atomically (a temporary file renamed over it):

    {"node_id": 1, "group": 1, "nfs": "127.0.0.1:21000", "rpc": "127.0.0.1:21001",
     "metrics": "127.0.0.1:21002" or null, "pid": 12345}

and removes it on a clean shutdown. A file left by a killed node names a pid that is gone (or
belongs to another process), so readers compare `pid` with the process they started.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

READY_FILE = "ready.json"


@dataclass(frozen=True, slots=True)
class Ready:
    node_id: int
    group: int
    nfs: str
    rpc: str
    metrics: str | None
    pid: int


def ready_path(data_dir: Path | str) -> Path:
    return Path(data_dir) / READY_FILE


def write_ready(data_dir: Path | str, *, node_id: int, group: int, nfs: str, rpc: str,
                metrics: str | None, pid: int) -> Path:
    """Write the ready file atomically (readers never see half of it); returns its path."""
    ready = Ready(node_id, group, nfs, rpc, metrics, pid)
    path = ready_path(data_dir)
    tmp = path.with_name(f".{READY_FILE}.{pid}.tmp")
    with open(tmp, "w") as f:
        json.dump(asdict(ready), f)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read_ready(data_dir: Path | str) -> Ready | None:
    """The node's ready file, or None if there is none. Raises ValueError if it is malformed."""
    try:
        text = ready_path(data_dir).read_text()
    except FileNotFoundError:
        return None
    try:
        raw = json.loads(text)
        ready = Ready(**raw)
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{ready_path(data_dir)}: not a ready file: {e}") from None
    ints = (ready.node_id, ready.group, ready.pid)
    strs = (ready.nfs, ready.rpc, "" if ready.metrics is None else ready.metrics)
    if not all(type(v) is int for v in ints) or not all(type(v) is str for v in strs):
        raise ValueError(f"{ready_path(data_dir)}: not a ready file: {text[:200]!r}")
    return ready


def remove_ready(data_dir: Path | str) -> None:
    with contextlib.suppress(FileNotFoundError):
        ready_path(data_dir).unlink()
