"""Runs every `testdata/*.script` through the harness and compares with `*.golden`."""

from __future__ import annotations

from pathlib import Path

import pytest
from raft_harness import Harness

TESTDATA = Path(__file__).parent / "testdata"
SCRIPTS = sorted(TESTDATA.glob("*.script"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_script(script: Path, request: pytest.FixtureRequest) -> None:
    transcript = Harness().run(script.read_text())
    golden = script.with_suffix(".golden")
    if request.config.getoption("--rewrite"):
        golden.write_text(transcript)
        return
    assert golden.exists(), f"no golden file: run pytest {script.parent.parent} --rewrite"
    assert transcript == golden.read_text(), f"transcript differs: {golden}"
