"""Fixtures for the integration tier: a real `objcache serve` process per test.

Set OBJCACHE_IT_SERVER=ganesha to run the same tests against the reference nfs-ganesha (VFS),
which checks the tests themselves against a server we did not write.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from serverproc import GaneshaServer, ObjcacheServer


def _make_server(tmp_path: Path):
    kind = os.environ.get("OBJCACHE_IT_SERVER", "objcache")
    if kind == "ganesha":
        return GaneshaServer(tmp_path / "export")
    assert kind == "objcache", f"OBJCACHE_IT_SERVER={kind!r}: objcache or ganesha"
    return ObjcacheServer(tmp_path / "data", log_path=tmp_path / "objcache.log")


@pytest.fixture
def nfs_server(tmp_path: Path):
    """A started server. At the end it is stopped with SIGTERM and must exit 0: a crash during
    the test, or an unclean shutdown, fails the test here."""
    server = _make_server(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()
