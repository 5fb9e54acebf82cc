"""Access-control refusals on /metrics: every (export, reason) and (peer, reason) series is
there from the start (a rate over the first refusals is not lost) and counts what the export
table and the RPC plane counted."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY, generate_latest

from nfs_gateway.backend import Access
from nfs_gateway.exports import Export, ExportTable
from server import metrics


@pytest.fixture(autouse=True)
def _unwatch():
    """The collector is process-wide: leave it as the test found it."""
    saved = (metrics._access.exports, metrics._access.plane)
    yield
    metrics._access.exports, metrics._access.plane = saved


def scrape() -> str:
    return generate_latest(REGISTRY).decode()


def test_export_refusals_by_export_and_reason():
    table = ExportTable([Export("/", 1), Export("/data", 2, clients=(
        ipaddress.ip_network("10.0.0.0/8"),), read_only=True)])
    metrics.watch_exports(table)
    text = scrape()
    for export in ("/", "/data"):
        for reason in ("address", "bad_address", "insecure_port", "read_only"):
            assert (f'objcache_export_refusals_total{{export="{export}",reason="{reason}"}} 0.0'
                    in text)
    data = table.by_path("/data")
    with pytest.raises(Access):
        table.check_client(data, ("192.168.0.1", 700))
    table.read_only(data, ("10.0.0.1", 700))
    table.read_only(data, ("10.0.0.1", 700))
    text = scrape()
    assert 'objcache_export_refusals_total{export="/data",reason="address"} 1.0' in text
    assert 'objcache_export_refusals_total{export="/data",reason="read_only"} 2.0' in text
    assert 'objcache_export_refusals_total{export="/",reason="read_only"} 0.0' in text


def test_plane_refusals_by_peer_and_reason():
    plane = SimpleNamespace(refusals={("admin", "bad_proof"): 3})
    metrics.watch_plane(plane)  # type: ignore[arg-type]
    text = scrape()
    assert 'objcache_rpc_auth_refusals_total{peer="admin",reason="bad_proof"} 3.0' in text
    for peer, reason in (("node", "bad_proof"), ("node", "bad_identity"),
                         ("node", "bad_handshake"), ("admin", "forbidden")):
        assert f'objcache_rpc_auth_refusals_total{{peer="{peer}",reason="{reason}"}} 0.0' in text
