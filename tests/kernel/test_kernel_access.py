"""Access control through the Linux kernel client (guest_access.sh, one nfsvm boot): root in
the guest creates a file on a root-squashed export and it belongs to anon (chown: EPERM); a
read-only export answers every change with EROFS; an allow-list without the client refuses
the mount; a secure export refuses the guest, whose connections qemu's user networking
(slirp) makes from ordinary host ports, with or without noresvport. The server's log and
/metrics show each refusal."""

from __future__ import annotations

import os
import re
import urllib.request
from pathlib import Path

import pytest
from nfsclient import LibNfs
from serverproc import ObjcacheServer, free_port, nfs_url
from test_kernel_client import HERE, run_nfsvm

pytestmark = pytest.mark.kernel

LOOPBACK = ["127.0.0.0/8", "::1/128"]
EXPORTS = (
    {"path": "/", "clients": LOOPBACK, "insecure": True, "root_squash": False},
    {"path": "/sq", "clients": LOOPBACK, "insecure": True, "anon_uid": 4242, "anon_gid": 4343},
    {"path": "/ro", "clients": LOOPBACK, "insecure": True, "read_only": True},
    {"path": "/deny", "clients": ["10.9.9.0/24"], "insecure": True},
    {"path": "/sec", "clients": LOOPBACK, "root_squash": False},
)


def refusals(metrics: str, export: str, reason: str) -> float:
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf'^objcache_export_refusals_total{{export="{re.escape(export)}",'
                  rf'reason="{reason}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.skipif(os.environ.get("OBJCACHE_IT_SERVER", "objcache") != "objcache",
                    reason="objcache's export options")
def test_root_squash_read_only_allow_list_and_secure_port(tmp_path: Path) -> None:
    metrics = f"127.0.0.1:{free_port()}"
    srv = ObjcacheServer(tmp_path / "data", log_path=tmp_path / "node.log", exports=EXPORTS,
                         extra_args=("--metrics-listen", metrics)).start()
    try:
        root = LibNfs(nfs_url(srv.nfs_port, srv.nfs_port, "/") + "&auto-traverse-mounts=0")
        for d in ("/sq", "/ro", "/deny", "/sec"):
            root.mkdir(d, 0o777)
            root.chmod(d, 0o777)
        root.write_file("/ro/hello", b"read me")
        root.close()
        results = run_nfsvm(srv, HERE / "guest_access.sh", tmp_path / "access.log")
        assert re.search(r"^access: \d+ passed, 0 failed", results, re.M), results
        assert refusals(metrics, "/ro", "read_only") >= 6
        assert refusals(metrics, "/deny", "address") >= 1
        assert refusals(metrics, "/sec", "insecure_port") >= 2
        # What slirp does to source ports: the server saw the guest from ports >= 1024.
        ports = [int(p) for p in re.findall(r"refused 127\.0\.0\.1:(\d+) access to export /sec "
                                            r"\(insecure_port\)", srv.log_text())]
        assert ports and min(ports) >= 1024, ports
    finally:
        srv.stop()
