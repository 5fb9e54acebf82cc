"""objcache through the real Linux kernel NFSv3 client (../shared/tools/nfsvm: Debian's kernel
under qemu; the guest reaches the host's loopback as 10.0.2.2).

Each nfsvm boot costs 10-30 s under TCG, so the tier is four scripts on five boots:
guest-smoke.sh (nfsvm's own), guest_portmap.sh (no port options: the kernel asks the portmapper),
guest_posix.sh (ours), and guest_persist.sh twice with a server restart in between.
OBJCACHE_IT_SERVER=ganesha runs the same against nfs-ganesha.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from serverproc import NFSVM, GaneshaServer, make_server, tcp_answers

pytestmark = pytest.mark.kernel

HERE = Path(__file__).resolve().parent
SMOKE = NFSVM.parent / "guest-smoke.sh"
BOOT_TIMEOUT_S = 420


def run_nfsvm(server, script: Path, log: Path, *, env: dict[str, str] | None = None,
              opts: str | None = None) -> str:  # fmt: skip
    """Boot the guest, mount `server`, run `script`; return the results channel.

    Fails the test unless nfsvm says PASS (script exit 0 and NFSVM_SUCCESS printed); the
    message carries the guest's FAIL lines, nfsvm's verdict and the server's log tail.
    """
    assert NFSVM.exists(), f"{NFSVM} is missing (shared/ must sit beside the repo)"
    argv = [
        "bash", str(NFSVM), "--port", str(server.nfs_port), "--mountport", str(server.mount_port),
        "--export", server.export, "--script", str(script), "--quiet", "--log", str(log),
        "--timeout", str(BOOT_TIMEOUT_S),
    ]  # fmt: skip
    for name, value in (env or {}).items():
        argv += ["--env", f"{name}={value}"]
    if opts:
        argv += ["--opts", opts]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=BOOT_TIMEOUT_S + 60, stdin=subprocess.DEVNULL
    )
    results_path = log.with_suffix(".results")
    results = results_path.read_text(errors="replace") if results_path.exists() else ""
    if proc.returncode != 0:
        failed = [ln for ln in results.splitlines() if ln.startswith(("FAIL", "NFSVM_", "    |"))]
        pytest.fail(
            f"nfsvm {script.name} exited {proc.returncode}\n"
            f"--- guest results (FAIL/NFSVM lines) ---\n" + "\n".join(failed[-60:]) + "\n"
            f"--- nfsvm ---\n{proc.stderr[-1500:]}\n"
            f"--- server log tail ---\n{server.log_tail(30)}\n"
            f"(full console: {log})"
        )
    assert "NFSVM_SUCCESS" in results
    assert not re.search(r"^FAIL", results, re.M), results
    return results


@pytest.fixture
def server(tmp_path: Path):
    srv = make_server(tmp_path).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_guest_smoke_explicit_ports(server, tmp_path: Path) -> None:
    """nfsvm's own 18-check smoke test, ports given on the mount line."""
    results = run_nfsvm(
        server, SMOKE, tmp_path / "smoke.log", env={"SMOKE_MB": "16", "BIG_MB": "32"}
    )
    m = re.search(r"^smoke: (\d+) passed, (\d+) failed", results, re.M)
    assert m and m.group(2) == "0" and int(m.group(1)) >= 18, results


def test_mount_through_portmapper(tmp_path: Path) -> None:
    """No port options (port=0,mountport=0): the kernel asks the portmapper on 111 (RFC 1833
    GETPORT) for NFS (over TCP) and for MOUNT (over UDP, mountproto=udp, so that MOUNT and
    portmap over UDP are exercised too; TCP MOUNT is what the other tests use). objcache serves
    portmap on 127.0.0.1:111 itself. (This kernel refuses proto=udp for NFS itself: EINVAL.)"""
    mountproto = "udp"
    if os.environ.get("OBJCACHE_IT_SERVER") == "ganesha":
        srv = GaneshaServer(tmp_path / "export")  # registers with the rpcbind it starts
        mountproto = "tcp"  # the reference config has UDP off
    else:
        assert not tcp_answers(111), (
            "something already listens on 127.0.0.1:111 (an rpcbind?); "
            "this test needs the port for objcache's portmapper"
        )
        srv = make_server(tmp_path, portmap_listen="127.0.0.1:111")
    srv.start()
    try:
        assert srv.nfs_port != 2049  # so a mount that works cannot have guessed the port
        run_nfsvm(srv, HERE / "guest_portmap.sh", tmp_path / "portmap.log",
                  opts=f"port=0,mountport=0,mountproto={mountproto}",
                  env={"MOUNTPROTO": mountproto})  # fmt: skip
    finally:
        srv.stop()


def test_posix_semantics(server, tmp_path: Path) -> None:
    results = run_nfsvm(server, HERE / "guest_posix.sh", tmp_path / "posix.log")
    assert re.search(r"^posix: \d+ passed, 0 failed", results, re.M), results


def test_data_survives_server_restart_between_mounts(server, tmp_path: Path) -> None:
    env = {"BIG_MB": "20"}
    run_nfsvm(
        server, HERE / "guest_persist.sh", tmp_path / "write.log", env={**env, "PHASE": "write"}
    )
    server.restart()  # SIGTERM (exit 0 checked), then the same data dir and port
    results = run_nfsvm(
        server, HERE / "guest_persist.sh", tmp_path / "verify.log", env={**env, "PHASE": "verify"}
    )
    assert "PASS checksums" in results
