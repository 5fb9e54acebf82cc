"""Helpers of bench/elasticity.py for timing ring changes (issue 6) from outside the nodes.

- StallProbe: a client doing small NFS operations (write a 4 KiB file, stat it, read it back;
  new files in turn in 8 directories, so that some of what it touches moves in any change)
  one at a time through one node's gateway (libnfs through ctypes, tests/nfsclient.py), each
  timed; `window(t0, t1)` gives the worst operation that overlapped a change. An operation
  that fails is retried until it succeeds: its time counts until then and the error is kept
  (no error should reach a client during a change).
- ring_change(): the coordinator's log line for a ring version ("ring version A -> B (join) in
  X s, N bytes moved", server/cluster/ringchange.py), and log_time() to place other log lines
  on the same clock as time.time().
- wait_quiet(): until the node processes stop using the CPU (what a write left behind --
  flushes of the Raft log, compactions -- would otherwise be timed with the next change).
- WarmCli: `objcache admin ...` in an interpreter that imported the CLI beforehand, so that a
  timed command starts when it is issued, not 0.6 s later (the direct boto3 anchor also makes
  its client before its clock starts); cli_start_s() measures what that leaves out.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from nfsclient import LibNfs
from serverproc import peak_rss_kib

REPO = Path(__file__).resolve().parents[1]
PROBE_BYTES = 4096
PROBE_DIRS = 8  # inodes spread over the ring: some move in any change
PROBE_TIMEOUT_MS = 120_000  # libnfs gives up on an operation after this (then: an error)
_RING = re.compile(r"^(\S+ \S+) INFO objcache\.ringchange: ring version (\d+) -> (\d+) "
                   r"\((join|leave)\) in ([\d.]+) s, (\d+) bytes moved$", re.M)
_NFS_ERRORS = re.compile(r'^objcache_nfs_op_errors_total\{([^}]*)\} ([0-9.e+]+)$', re.M)
_WARM = ("import json, sys\nfrom server import cli\nfrom server.cluster import admin, "
         "admin_ring, ringchange\nprint('ready', flush=True)\n"  # leave imports ringchange
         "sys.exit(cli.main(json.loads(sys.stdin.readline())))")


class ProbeNfs(LibNfs):
    """LibNfs with stat and read, no directory cache (every call goes to the server), and a
    timeout, so that a server that never answers is an error rather than a hang."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        lib = self.lib
        lib.nfs_set_dircache.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.nfs_set_dircache(self.ctx, 0)
        lib.nfs_set_timeout.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.nfs_set_timeout(self.ctx, PROBE_TIMEOUT_MS)
        lib.nfs_stat64.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        lib.nfs_open.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                 ctypes.POINTER(ctypes.c_void_p)]
        lib.nfs_pread.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64,
                                  ctypes.c_uint64, ctypes.c_char_p]

    def _check(self, rc: int, call: str, path: str) -> None:
        if rc < 0:  # libnfs's errno too: its messages are not always readable
            raise OSError(f"{call}({path}): {os.strerror(-rc)}: {self.error()!r}")

    def size(self, path: str) -> int:
        st = (ctypes.c_uint64 * 32)()  # struct nfs_stat_64: 17 uint64, nfs_size the 8th
        self._check(self.lib.nfs_stat64(self.ctx, path.encode(), st), "stat", path)
        return st[7]

    def read_file(self, path: str, size: int) -> bytes:
        fh = ctypes.c_void_p()
        self._check(self.lib.nfs_open(self.ctx, path.encode(), os.O_RDONLY, ctypes.byref(fh)),
                    "open", path)
        try:
            buf = ctypes.create_string_buffer(size)
            n = self.lib.nfs_pread(self.ctx, fh, 0, size, buf)
            self._check(n, "pread", path)
            return buf.raw[:n]
        finally:
            self.lib.nfs_close(self.ctx, fh)


