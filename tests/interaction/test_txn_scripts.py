"""Runs every `txn_testdata/*.script` through the txn harness and compares with `*.golden`
(`pytest tests/interaction --rewrite` regenerates them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from txn_harness import TxnHarness

TESTDATA = Path(__file__).parent / "txn_testdata"
SCRIPTS = sorted(TESTDATA.glob("*.script"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_txn_script(script: Path, request: pytest.FixtureRequest) -> None:
    transcript = TxnHarness().run(script.read_text())
    golden = script.with_suffix(".golden")
    if request.config.getoption("--rewrite"):
        golden.write_text(transcript)
        return
    assert golden.exists(), f"no golden file: run pytest {script.parent.parent} --rewrite"
    assert transcript == golden.read_text(), f"transcript differs: {golden}"
