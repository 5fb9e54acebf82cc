"""The model checker's settings and its summary at the end of a run.

OBJCACHE_MODEL_SEQS: sequences per server on the libnfs path (hypothesis examples; the summary
counts shrinking runs too); the kernel path runs a tenth as many, at least 20 (a TCG guest runs
an op in ~30-60 ms, libnfs in ~1-10 ms).
OBJCACHE_MODEL_OPS: the longest sequence. `make model MODEL_SEQS=N` sets both for a long run.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

SEQS = int(os.environ.get("OBJCACHE_MODEL_SEQS", "150"))
MAX_OPS = int(os.environ.get("OBJCACHE_MODEL_OPS", "40"))
KERNEL_SEQS = max(20, SEQS // 10)
STATS: Counter[str] = Counter()  # "<path> seqs" / "<path> ops" -> count


def count(path: str, ops: int) -> None:
    STATS[f"{path} seqs"] += 1
    STATS[f"{path} ops"] += ops


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `model_long` (several VM boots) belong to `make model`, which sets
    OBJCACHE_MODEL_LONG=1: any other run leaves them out (deselected, not skipped)."""
    if os.environ.get("OBJCACHE_MODEL_LONG") == "1":
        return
    long_ones = [item for item in items if item.get_closest_marker("model_long")]
    if long_ones:
        config.hook.pytest_deselected(items=long_ones)
        items[:] = [item for item in items if not item.get_closest_marker("model_long")]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    paths = sorted({k.rsplit(" ", 1)[0] for k in STATS})
    if not paths:
        return
    terminalreporter.write_sep("-", "model checker summary")
    for p in paths:
        terminalreporter.write_line(
            f"model {p}: {STATS[p + ' seqs']} sequences, {STATS[p + ' ops']} ops compared")
