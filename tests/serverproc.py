"""Real NFS servers as OS processes, and the third-party clients that talk to them.

`ObjcacheServer` runs `objcache serve` on free loopback ports with its own data directory;
`GaneshaServer` runs the reference nfs-ganesha (VFS) through ../shared/tools/nfsvm. Both give
the same shape: `nfs_port`, `mount_port`, `export`, `pid`, `start()`, `stop()`, `restart()`,
`url(path)`, so a test or a benchmark can run against either.

The clients are libnfs-utils (`nfs-cp`, `nfs-ls`, `nfs-cat`) and `nfsmeta`, a small C program
over libnfs (tests/tools/nfsmeta.c) for creating and listing many files quickly. Every call has
a timeout; nothing here sleeps to wait: readiness is polled against a deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# CI checks the repo out with shared/ beside it.
SHARED_TOOLS = REPO.parent / "shared" / "tools" / "nfsvm"
NFSVM = SHARED_TOOLS / "nfsvm"
GANESHA_SCRIPT = SHARED_TOOLS / "reference-ganesha.sh"
READY_LINE = "objcache: serving"
CLIENT_TIMEOUT_S = 120.0


class ServerError(RuntimeError):
    """The server did not start, did not stop cleanly, or exited with a failure."""


def _port_free(port: int) -> bool:
    """True if `port` can be bound on 127.0.0.1 for both TCP and UDP."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


# The ports the harness hands out. Below the kernel's ephemeral range (32768-60999): a port
# picked from that range can be taken by any outgoing connection between the pick and the
# server's bind (a cluster test once failed with EADDRINUSE so). Apart from tests/s3server.py's
# 20000-39999 (SeaweedFS's ports and their gRPC twins).
HARNESS_PORTS = range(10000, 20000)


