"""/healthz and /readyz (server/metrics.py): what they answer, and when they say no."""

from __future__ import annotations

import time

from server import metrics


def call(path: str) -> tuple[str, bytes]:
    seen: list[str] = []
    app = metrics._app(lambda environ, start_response: [b"metrics"])
    body = b"".join(app({"PATH_INFO": path}, lambda status, headers: seen.append(status)))
    return (seen[0] if seen else ""), body


def test_probes_answer_from_the_heartbeat_and_the_ready_check() -> None:
    metrics._state["beat"] = time.monotonic()
    metrics.set_ready(lambda: False)
    assert call("/healthz") == ("200 OK", b"ok\n")
    assert call("/readyz") == ("503 Service Unavailable", b"not ok\n")
    metrics.set_ready(lambda: True)
    assert call("/readyz") == ("200 OK", b"ok\n")
    metrics._state["beat"] = time.monotonic() - metrics.HEALTH_STALE_S - 1  # a stuck loop
    assert call("/healthz")[0] == "503 Service Unavailable"
    assert call("/metrics") == ("", b"metrics")  # everything else is prometheus-client's
    metrics._state["beat"] = time.monotonic()
