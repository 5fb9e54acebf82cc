"""The cyclic garbage collector's settings for a node process (`objcache serve`, and the
Raft KV node of tests and bench/raft.py, server/raft_kv.py).

Why: almost all of a node's garbage is freed by reference counting the moment it is dropped;
the cyclic collector is only there for the rare cycle. But a node keeps ~100 000 long-lived
objects (cached inodes, in-memory Raft log entries, the duplicate request cache, modules and
classes), and with CPython's default thresholds (700, 10, 10) a node under 16 clients
creating files ran a full collection about once a second: 66 ms of CPU each, walking all of
them and freeing nothing (2.2 s of a 28 s run, and ~0.8 s more in the young generations).
Every request waiting behind one waited those 66-100 ms: bench/namespace.py's 16-client
p99 on one node was 112 ms for create, 106-132 ms for rename, ~110 ms for remove; tuned,
33-37, 31-38 and 28-31 ms.

So a node:
- collects its youngest generation after GEN0_THRESHOLD net allocations instead of 700 (the
  older generations keep their ratios): a full collection every few tens of seconds under
  load, and cycles still freed;
- freezes what is alive once it serves (gc.freeze: modules, classes, configuration, the
  state it opened): that lives as long as the process, and no collection walks it again.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 10_000


def tune() -> None:
    """Set the thresholds; call before the node starts."""
    _gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)


def freeze_startup() -> None:
    """Collect what start-up left behind, then move every object still alive to the
    permanent generation; call once, when the node begins to serve."""
    gc.collect()
    gc.freeze()