def free_port(*, count: int = 1) -> int:
    """A loopback port p with p .. p + count - 1 free for TCP and UDP (best effort on a
    shared machine: nothing holds them until the server binds)."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(HARNESS_PORTS.start, HARNESS_PORTS.stop - count)
        if all(_port_free(port + i) for i in range(count)):
            return port
    raise ServerError(f"no {count} free loopback ports in a row")


def tcp_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_for(predicate, *, timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    """Poll `predicate` until it is true or the deadline passes (then ServerError)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise ServerError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def peak_rss_kib(pid: int) -> int | None:
    """The process's peak resident set (VmHWM), or None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return int(m.group(1)) if m else None


def _objcache_command() -> list[str]:
    exe = Path(sys.executable).with_name("objcache")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "server.cli"]


class ObjcacheServer:
    """`objcache serve` on a data directory, NFS+MOUNT on one free loopback port.

    The port is chosen once, so `restart()` serves the same data on the same port (clients may
    keep their URLs and file handles).

    Unless `config` has [[exports]] of its own, the node serves `exports` (the config and
    them written to DATA.toml): by default "/" as a local cluster does (launcher.LOCAL_EXPORTS:
    loopback, insecure, no root squash), since the tests' clients are root (libnfs, the kernel
    guest) from unprivileged ports (slirp's). `exports=()`: the node's own defaults (secure,
    root squash). The access-control tests pass their own.
    """

    export = "/"

    def __init__(
        self,
        data_dir: Path,
        *,
        nfs_port: int | None = None,
        portmap_listen: str = "off",
        config: Path | None = None,
        log_path: Path | None = None,
        extra_args: tuple[str, ...] = (),
        exports: tuple[dict, ...] | None = None,
    ) -> None:
        from server.cluster.launcher import LOCAL_EXPORTS

        self.data_dir = Path(data_dir)
        self.nfs_port = nfs_port or free_port()
        self.portmap_listen = portmap_listen
        self.config = config
        self.log_path = log_path or self.data_dir.with_name(self.data_dir.name + ".log")
        self.extra_args = extra_args
        self.exports = LOCAL_EXPORTS if exports is None else exports
        self.proc: subprocess.Popen | None = None
        self.peak_rss_kib: int | None = None
        self._log_offset = 0

    @property
    def mount_port(self) -> int:
        return self.nfs_port

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not running"
        return self.proc.pid

    def command(self) -> list[str]:
        cmd = [
            *_objcache_command(), "serve",
            "--data-dir", str(self.data_dir),
            "--nfs-listen", f"127.0.0.1:{self.nfs_port}",
            "--portmap-listen", self.portmap_listen,
            "--metrics-listen", "off",
        ]  # fmt: skip
        config = self._config_with_exports()
        if config is not None:
            cmd += ["--config", str(config)]
        return cmd + list(self.extra_args)

    def _config_with_exports(self) -> Path | None:
        """`config`, or DATA.toml: `config` and `exports` as [[exports]] tables (JSON values
        are TOML values) when `config` has none."""
        import tomllib

        text = self.config.read_text() if self.config is not None else ""
        if not self.exports or "exports" in tomllib.loads(text):
            return self.config
        lines = [text]
        for table in self.exports:
            lines += ["[[exports]]", *(f"{k} = {json.dumps(v)}" for k, v in table.items()), ""]
        path = self.data_dir.with_name(self.data_dir.name + ".toml")
        path.write_text("\n".join(lines))
        return path

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _new_log_text(self) -> str:
        return self.log_text()[self._log_offset :]

    def _check_alive(self) -> None:
        assert self.proc is not None
        rc = self.proc.poll()
        if rc is not None:
            raise ServerError(f"objcache exited with {rc} while starting:\n{self.log_tail()}")

    def _ready(self) -> bool:
        self._check_alive()
        return READY_LINE in self._new_log_text() and tcp_answers(self.nfs_port)

    def start(self, timeout_s: float = 60.0) -> ObjcacheServer:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log_offset = len(self.log_text())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,  # a ^C in pytest does not hit the server first
            )
        try:
            wait_for(self._ready, timeout_s=timeout_s, what=f"objcache on port {self.nfs_port}")
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self, timeout_s: float = 30.0, *, check: bool = True) -> int:
        """SIGTERM, wait for the exit; with `check`, a non-zero exit is a ServerError."""
        assert self.proc is not None, "server not started"
        self.peak_rss_kib = peak_rss_kib(self.proc.pid) or self.peak_rss_kib
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                raise ServerError(
                    f"objcache ignored SIGTERM for {timeout_s:.0f}s:\n{self.log_tail()}"
                ) from None
        rc = self.proc.returncode
        if check and rc != 0:
            raise ServerError(f"objcache exited with {rc} after SIGTERM:\n{self.log_tail()}")
        return rc

    def kill(self) -> None:
        """SIGKILL the server (only our own child, by PID) if it is still running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def restart(self, timeout_s: float = 60.0) -> ObjcacheServer:
        self.stop()
        return self.start(timeout_s)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def url(self, path: str = "/") -> str:
        return nfs_url(self.nfs_port, self.mount_port, _join(self.export, path))

    def export_url(self) -> str:
        return nfs_url(self.nfs_port, self.mount_port, self.export)


class GaneshaServer:
    """nfs-ganesha (VFS FSAL) exporting `directory`, through reference-ganesha.sh.

    MOUNT is served on nfs_port+1 (ganesha cannot serve it on the NFS port).
    """

    def __init__(self, directory: Path, *, nfs_port: int | None = None) -> None:
        self.directory = Path(directory).resolve()
        self.nfs_port = nfs_port or free_port(count=2)
        self.mount_port = self.nfs_port + 1
        self.export = str(self.directory)
        self.state_dir = Path(tempfile.gettempdir()) / f"objcache-ganesha-{self.nfs_port}"
        self.pid_: int | None = None
        self.peak_rss_kib: int | None = None

    @property
    def pid(self) -> int:
        assert self.pid_ is not None, "ganesha not running"
        return self.pid_

    def _script(self, *args: str, timeout_s: float = 600.0) -> str:
        out = subprocess.run(
            ["bash", str(GANESHA_SCRIPT), *args, "--port", str(self.nfs_port),
             "--state", str(self.state_dir)],
            capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if out.returncode != 0:
            raise ServerError(f"reference-ganesha.sh {args[0]} failed:\n{out.stderr[-3000:]}")
        return out.stdout

    def start(self, timeout_s: float = 60.0) -> GaneshaServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        out = self._script("start", "--dir", str(self.directory))
        m = re.search(r"^GANESHA_PID=(\d+)", out, re.M)
        if not m:
            raise ServerError(f"reference-ganesha.sh printed no GANESHA_PID:\n{out}")
        self.pid_ = int(m.group(1))
        wait_for(
            lambda: tcp_answers(self.nfs_port) and tcp_answers(self.mount_port),
            timeout_s=timeout_s,
            what=f"ganesha on port {self.nfs_port}",
        )
        return self

    def stop(self, timeout_s: float = 30.0, *, check: bool = True) -> int:
        if self.pid_ is not None:
            self.peak_rss_kib = peak_rss_kib(self.pid_) or self.peak_rss_kib
        self._script("stop", timeout_s=timeout_s)
        self.pid_ = None
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return 0

    def kill(self) -> None:
        with contextlib.suppress(ServerError, subprocess.TimeoutExpired):
            self.stop()

    def restart(self, timeout_s: float = 60.0) -> GaneshaServer:
        self.stop()
        return self.start(timeout_s)

    def running(self) -> bool:
        return self.pid_ is not None and Path(f"/proc/{self.pid_}").exists()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = (self.state_dir / "ganesha.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def url(self, path: str = "/") -> str:
        return nfs_url(self.nfs_port, self.mount_port, _join(self.export, path))

    def export_url(self) -> str:
        return nfs_url(self.nfs_port, self.mount_port, self.export)


def make_server(tmp_path: Path, **objcache_kw):
    """The server under test: objcache, or ganesha when OBJCACHE_IT_SERVER=ganesha (to check
    the tests themselves against a server we did not write)."""
    kind = os.environ.get("OBJCACHE_IT_SERVER", "objcache")
    if kind == "ganesha":
        return GaneshaServer(tmp_path / "export")
    assert kind == "objcache", f"OBJCACHE_IT_SERVER={kind!r}: objcache or ganesha"
    return ObjcacheServer(tmp_path / "data", log_path=tmp_path / "objcache.log", **objcache_kw)


# ------------------------------------------------------------------ libnfs URLs and tools ----


def _join(export: str, path: str) -> str:
    path = path.lstrip("/")
    if not path:
        return export
    if export == "/" and "/" not in path:
        # libnfs mounts the URL's dirname and gives up on an empty one ("mount_cb: (null)"
        # after MOUNT EXPORT): nfs://h/f must be written nfs://h//f, whose dirname is "/".
        return "//" + path
    return export.rstrip("/") + "/" + path


def nfs_url(nfs_port: int, mount_port: int, path: str, host: str = "127.0.0.1") -> str:
    """A libnfs URL. libnfs takes the path verbatim (no %-decoding): spaces and UTF-8 as is."""
    assert "?" not in path and "&" not in path, f"libnfs cannot name {path!r}"
    if not path.startswith("/"):
        path = "/" + path
    return f"nfs://{host}{path}?nfsport={nfs_port}&mountport={mount_port}&version=3"


@dataclass(frozen=True)
class ClientResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    def text(self) -> str:
        return self.stdout.decode("utf-8", errors="surrogateescape")


class ClientError(AssertionError):
    """A client tool failed; the message says which command and what it printed."""


def run_client(argv: list[str], *, timeout_s: float = CLIENT_TIMEOUT_S, check: bool = True):
    try:
        out = subprocess.run(argv, capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise ClientError(f"{argv!r} did not finish in {timeout_s:.0f}s") from e
    res = ClientResult(tuple(argv), out.returncode, out.stdout, out.stderr)
    if check and out.returncode != 0:
        raise ClientError(
            f"{argv!r} exited {out.returncode}\nstdout: {out.stdout[-2000:]!r}\n"
            f"stderr: {out.stderr[-2000:]!r}"
        )
    return res


def nfs_cp(src: str | Path, dst: str | Path, **kw) -> ClientResult:
    """nfs-cp SRC DST (either may be a URL). It refuses to overwrite an existing target."""
    return run_client(["nfs-cp", str(src), str(dst)], **kw)


def nfs_cat(url: str, **kw) -> bytes:
    return run_client(["nfs-cat", url], **kw).stdout


@dataclass(frozen=True)
class LsEntry:
    mode: str  # "drwxr-xr-x"
    nlink: int
    uid: int
    gid: int
    size: int
    name: str  # relative to the listed directory; with -R, a relative path


_LS_LINE = re.compile(rb"^([-dlpscb?][-rwxsStT]{9})\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+) (.*)$")


def parse_nfs_ls(output: bytes) -> list[LsEntry]:
    """Parse nfs-ls lines: `drwxr-xr-x  2     0     0         4096 name with spaces`."""
    entries = []
    for line in output.splitlines():
        if not line.strip():
            continue
        m = _LS_LINE.match(line)
        if m is None:
            raise ClientError(f"unexpected nfs-ls line: {line!r}")
        mode, nlink, uid, gid, size, name = m.groups()
        entries.append(
            LsEntry(mode.decode(), int(nlink), int(uid), int(gid), int(size), name.decode())
        )
    return entries


def nfs_ls(url: str, *, recursive: bool = False, check: bool = True, **kw):
    """The parsed listing; with check=False, the raw ClientResult (for expected failures)."""
    argv = ["nfs-ls", *(["-R"] if recursive else []), url]
    res = run_client(argv, check=check, **kw)
    return parse_nfs_ls(res.stdout) if check else res


# ------------------------------------------------------------------------------- nfsmeta ----

NFSMETA_SOURCE = REPO / "tests" / "tools" / "nfsmeta.c"


def _apt_install(*packages: str) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True).returncode:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, check=True)


def build_nfsmeta() -> Path:
    """Compile tests/tools/nfsmeta.c against libnfs (cached by source hash); return the path."""
    digest = hashlib.sha256(NFSMETA_SOURCE.read_bytes()).hexdigest()[:12]
    exe = Path(tempfile.gettempdir()) / f"objcache-nfsmeta-{digest}"
    if exe.exists():
        return exe
    if not Path("/usr/include/nfsc/libnfs.h").exists() or not shutil.which("gcc"):
        _apt_install("libnfs-dev", "gcc", "libc6-dev", "pkg-config")
    tmp = exe.with_suffix(f".tmp{os.getpid()}")
    run_client(["gcc", "-O2", "-Wall", "-o", str(tmp), str(NFSMETA_SOURCE), "-lnfs"], timeout_s=120)
    tmp.replace(exe)
    return exe


def nfsmeta(export_url: str, op: str, directory: str, *args: int, timeout_s: float = 600.0):
    """Run nfsmeta; return its JSON phase lines as dicts keyed by phase name."""
    argv = [str(build_nfsmeta()), export_url, op, directory, *map(str, args)]
    res = run_client(argv, timeout_s=timeout_s)
    return {d["phase"]: d for d in map(json.loads, res.text().splitlines())}
