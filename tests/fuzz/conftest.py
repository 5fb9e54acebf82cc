"""The fuzzers' summary: cases run per fuzzer and failures, printed at the end of the run."""

from __future__ import annotations

import pytest
from fuzzlib import CASES, PROFILE, SCALE


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not CASES:
        return
    failed = [
        r.nodeid
        for r in terminalreporter.stats.get("failed", []) + terminalreporter.stats.get("error", [])
        if "tests/fuzz/" in r.nodeid
    ]
    per = ", ".join(f"{name} {n}" for name, n in sorted(CASES.items()))
    terminalreporter.write_sep("-", "fuzz summary")
    terminalreporter.write_line(
        f"fuzz ({PROFILE}, x{SCALE}): {sum(CASES.values())} cases ({per}); "
        f"{len(failed)} failed tests"
    )
    for nodeid in failed:
        terminalreporter.write_line(f"  FAILED {nodeid}")
