"""The cyclic garbage collector's settings for a node process (`objcache serve`, and the
Raft KV node of tests and bench/raft.py, server/raft_kv.py).

Why: almost all of a node's garbage is freed by reference counting the moment it is dropped;
the cyclic collector is only there for the rare cycle. But a node keeps ~100 000 long-lived
objects (cached inodes, in-memory Raft log entries, the duplicate request cache, modules and
classes), and with CPython's default thresholds (700, 10, 10) each ~7 700 net allocations
end in a full collection that walks all of them: under 16 clients creating files, one a
second, 66 ms of CPU each, finding nothing (2.2 s of a 28 s run; p99 latency 45 ms, not
20). Three nodes sharing two CPUs lost far more than the collector's own time (their
caches walked through once a second): 35-40 s of CPU for the same work instead of 51 s.

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
