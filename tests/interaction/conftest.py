"""`pytest tests/interaction --rewrite` regenerates the golden transcripts."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--rewrite",
        action="store_true",
        default=False,
        help="rewrite golden transcripts of interaction scripts instead of comparing",
    )
