"""The campaign's workload and its model: several NFS clients doing random file operations,
each acknowledgement recorded, and what the tree must hold afterwards.

Rules:
- Client k works in its own directory /c<k> (and /c<k>/d): its operations are sequential, so
  the model of its files is exact. Names come from a small pool, so names are reused: writes
  over existing files, renames onto existing names, deletes, re-creates.
- Each path in the model is KNOWN (its content, or absent) or UNKNOWN. An acknowledged
  operation makes its paths KNOWN; an operation that failed (error or timeout: not
  acknowledged) makes them UNKNOWN, because it may or may not have taken effect. A later
  acknowledged whole-file write or delete makes a path KNOWN again.
- A read of a KNOWN path that returns other bytes is a failure (an acknowledged write lost or
  changed); a read that errors is not (availability, counted apart).
- Every operation is appended to the op log (JSON lines): client, sequence, operation,
  arguments, sizes and digests, result, time — the record a failure is investigated from.
- Sizes are mixed: empty, inline (at most 16 KiB, kept in LevelDB), one chunk, and several
  chunks (the campaign's chunks are 256 KiB, so a 700 KB file spans three groups' chunks).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faultnfs import FaultNfs

UNKNOWN = "<unknown>"  # the path may hold anything (an operation on it was not acknowledged);
# a str, so that it survives the pipe from a client process (the model holds bytes or None)
SIZES = (0, 1, 100, 4000, 16384, 16385, 70000, 262143, 262145, 700001, 1100000)
SIZE_WEIGHTS = (2, 3, 6, 6, 2, 2, 5, 2, 2, 2, 1)
NAMES = tuple(f"f{i}" for i in range(6)) + tuple(f"d/f{i}" for i in range(4))


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass
class Stats:
    ops: Counter = field(default_factory=Counter)  # acknowledged, by kind
    failed_ops: Counter = field(default_factory=Counter)  # not acknowledged, by kind
    reads_checked: int = 0
    failures: list[str] = field(default_factory=list)


class Client:
    """One client process: a mount on some node, a directory, a model, an op log.

    A process, not a thread: libnfs 5.0 can crash (a SIGSEGV inside libnfs.so.13 was seen
    twice when a node was killed under a mount), and that must cost the operation under way,
    not the campaign. The child sends each model change and count to the parent as it goes
    (_report -> _collect)."""

    def __init__(self, k: int, seed: int, urls: list[str], log: OpLog, stats: Stats) -> None:
        self.k = k
        self.rng = random.Random(seed)
        self.urls = urls  # every node's export URL (a dead one fails at once: another is tried)
        self.log = log
        self.stats = stats
        self.dir = f"/c{k}"
        self.model: dict[str, object] = dict.fromkeys(NAMES)  # None: absent
        self.nfs: FaultNfs | None = None
        self.seq = 0
        ctx = multiprocessing.get_context("fork")
        self.stop = ctx.Event()
        self._conn, self._child_conn = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=self._child, args=(self._child_conn,),
                                name=f"client-{k}", daemon=True)
        self.crashed = ""
        self._under_way: tuple[str, ...] = ()

    def start(self) -> None:
        self._drop_mount()  # the child makes its own
        self.proc.start()
        self._child_conn.close()  # the child's end: EOF here once the child is gone
        self._collector = threading.Thread(target=self._collect, daemon=True)
        self._collector.start()

    def _child(self, conn: Any) -> None:
        self._pipe = conn
        self.stats = Stats()  # the parent counts what the child sends (_collect)
        code = 0
        try:
            self._run()
        except BaseException:
            code = 3
        finally:
            os._exit(code)  # no atexit handlers of the parent's (they tear the network down)

    def _send(self, *what: object) -> None:
        """To the parent, as the child goes: the model changes and counts (a crash of the
        child then loses only the operation under way, whose paths become UNKNOWN)."""
        self._pipe.send(what)

    def _collect(self) -> None:
        """In the parent: apply what the child sends, until it exits."""
        while True:
            try:
                kind, *rest = self._conn.recv()
            except (EOFError, OSError):
                return
            if kind == "begin":  # an operation on these paths is under way
                self._under_way = rest[0]
            elif kind == "model":
                self.model.update(rest[0])
                self._under_way = ()
            elif kind == "count":
                field_, key, n = rest
                if field_ == "ops":
                    self.stats.ops[key] += n
                elif field_ == "failed_ops":
                    self.stats.failed_ops[key] += n
                else:
                    self.stats.reads_checked += n
            elif kind == "failure":
                self.stats.failures.append(rest[0])

    def finish(self, timeout_s: float) -> None:
        """Stop the child and wait for it; a child that crashed or hung is noted, and the
        paths of the operation it was doing become UNKNOWN."""
        self.stop.set()
        self.proc.join(timeout_s)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)
            self.crashed = f"client {self.k} hung (an NFS call did not return in time)"
        elif self.proc.exitcode != 0:
            self.crashed = (f"client {self.k} crashed (exit {self.proc.exitcode}: the NFS "
                            "client library, not the server)")
        self._collector.join(10)
        for name in getattr(self, "_under_way", ()):
            self.model[name] = UNKNOWN

    # -- the loop -----------------------------------------------------------------------------

    def setup(self) -> None:
        """The client's directories (acknowledged before the faults begin)."""
        nfs = self._mount()
        for d in (self.dir, f"{self.dir}/d"):
            nfs.mkdir(d)

    def _mount(self) -> FaultNfs:
        if self.nfs is None:
            self.nfs = FaultNfs(self.rng.choice(self.urls), timeout_ms=0)
        return self.nfs

    def _drop_mount(self) -> None:
        if self.nfs is not None:
            self.nfs.close()
            self.nfs = None

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.step()
            except Exception as e:  # a bug in the workload itself: stop and say so
                text = f"client {self.k}: workload crashed: {e!r}"
                self.stats.failures.append(text)
                self._report("failure", text)
                return

    def step(self) -> None:
        kind, name, args = self._choose()
        self.seq += 1
        path = f"{self.dir}/{name}"
        touched = (name, args["to"]) if kind == "rename" else (name,)
        self._report("begin", touched)
        t0 = time.monotonic()
        try:
            nfs = self._mount()
            result = self._apply(nfs, kind, path, name, args)
        except OSError as e:
            self._unacknowledged(kind, name, args, str(e))
            self._report("model", {n: self.model[n] for n in touched})
            self._drop_mount()
            self.log.write(self.k, self.seq, kind, path, args, f"error: {e}", t0)
            self.stop.wait(0.2)  # a failing cluster is not hammered
            return
        self.stats.ops[kind] += 1
        self._report("count", "ops", kind, 1)
        self._report("model", {n: self.model[n] for n in touched})
        self.log.write(self.k, self.seq, kind, path, args, result, t0)

    def _report(self, *what: object) -> None:
        if getattr(self, "_pipe", None) is not None:  # in the child process
            self._send(*what)

    def _choose(self) -> tuple[str, str, dict]:
        rng = self.rng
        name = rng.choice(NAMES)
        state = self.model[name]
        if state is None or state == UNKNOWN or rng.random() < 0.15:
            size = rng.choices(SIZES, SIZE_WEIGHTS)[0]
            return "write", name, {"data": rng.randbytes(size)}
        assert isinstance(state, bytes)
        kind = rng.choices(("read", "pwrite", "truncate", "rename", "unlink", "write"),
                           (4, 2, 2, 2, 1, 2))[0]
        if kind == "pwrite":
            off = rng.randrange(0, len(state) + 3000)
            return kind, name, {"offset": off, "data": rng.randbytes(rng.choice((1, 500,
                                                                                 70000)))}
        if kind == "truncate":
            return kind, name, {"size": rng.choice((0, len(state) // 2, len(state) + 30000,
                                                    rng.randrange(0, 300000)))}
        if kind == "rename":
            return kind, name, {"to": rng.choice([n for n in NAMES if n != name])}
        if kind == "write":
            return kind, name, {"data": rng.randbytes(rng.choices(SIZES, SIZE_WEIGHTS)[0])}
        return kind, name, {}

    def _apply(self, nfs: FaultNfs, kind: str, path: str, name: str, args: dict) -> str:
        m = self.model
        if kind == "write":
            nfs.write_file(path, args["data"])
            m[name] = args["data"]
        elif kind == "read":
            got = nfs.read_file(path)
            self.stats.reads_checked += 1
            self._report("count", "reads", "", 1)
            if got != m[name]:
                self.log.dump(f"c{self.k}-op{self.seq}", got, m[name])
                text = (f"client {self.k} op {self.seq}: read {path}: {len(got)} bytes "
                        f"{digest(got)}, acknowledged {len(m[name])} bytes {digest(m[name])}")
                self.stats.failures.append(text)
                self._report("failure", text)
            return f"ok {len(got)} {digest(got)}"
        elif kind == "pwrite":
            old = m[name]
            nfs.pwrite(path, args["offset"], args["data"])
            off, data = args["offset"], args["data"]
            base = old + bytes(max(0, off - len(old)))
            m[name] = base[:off] + data + base[off + len(data):]
        elif kind == "truncate":
            nfs.truncate(path, args["size"])
            old, size = m[name], args["size"]
            m[name] = old[:size] + bytes(max(0, size - len(old)))
        elif kind == "rename":
            nfs.rename(path, f"{self.dir}/{args['to']}")
            m[args["to"]], m[name] = m[name], None
        elif kind == "unlink":
            nfs.unlink(path)
            m[name] = None
        return "ok"

    def _unacknowledged(self, kind: str, name: str, args: dict, error: str) -> None:
        self.stats.failed_ops[kind] += 1
        self._report("count", "failed_ops", kind, 1)
        if kind == "read":
            return  # a read changes nothing
        self.model[name] = UNKNOWN
        if kind == "rename":
            self.model[args["to"]] = UNKNOWN

    # -- the check ------------------------------------------------------------------------------

    def observe(self, nfs: FaultNfs, listed: Callable[[str], set[str]],
                failures: list[str]) -> dict[str, bytes]:
        """The client's tree as the cluster holds it now, checked against the model: every
        KNOWN path as acknowledged (what differs goes to `failures`). Returns the tree
        (relative names -> bytes)."""
        tree: dict[str, bytes] = {}
        present = {n for n in listed(self.dir) if n != "d"} | {
            f"d/{n}" for n in listed(f"{self.dir}/d")}
        for extra in sorted(present - set(NAMES)):
            failures.append(f"client {self.k}: {self.dir}/{extra} exists; "
                                       "the workload never made it")
        for name in NAMES:
            want = self.model[name]
            path = f"{self.dir}/{name}"
            if name in present:
                tree[name] = nfs.read_file(path)
            if want == UNKNOWN:
                continue
            self.stats.reads_checked += 1
            got = tree.get(name)
            if got != want:
                if got is not None and isinstance(want, bytes):
                    self.log.dump(f"c{self.k}-final-{name.replace('/', '_')}", got, want)
                failures.append(
                    f"client {self.k}: {path} holds "
                    f"{'nothing' if got is None else f'{len(got)} bytes {digest(got)}'}, "
                    f"acknowledged: {'absent' if want is None else f'{len(want)} bytes'}"
                    f"{'' if not isinstance(want, bytes) else ' ' + digest(want)}")
        return tree


class OpLog:
    """Every operation and its result, one JSON line each (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "a", buffering=1)  # noqa: SIM115 (open for the whole run)
        self._lock = threading.Lock()
        self.t0 = time.monotonic()

    def write(self, client: int, seq: int, kind: str, path: str, args: dict, result: str,
              started: float) -> None:
        row = {"c": client, "seq": seq, "op": kind, "path": path,
               **{k: (f"{len(v)}:{digest(v)}" if isinstance(v, bytes) else v)
                  for k, v in args.items()},
               "result": result, "t": round(started - self.t0, 3),
               "ms": round((time.monotonic() - started) * 1000)}
        with self._lock:
            self._f.write(json.dumps(row) + "\n")

    def dump(self, name: str, got: bytes, want: bytes) -> None:
        """A mismatch's bytes, beside the op log, for the investigation."""
        (self.path.parent / f"mismatch-{name}.got").write_bytes(got)
        (self.path.parent / f"mismatch-{name}.want").write_bytes(want)

    def note(self, text: str) -> None:
        with self._lock:
            self._f.write(json.dumps({"note": text, "t": round(time.monotonic() - self.t0, 3)})
                          + "\n")

    def close(self) -> None:
        self._f.close()