class StallProbe:
    """Small operations through `url`'s gateway in a loop, in directory /`tag` (module doc).
    Use as a context manager around the change; `pause_s` between operations keeps the probe
    from loading the machine it measures."""

    def __init__(self, url: str, tag: str, *, pause_s: float = 0.01) -> None:
        self.url, self.dir, self.pause_s = url, f"/{tag}", pause_s
        self.ops: list[tuple[float, float, str]] = []  # (start, seconds, operation)
        self.errors: list[tuple[float, str]] = []  # (when, libnfs's message)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._nfs: ProbeNfs | None = None

    def __enter__(self) -> StallProbe:
        self._nfs = ProbeNfs(self.url)
        self._nfs.mkdir(self.dir)
        for k in range(PROBE_DIRS):
            self._nfs.mkdir(f"{self.dir}/d{k}")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        assert self._nfs is not None
        self._nfs.close()

    def _run(self) -> None:
        assert self._nfs is not None
        nfs, data = self._nfs, os.urandom(PROBE_BYTES)
        steps = (("write", lambda p: nfs.write_file(p, data)),
                 ("stat", lambda p: nfs.size(p) == PROBE_BYTES or _fail(p, "size")),
                 ("read", lambda p: nfs.read_file(p, PROBE_BYTES) == data or _fail(p, "data")))
        i = 0
        while not self._stop.is_set():
            path = f"{self.dir}/d{i // 3 % PROBE_DIRS}/f{i // 3}"
            name, step = steps[i % 3]
            t0 = time.perf_counter()
            while True:
                try:
                    step(path)
                    break
                except OSError as e:
                    self.errors.append((time.perf_counter(), str(e)))
                    if self._stop.wait(0.1):
                        return
            self.ops.append((t0, time.perf_counter() - t0, name))
            i += 1
            self._stop.wait(self.pause_s)

    def window(self, t0: float, t1: float) -> dict:
        """The operations that overlapped [t0, t1] (perf_counter): count, median, the worst."""
        inside = [(s, d, op) for s, d, op in self.ops if s <= t1 and s + d >= t0]
        before = [d for s, d, _ in self.ops if s + d < t0]
        worst = max(inside, key=lambda o: o[1], default=(t0, 0.0, "-"))
        lat = sorted(d for _, d, _ in inside)
        return {"ops": len(inside), "max_s": round(worst[1], 4), "max_op": worst[2],
                "max_at_s": round(worst[0] - t0, 3), "max_end_s": round(sum(worst[:2]) - t0, 3),
                "median_s": round(lat[len(lat) // 2], 4) if lat else None,
                "before_max_s": round(max(before, default=0.0), 4),
                "errors": [m for t, m in self.errors if t0 <= t <= t1][:5],
                "error_count": sum(t0 <= t <= t1 for t, _ in self.errors)}


def _fail(path: str, what: str) -> bool:
    raise OSError(f"probe {path}: wrong {what} read back")


def ring_change(log: Path, version: int) -> dict | None:
    """The coordinator's line for the change that installed `version`, if logged yet."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    for m in _RING.finditer(text):
        if int(m.group(3)) == version:
            return {"at": log_time(m.group(1)), "from": int(m.group(2)), "kind": m.group(4),
                    "seconds": float(m.group(5)), "moved_bytes": int(m.group(6))}
    return None


def ring_steps(log: Path, version: int) -> dict[str, float]:
    """The coordinator's time per step of the change to `version`, if it logs them ("ring
    version B: prepare X s, pre-copy Y s, ...": what each step is, ringchange.py says)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return {}
    m = re.search(rf"ring version {version}: (.*)$", text, re.M)
    steps = re.findall(r"([a-z][\w -]*?) ([\d.]+) s", m.group(1)) if m else []
    return {k: float(v) for k, v in steps}


def log_time(stamp: str) -> float:
    """A node log's timestamp ("2026-11-29 12:12:37,551", local time) as time.time()."""
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def first_line_time(log: Path, pattern: str, after: float) -> float | None:
    """time.time() of the first log line matching `pattern` stamped at or after `after`."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    for m in re.finditer(r"^(\S+ \S+) .*" + pattern, text, re.M):
        t = log_time(m.group(1))
        if t >= after - 0.001:
            return t
    return None


def _cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def wait_quiet(pids: list[int], *, window_s: float = 0.3, max_cores: float = 0.2,
               timeout_s: float = 60.0) -> float:
    """Until `pids` together use under `max_cores` of CPU over `window_s`; the seconds it took
    (timeout_s if they never did: the caller goes on, and records it)."""
    hz = os.sysconf("SC_CLK_TCK")
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        before = _cpu_ticks(pids)
        time.sleep(window_s)
        if (_cpu_ticks(pids) - before) / hz < max_cores * window_s:
            break
    return round(time.monotonic() - t0, 2)


class WarmCli:
    """One `objcache` command, its interpreter started and the CLI imported ahead (module
    doc): made early (it imports meanwhile), `wait_ready()` before a clock starts, then
    `run(argv)` issues the command and waits for it to exit."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen([sys.executable, "-c", _WARM], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=REPO, env=env)
        self._ready = False

    def wait_ready(self) -> WarmCli:
        assert self.proc.stdout is not None
        if not self._ready and self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the CLI did not start: {self.proc.communicate()[1][-2000:]}")
        self._ready = True
        return self

    def run(self, argv: list[str], timeout_s: float = 900.0) -> subprocess.CompletedProcess:
        self.wait_ready()
        out, err = self.proc.communicate(json.dumps(argv) + "\n", timeout=timeout_s)
        return subprocess.CompletedProcess(argv, self.proc.returncode, out, err)

    def close(self) -> None:
        """Stop it if never run (a scenario that failed before its command)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def cli_start_s() -> float:
    """What WarmCli leaves out of a timing: an interpreter starting and importing the CLI."""
    t0 = time.perf_counter()
    WarmCli().run(["--help"])  # argparse's help: the imports and nothing else
    return time.perf_counter() - t0


def stack_dump(pid: int) -> str:
    """Every thread's stack of a running Python process (py-spy, if installed)."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        return "(py-spy is not installed)"
    res = subprocess.run([str(spy), "dump", "--pid", str(pid)], capture_output=True,
                         text=True, timeout=60)
    return (res.stdout + res.stderr)[-8000:]


@contextlib.contextmanager
def rss_sampler(pids: dict[int, int], interval_s: float = 0.1) -> Iterator[dict[int, int]]:
    """Peak RSS (VmHWM, KiB) of each process, sampled until the block ends or it exits."""
    peaks: dict[int, int] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for node, pid in pids.items():
                rss = peak_rss_kib(pid)
                if rss is not None:
                    peaks[node] = max(rss, peaks.get(node, 0))
            stop.wait(interval_s)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield peaks
    finally:
        stop.set()
        t.join()


def nfs_errors(metrics_url: str) -> dict[str, float]:
    """A node's NFS calls answered with an error so far, by procedure and error (its
    /metrics: objcache_nfs_op_errors_total), e.g. {"WRITE NFS3ERR_JUKEBOX": 1.0}."""
    import urllib.request

    with urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for m in _NFS_ERRORS.finditer(text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        key = f"{labels.get('proc')} {labels.get('error')}"
        out[key] = out.get(key, 0.0) + float(m.group(2))
    return out


def errors_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v > before.get(k, 0.0)}
