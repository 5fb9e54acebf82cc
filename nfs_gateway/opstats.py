"""What each RPC procedure did, for metrics: calls answered, their latency, errors by status.

Rules:
- Plain counters, no clock and no Prometheus: the dispatcher times a call with the clock it
  was given and calls `record`; server/metrics.py turns the counters into metrics when
  /metrics is scraped (on another thread: it copies, never locks).
- `record` runs for every call, so it is a bisect and three increments. The latency buckets
  are fixed (LATENCY_BOUNDS_S, seconds, upper bounds inclusive as Prometheus' `le`); the last
  counter is the calls slower than every bound.
- An error is the reply's status when it is not zero (an nfsstat3 or mountstat3 member), or
  the RPC accept_stat of a call the procedure could not answer (GARBAGE_ARGS, SYSTEM_ERR). The
  status objects themselves are counted; turning them into label text is the exporter's work.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from nfs_gateway.program import Procedure, Program

# 100 µs (an answer from memory) to 10 s (a cold read from a slow bucket).
LATENCY_BOUNDS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip
MAX_ERROR_KINDS = 64  # distinct statuses kept per procedure (nfsstat3 has 29)


class OpStats:
    """One procedure's counters."""

    __slots__ = ("buckets", "errors", "proc", "program", "sum_s")

    def __init__(self, program: str, proc: str) -> None:
        self.program = program
        self.proc = proc
        self.buckets = [0] * (len(LATENCY_BOUNDS_S) + 1)
        self.sum_s = 0.0
        self.errors: dict[object, int] = {}

    def record(self, seconds: float, status: object) -> None:
        """One answered call: its latency, and its status (falsy: success)."""
        self.buckets[bisect_left(LATENCY_BOUNDS_S, seconds)] += 1
        self.sum_s += seconds
        if status:
            n = self.errors.get(status)
            if n is not None:
                self.errors[status] = n + 1
            elif len(self.errors) < MAX_ERROR_KINDS:
                self.errors[status] = 1

    @property
    def calls(self) -> int:
        return sum(self.buckets)

    def snapshot(self) -> tuple[list[int], float, dict[object, int]]:
        """Copies of (buckets, sum, errors), taken without a lock from any thread: each copy
        is one C-level operation under the GIL, so none sees a half-made change."""
        return list(self.buckets), self.sum_s, dict(self.errors)


class Op:
    """A procedure and its counters: what the dispatcher's table lookup of a call finds."""

    __slots__ = ("proc", "stats")

    def __init__(self, proc: Procedure, stats: OpStats) -> None:
        self.proc = proc
        self.stats = stats


def op_table(
    programs: Sequence[Program],
) -> tuple[dict[tuple[str, str], OpStats], dict[int, dict[int, dict[int, Op]]]]:
    """OpStats per (program name, procedure name), shared by a procedure's versions, and the
    lookup table prog -> vers -> proc -> Op."""
    stats: dict[tuple[str, str], OpStats] = {}
    table: dict[int, dict[int, dict[int, Op]]] = {}
    for program in programs:
        by_vers = table[program.prog] = {}
        for vers, procs in program.procedures.items():
            by_vers[vers] = {
                num: Op(
                    proc,
                    stats.setdefault((program.name, proc.name), OpStats(program.name, proc.name)),
                )
                for num, proc in procs.items()
            }
    return stats, table
