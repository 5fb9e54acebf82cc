"""Fuzzing the ONC RPC layer in process: whole call records, and byte streams cut into records,
through the Dispatcher over NFSv3, MOUNT v3 and portmap v2 on the real single-node backend
(server/fs LocalBackend on a temporary directory).

Every record gets exactly the reply wire.expect and wire.check_reply require (RFC 5531 §9: the
right accept or reject status, a result the client codec reads to its end), or none when none
is due; every stream gives the records that an all-at-once reading of RFC 5531 §11 gives, or
RecordError (the server closes the connection). Nothing else may escape, no call may be
answered SYSTEM_ERR, and each case is bounded in time.

Hypothesis runs in a worker thread and hands each case to the test's trio loop
(trio.from_thread), so one backend serves every example.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from fuzzlib import CASE_TIMEOUT_S, count, fuzz_settings, watchdog
from hypothesis import given, note, target
from streams import read_like_the_server, reference_records, streams
from wire import PROCEDURES, check_reply, expect, records

from nfs_gateway.backend import CreateMode, Cred, FileSlice, SetAttrs, StableHow
from nfs_gateway.dispatch import Dispatcher, Pending
from nfs_gateway.drc import DuplicateRequestCache
from nfs_gateway.exports import Export, ExportTable
from nfs_gateway.limits import RpcLimits
from nfs_gateway.mount import make_mount_program
from nfs_gateway.nfs3.program import handle_maker, make_nfs3_program
from nfs_gateway.portmap import IPPROTO_TCP, IPPROTO_UDP, make_portmap_program, mappings_for
from nfs_gateway.program import Program
from nfs_gateway.sendpath import release_slices
from server.fs.backend import LocalBackend

CLIENT = ("127.0.0.1", 700)
ROOT = Cred(0, 0)
MAX_RECORD_BYTES = 64 * 1024  # small, so that oversized records are cheap to make
# server.py answers SYSTEM_ERR instead of a reply that does not fit one datagram.
MAX_UDP_REPLY_BYTES = RpcLimits().max_udp_reply_bytes
BIG_DIR_ENTRIES = 400  # READDIR(PLUS) of them all takes more than a datagram


@dataclass
class Front:
    """The in-process front end: one dispatcher over the three programs, and real handles."""

    dispatcher: Dispatcher
    programs: dict[int, Program]
    handles: list[bytes]

    async def answer(self, record: bytes, transport: str) -> bytes | None:
        """What the server does with one record: the fast path, else a task (server.py)."""
        d = self.dispatcher
        with trio.fail_after(CASE_TIMEOUT_S):
            data = bytearray(record)
            reply = d.dispatch_nowait(data, CLIENT, transport)
            if isinstance(reply, Pending):
                reply = await d.finish(reply, data, CLIENT, transport)
        if reply is None:
            return None
        try:
            return b"".join(b.read() if type(b) is FileSlice else bytes(b) for b in reply)
        finally:
            release_slices(reply)

    async def check(self, record: bytes, transport: str = "tcp") -> int:
        """Check the reply to `record`; its size (0: none)."""
        faults = self.dispatcher.counters["system_err"]
        reply = await self.answer(record, transport)
        assert self.dispatcher.counters["system_err"] == faults, "answered SYSTEM_ERR"
        check_reply(record, reply, expect(record), self.programs)
        if transport == "udp" and reply is not None:
            assert len(reply) <= MAX_UDP_REPLY_BYTES, f"a UDP reply of {len(reply)} bytes"
        return 0 if reply is None else len(reply)


async def _populate(be: LocalBackend) -> dict[str, object]:
    """/ holds many/ (400 files), d/, ro/ (exported read-only), f (500 bytes) and l -> f."""
    root = await be.export_root("/")
    made = {"root": root}
    # In the order of the handle pool: hypothesis draws the first ones more often.
    for name in (b"many", b"d", b"ro"):
        made[name.decode()] = (await be.mkdir(ROOT, root, name, SetAttrs(mode=0o755))).fid
    for i in range(BIG_DIR_ENTRIES):
        name = (b"entry-%04d-" % i).ljust(255, b"x")  # long names: large READDIR replies
        await be.create(ROOT, made["many"], name, CreateMode.UNCHECKED, SetAttrs(), None)
    f = await be.create(ROOT, root, b"f", CreateMode.UNCHECKED, SetAttrs(mode=0o666), None)
    await be.write(ROOT, f.fid, 0, memoryview(b"hello" * 100), StableHow.FILE_SYNC)
    made["f"] = f.fid
    made["l"] = (await be.symlink(ROOT, root, b"l", b"f", SetAttrs())).fid
    return made


@contextlib.asynccontextmanager
async def open_front(path: Path) -> AsyncIterator[Front]:
    """The three programs over a LocalBackend at `path`: exports / and /ro, see _populate."""
    async with LocalBackend(path) as be:
        rw = Export("/", 1, root_squash=False, insecure=True)
        ro = Export("/ro", 2, read_only=True, insecure=True)
        exports = ExportTable([rw, ro])
        made = await _populate(be)
        mk = handle_maker(be)
        handles = [mk(rw, fid) for fid in made.values()] + [mk(ro, made["ro"])]
        nfs = make_nfs3_program(be, exports)
        mount = make_mount_program(be, exports, mk)
        maps = mappings_for([nfs, mount], 2049, [IPPROTO_TCP, IPPROTO_UDP])
        programs = [nfs, mount, make_portmap_program(lambda: maps)]
        dispatcher = Dispatcher(programs, DuplicateRequestCache())
        yield Front(dispatcher, {p.prog: p for p in programs}, handles)


@pytest.fixture
async def front(tmp_path: Path) -> AsyncIterator[Front]:
    async with open_front(tmp_path / "fs") as f:
        yield f


async def test_every_record_gets_the_right_reply(front: Front) -> None:
    # Every procedure on each transport gets its own run: its own examples, its own search for
    # large replies (hypothesis favours the first of a sampled_from: no choice left to it).
    for only in PROCEDURES:
        for transport in ("tcp", "udp"):
            await trio.to_thread.run_sync(_fuzz_procedure, front, only, transport)


def _fuzz_procedure(front: Front, only: tuple[int, int], transport: str) -> None:
    @fuzz_settings(15)
    @given(record=records(front.handles, only))
    def prop(record: bytes) -> None:
        note(f"calls (prog, proc) {only} over {transport} (the record may be mutated anywhere)")
        count("rpc-records")
        with watchdog():
            size = trio.from_thread.run(front.check, record, transport)
        # Steer towards large replies (READ, READDIR, READDIRPLUS, EXPORT): where limits are.
        target(size, label="reply bytes")

    prop()


# --- streams: record marking (RFC 5531 §11) in front of the dispatcher ------------------------


async def test_every_stream_is_cut_into_records_and_answered(front: Front) -> None:
    @fuzz_settings(150)
    @given(case=streams(front.handles, MAX_RECORD_BYTES))
    def prop(case: tuple[bytes, list[int]]) -> None:
        stream, reads = case
        count("rpc-streams")
        want, want_error = reference_records(stream, MAX_RECORD_BYTES)
        got, error = read_like_the_server(stream, reads, MAX_RECORD_BYTES)
        assert error == want_error
        # A receive that completes records and then meets a bad marker loses those records
        # with the connection: the client retries them on a new one.
        assert got == want if not error else got == want[: len(got)]
        with watchdog():
            for record in got:
                trio.from_thread.run(front.check, record, "tcp")

    await trio.to_thread.run_sync(prop)
