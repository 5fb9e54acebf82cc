"""The one reader every system is measured with: list the model directory, then read every
file's bytes in full with a small pool of workers (largest files first), hashing each with
sha256 and comparing with the manifest. A missing, extra, short or wrong file fails the read.

Two sources do the same work per file, read it in 4 MiB pieces and sha256 them as they come:
a directory (a FUSE mount, or any local path) read with readinto and hashed with hashlib, and
an NFS export read through libnfs (nfsread.c, one process per worker, each with its own mount;
the kernel NFS client cannot be used on this host) and hashed with OpenSSL in that process,
which is what hashlib calls. Piping the bytes to Python to hash them there (as before) added a
pipe and two copies of every byte to the NFS rows only: 2.9 core-seconds of reader for 2 GiB
against 2.1 for the same reads and hashes in one process, on a 2-core host whose cores the
servers under test need too.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .common import MiB, PeerError

CHUNK_BYTES = 4 * MiB
WORKERS = 4


@dataclass(frozen=True)
class ReadResult:
    seconds: float
    bytes: int
    files: int


class DirSource:
    """Files under a local directory (a mount point)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def listing(self) -> dict[str, int]:
        out = {}
        for dirpath, _dirs, files in os.walk(self.root):
            for f in files:
                p = os.path.join(dirpath, f)
                out[os.path.relpath(p, self.root)] = os.stat(p).st_size
        return out

    def read_sum(self, rel: str) -> tuple[int, str]:
        """(bytes read, sha256 hex) of the file at `rel`."""
        h, got = hashlib.sha256(), 0
        buf = bytearray(CHUNK_BYTES)
        view = memoryview(buf)
        with open(self.root / rel, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
                got += n
        return got, h.hexdigest()

    def close(self) -> None:
        pass


class NfsSource:
    """Files under `root` of an NFS export, through nfsread (one libnfs mount per thread)."""

    def __init__(self, exe: Path, export_url: str, root: str) -> None:
        self.exe, self.url, self.root = str(exe), export_url, root
        self.local = threading.local()
        self.procs: list[subprocess.Popen] = []
        self.lock = threading.Lock()

    def listing(self) -> dict[str, int]:
        res = subprocess.run([self.exe, self.url, "walk", self.root], capture_output=True,
                             text=True, timeout=600)
        lines = res.stdout.splitlines()
        if res.returncode != 0 or not lines or lines[-1] != ".":
            raise PeerError(f"nfsread walk exited {res.returncode}: {res.stderr[-800:]}")
        return {rel: int(size) for size, rel in (ln.split(" ", 1) for ln in lines[:-1])}

    def _proc(self) -> subprocess.Popen:
        proc = getattr(self.local, "proc", None)
        if proc is None:
            proc = subprocess.Popen([self.exe, self.url, "sum", self.root], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
            self.local.proc = proc
            with self.lock:
                self.procs.append(proc)
        return proc

    def read_sum(self, rel: str) -> tuple[int, str]:
        """(bytes read, sha256 hex) of the file at `rel`, both from nfsread's `sum`."""
        proc = self._proc()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(rel.encode() + b"\n")
        proc.stdin.flush()
        answer = proc.stdout.readline().decode()
        if not answer or answer.startswith("E "):
            err = answer[2:].strip() or (proc.stderr.read(800) if proc.poll() is not None else b"")
            raise PeerError(f"nfsread {rel}: {err or 'no answer'}")
        size, hexdigest = answer.split()
        return int(size), hexdigest

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin:
                proc.stdin.close()  # nfsread exits at the end of its input
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # a read cut short by an error or ^C
                proc.kill()
                proc.wait()
        self.procs.clear()


def _read_one(source, rel: str, want: dict) -> int:
    got, hexdigest = source.read_sum(rel)
    if got != want["size"] or hexdigest != want["sha256"]:
        raise PeerError(f"{rel}: read {got} bytes, sha256 {hexdigest[:12]}; expected "
                        f"{want['size']} bytes, {want['sha256'][:12]}")
    return got


def read_tree(source, manifest: dict[str, dict], workers: int = WORKERS) -> ReadResult:
    """List and read the whole model from source; checks every byte; the seconds include both."""
    t0 = time.perf_counter()
    try:
        listing = source.listing()
        if set(listing) != set(manifest):
            missing, extra = set(manifest) - set(listing), set(listing) - set(manifest)
            raise PeerError(f"listing differs: missing {sorted(missing)[:5]} ({len(missing)}), "
                            f"extra {sorted(extra)[:5]} ({len(extra)})")
        order = sorted(manifest, key=lambda n: -manifest[n]["size"])
        pool = ThreadPoolExecutor(workers)
        try:
            total = sum(pool.map(lambda n: _read_one(source, n, manifest[n]), order))
        finally:
            # on an error or ^C, do not wait for the reads in flight (the caller unmounts)
            pool.shutdown(wait=False, cancel_futures=True)
    finally:
        source.close()
    return ReadResult(time.perf_counter() - t0, total, len(manifest))


def verify_tree(root: Path, manifest: dict[str, dict]) -> None:
    """The same check on a local copy, untimed (the direct copy's result)."""
    read_tree(DirSource(root), manifest)
