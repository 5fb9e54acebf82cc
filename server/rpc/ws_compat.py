"""A work-around for a trio-websocket bug that lets any peer crash the node.

trio-websocket 0.12.2 answers a Ping that arrives after we started closing (wsproto state
LOCAL_CLOSING) by sending a Pong, which wsproto refuses with LocalProtocolError inside the
library's reader task; the error escapes into the nursery that runs the connection — for a
server, the plane's own nursery. A peer that sends garbage and then a ping, or a keepalive ping
that crosses our close, would take the whole node down. Upstream: python-trio/trio-websocket
issue #184, fix proposed in PR #198 (unmerged). This applies the same fix: after a Close frame
no Pong is sent (RFC 6455 §5.5.1: nothing may follow a Close frame). Remove once upstream has it.
"""

from __future__ import annotations

from typing import Any

from trio_websocket import _impl
from wsproto.connection import ConnectionState

_original = _impl.WebSocketConnection._handle_ping_event


async def _handle_ping_event(self: Any, event: Any) -> None:
    if self._wsproto.state is not ConnectionState.OPEN:
        return  # closing: the pong is moot and wsproto would refuse it
    await _original(self, event)


def install() -> None:
    """Idempotent; called when server.rpc.connection is imported."""
    _impl.WebSocketConnection._handle_ping_event = _handle_ping_event  # type: ignore[method-assign]
