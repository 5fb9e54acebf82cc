"""Exports: lookup, client checks, and squashing as exports(5) and Linux nfsd do."""

from __future__ import annotations

import ipaddress

import pytest

from nfs_gateway.backend import Access, Cred, Perm, ReadOnly
from nfs_gateway.exports import LOG_MEMORY_ENTRIES, Export, ExportTable, normalize_path

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
    assert t.refusals[("address", "/data")] == 2
    assert t.refusals[("bad_address", "/data")] == 1
    assert "192.168.1.1" in caplog.text


def test_reserved_port_unless_insecure():
    """Linux nfsd answers a call from a port >= 1024 on a secure export with NFS3ERR_PERM
    (nfsd_setuser_and_check_port): the caller is not privileged (RFC 1813 §2.6)."""
    t, e = table()
    t.check_client(e, ("127.0.0.1", 1023))
    with pytest.raises(Perm):
        t.check_client(e, ("127.0.0.1", 1024))
    assert t.refusals[("insecure_port", "/data")] == 1
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


def test_defaults_are_linux_exports_defaults():
    """exports(5): root_squash and secure unless configured otherwise."""
    e = Export("/x", 3)
    assert e.root_squash and not e.insecure and not e.all_squash and not e.read_only


def test_read_only_refusal_is_counted_and_logged(caplog):
    t, e = table(read_only=True)
    err = t.read_only(e, ("10.0.0.9", 700))
    assert isinstance(err, ReadOnly)
    assert t.refusals[("read_only", "/data")] == 1
    assert "10.0.0.9" in caplog.text and "read_only" in caplog.text


def test_a_flood_of_refusals_is_counted_but_logged_sparsely(caplog):
    """Every refusal counts; the log gets the 1st, 2nd, 4th, ... of one client and reason."""
    t, e = table(clients=NET10)
    for _ in range(1000):
        with pytest.raises(Access):
            t.check_client(e, ("192.168.1.1", 800))
    assert t.refusals[("address", "/data")] == 1000
    lines = [r for r in caplog.records if "192.168.1.1" in r.getMessage()]
    assert len(lines) == 10  # 1, 2, 4, ..., 512
    assert "512 refusals" in lines[-1].getMessage()
    with pytest.raises(Access):  # another client is logged at once
        t.check_client(e, ("192.168.1.2", 800))
    assert "192.168.1.2" in caplog.records[-1].getMessage()


def test_log_memory_is_bounded():
    t, e = table(clients=NET10)
    for i in range(LOG_MEMORY_ENTRIES + 10):
        with pytest.raises(Access):
            t.check_client(e, (f"192.168.{i // 256}.{i % 256}", 800))
    assert len(t._log) <= LOG_MEMORY_ENTRIES
    assert t.refusals[("address", "/data")] == LOG_MEMORY_ENTRIES + 10


def test_refusals_are_never_memoized():
    """Admissions are remembered; a refused client is refused (and counted) every time, and
    an admitted address from a port that is not reserved is still refused."""
    t, e = table(clients=NET10)
    t.check_client(e, ("10.1.1.1", 900))
    with pytest.raises(Perm):
        t.check_client(e, ("10.1.1.1", 40000))
    with pytest.raises(Perm):
        t.check_client(e, ("10.1.1.1", 40001))
    assert t.refusals[("insecure_port", "/data")] == 2


def test_the_config_and_the_gateway_agree_on_the_defaults():
    """server/config.py's ExportConfig defaults become the same Export as the gateway's own
    defaults (they once disagreed: no root squash and insecure in the config)."""
    from server.config import ExportConfig
    from server.node import _export

    from_config = _export(ExportConfig())
    assert from_config == Export(from_config.path, from_config.export_id,
                                 clients=from_config.clients)
