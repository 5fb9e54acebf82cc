"""Exports: lookup, client checks, and squashing as exports(5) and Linux nfsd do."""

from __future__ import annotations

import ipaddress

import pytest

from nfs_gateway.backend import Access, Cred
from nfs_gateway.exports import Export, ExportTable, normalize_path

NET10 = (ipaddress.ip_network("10.0.0.0/8"),)


def table(**kw) -> tuple[ExportTable, Export]:
    export = Export("/data", 7, **kw)
    return ExportTable([Export("/", 1), export]), export


def test_lookup_by_path_and_id():
    t, e = table()
    assert t.by_path("/data") is e and t.by_path("//data/") is e and t.by_id(7) is e
    assert t.by_path("/nope") is None and t.by_id(99) is None
    assert [x.path for x in t.all()] == ["/", "/data"]


@pytest.mark.parametrize("path", ["relative", "/a//b", "/a/", "/a/../b", "/."])
def test_bad_export_paths_are_config_errors(path):
    with pytest.raises(ValueError):
        Export(path, 1)


def test_duplicate_paths_or_ids_are_config_errors():
    with pytest.raises(ValueError):
        ExportTable([Export("/a", 1), Export("/a", 2)])
    with pytest.raises(ValueError):
        ExportTable([Export("/a", 1), Export("/b", 1)])


def test_normalize_path():
    assert normalize_path("") == "/" and normalize_path("///") == "/"
    assert normalize_path("/a//b/") == "/a/b"


def test_client_networks(caplog):
    t, e = table(clients=NET10)
    t.check_client(e, ("10.1.2.3", 800))
    t.check_client(e, ("::ffff:10.1.2.3", 800))  # IPv4 on a dual-stack socket
    for host in ("192.168.1.1", "::1", "not-an-address"):
        with pytest.raises(Access):
            t.check_client(e, (host, 800))
    assert t.refusals["address"] == 2 and t.refusals["bad_address"] == 1
    assert "192.168.1.1" in caplog.text


def test_reserved_port_unless_insecure():
    t, e = table()
    t.check_client(e, ("127.0.0.1", 1023))
    with pytest.raises(Access):
        t.check_client(e, ("127.0.0.1", 1024))
    assert t.refusals["insecure_port"] == 1
    t2, e2 = table(insecure=True)
    t2.check_client(e2, ("127.0.0.1", 40000))


def test_root_squash_maps_uid_and_gid_zero():
    t, e = table(anon_uid=99, anon_gid=98)
    assert t.effective_cred(e, Cred(0, 0, (0, 5), "h")) == Cred(99, 98, (98, 5), "h")
    assert t.effective_cred(e, Cred(1000, 1000, (5,))) == Cred(1000, 1000, (5,))


def test_no_root_squash_keeps_root():
    t, e = table(root_squash=False)
    assert t.effective_cred(e, Cred(0, 0)) == Cred(0, 0)


def test_all_squash_and_auth_none_map_to_anon():
    t, e = table(all_squash=True, anon_uid=99, anon_gid=98)
    assert t.effective_cred(e, Cred(1000, 1000, (5,))) == Cred(99, 98)
    t2, e2 = table()
    assert t2.effective_cred(e2, None) == Cred(65534, 65534)
