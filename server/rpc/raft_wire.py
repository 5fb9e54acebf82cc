"""Raft messages on the node-to-node plane: codec tags, and a Transport over the RpcPlane.

The raft package knows nothing of the wire; here its frozen dataclasses get codec tags
("raft.<Name>", version 1), and the plane's one-way sends carry them (Raft tolerates loss).
A message is accepted only from the connection of the node it claims to come from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from raft.messages import ALL_MESSAGE_TYPES, Message
from raft.types import ConfState, Entry, SnapshotMeta
from server.rpc import codec
from server.rpc.plane import RpcPlane

log = logging.getLogger("objcache.rpc")

_VALUE_TYPES: tuple[type, ...] = (Entry, ConfState, SnapshotMeta)


def register_raft_types() -> None:
    """Give every raft message and value type its codec tag; safe to call more than once."""
    for cls in (*_VALUE_TYPES, *ALL_MESSAGE_TYPES):
        codec.register_type(cls, f"raft.{cls.__name__}", 1)


class PlaneTransport:
    """raft.driver.Transport over an RpcPlane."""

    def __init__(self, plane: RpcPlane):
        self._plane = plane

    def send(self, to: int, message: Message) -> bool:
        return self._plane.send(to, message)


def route_raft_messages(plane: RpcPlane, step: Callable[[Message], None]) -> None:
    """Deliver every inbound raft message to `step` (RaftDriver.step)."""
    register_raft_types()

    async def on_message(peer_id: int, m: Any) -> None:
        if m.frm != peer_id:
            log.warning("node %d sent a raft message claiming to be from %d; dropped",
                        peer_id, m.frm)
            return
        step(m)

    for cls in ALL_MESSAGE_TYPES:
        plane.register(cls, on_message)
