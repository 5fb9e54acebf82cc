"""Failpoints: named pauses that tests switch on to hold a node at a chosen moment (then kill
it there). Off unless the environment names them, so production code pays one dict lookup.

OBJCACHE_FAILPOINTS="ring.after_export=5,other=0.5": pause that many seconds at each.
"""

from __future__ import annotations

import logging
import os

import trio

log = logging.getLogger("objcache.failpoints")


def _parse(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, _, seconds = item.partition("=")
        out[name] = float(seconds or 0)
    return out


_ACTIVE = _parse(os.environ.get("OBJCACHE_FAILPOINTS", ""))


async def reach(name: str) -> None:
    """Pause here if the failpoint `name` is on."""
    seconds = _ACTIVE.get(name)
    if seconds is not None:
        log.warning("failpoint %s: pausing %.1f s", name, seconds)
        await trio.sleep(seconds)
