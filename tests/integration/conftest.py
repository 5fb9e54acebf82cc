"""Fixtures for the integration tier: a real `objcache serve` process per test.

Set OBJCACHE_IT_SERVER=ganesha to run the same tests against the reference nfs-ganesha (VFS),
which checks the tests themselves against a server we did not write.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from serverproc import make_server


@pytest.fixture
def nfs_server(tmp_path: Path):
    """A started server. At the end it is stopped with SIGTERM and must exit 0: a crash during
    the test, or an unclean shutdown, fails the test here."""
    server = make_server(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()
