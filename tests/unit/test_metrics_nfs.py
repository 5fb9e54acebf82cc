"""NFS procedure metrics: what the dispatcher records per call (nfs_gateway/opstats.py), and
how server/metrics.py exposes it (latency histograms, errors by nfsstat3 or RPC error, refused
calls), checked on the exposition text a scraper reads."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nfs_gateway.backend import Cred
from nfs_gateway.dispatch import Dispatcher, Pending
from nfs_gateway.drc import DuplicateRequestCache
from nfs_gateway.exports import Export, ExportTable
from nfs_gateway.mount import MountStat, make_mount_program
from nfs_gateway.nfs3 import types as t
from nfs_gateway.nfs3.client_codec import CLIENT_CODECS
from nfs_gateway.nfs3.const import NFS_PROGRAM, Proc, Stat
from nfs_gateway.nfs3.program import handle_maker, make_nfs3_program
from nfs_gateway.opstats import LATENCY_BOUNDS_S, OpStats
from nfs_gateway.program import AUTH_SYS, NOT_READY, CallContext, Procedure, Program
from nfs_gateway.rpc import AcceptStat, OpaqueAuth, encode_authsys, encode_call
from nfs_gateway.server import Listener, RpcServer
from nfs_gateway.xdr import Packer, Unpacker
from server import metrics
from server.fs.backend import LocalBackend

CLIENT = ("127.0.0.1", 800)
AUTH = OpaqueAuth(AUTH_SYS, encode_authsys(Cred(0, 0)))
STEP_S = 0.003  # what the test clock advances per reading: each call reads it twice


class StepClock:
    """Advances STEP_S at every reading: a call's latency is STEP_S."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += STEP_S
        return self.t


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[LocalBackend]:
    async with LocalBackend(tmp_path / "fs") as be:
        yield be


def nfs_dispatcher(backend: LocalBackend, drc: DuplicateRequestCache | None = None) -> Dispatcher:
    exports = ExportTable([Export("/", 1, root_squash=False)])
    nfs = make_nfs3_program(backend, exports)
    mount = make_mount_program(backend, exports, handle_maker(backend))
    return Dispatcher([nfs, mount], drc, StepClock())


def nfs_call(xid: int, proc: Proc, args: Any) -> bytes:
    p = Packer()
    CLIENT_CODECS[proc][0](p, args)
    return encode_call(xid, NFS_PROGRAM, 3, proc, p.get_bytes(), AUTH)


async def root_fh(backend: LocalBackend) -> bytes:
    export = Export("/", 1, root_squash=False)
    return handle_maker(backend)(export, await backend.export_root("/"))


def scrape(*families: Any) -> dict[str, Any]:
    """The exposition text of `families`, parsed back as a scraper reads it: name -> family."""

    class Collector:
        def collect(self) -> Iterator[Any]:
            yield from families

    registry = CollectorRegistry()
    registry.register(Collector())
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(family: Any, suffix: str, **labels: str) -> float:
    found = [s.value for s in family.samples
             if s.name == family.name + suffix and s.labels == labels]
    assert len(found) == 1, (suffix, labels, family.samples)
    return found[0]


async def test_each_answered_call_is_timed_and_its_error_counted(backend: LocalBackend) -> None:
    d = nfs_dispatcher(backend)
    root = await root_fh(backend)
    assert await d.dispatch(nfs_call(1, Proc.GETATTR, t.FhArgs(root)), CLIENT)
    assert await d.dispatch(nfs_call(2, Proc.LOOKUP, t.DirOpArgs(root, b"nope")), CLIENT)
    assert await d.dispatch(nfs_call(3, Proc.GETATTR, t.FhArgs(b"\1\2")), CLIENT)
    getattr_, lookup = d.ops["nfs", "GETATTR"], d.ops["nfs", "LOOKUP"]
    at = LATENCY_BOUNDS_S.index(0.005)  # STEP_S falls in the 5 ms bucket
    assert getattr_.buckets[at] == 2 and getattr_.calls == 2
    assert getattr_.sum_s == pytest.approx(2 * STEP_S)
    assert getattr_.errors == {Stat.BADHANDLE: 1}
    assert lookup.calls == 1 and lookup.errors == {Stat.NOENT: 1}
    assert d.ops["nfs", "READ"].calls == 0 and d.ops["mount", "MNT"].calls == 0


async def test_rpc_errors_of_a_known_procedure_are_its_errors(backend: LocalBackend) -> None:
    d = nfs_dispatcher(backend)
    truncated = encode_call(1, NFS_PROGRAM, 3, Proc.GETATTR, b"\0\0", AUTH)
    assert await d.dispatch(truncated, CLIENT)
    assert d.ops["nfs", "GETATTR"].errors == {AcceptStat.GARBAGE_ARGS: 1}
    # Refused before a procedure is known: counted by reason, no procedure's call.
    assert await d.dispatch(encode_call(2, NFS_PROGRAM, 3, 99, b"", AUTH), CLIENT)
    assert await d.dispatch(encode_call(3, 400999, 1, 0, b"", AUTH), CLIENT)
    assert sum(st.calls for st in d.ops.values()) == 1
    families = scrape(*metrics.rpc_families(dict(d.counters)))
    rejected = families["objcache_rpc_rejected"]
    assert sample(rejected, "_total", reason="proc_unavail") == 1
    assert sample(rejected, "_total", reason="prog_unavail") == 1
    assert sample(rejected, "_total", reason="auth_error") == 0


async def test_a_handler_fault_is_system_err(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(ctx: CallContext, args: None) -> None:
        raise RuntimeError("handler bug")

    proc = Procedure("BROKEN", lambda u: None, broken, lambda p, r: None)
    d = Dispatcher([Program(400100, "test", {1: {1: proc}})], None, StepClock())
    assert await d.dispatch(encode_call(1, 400100, 1, 1), CLIENT)
    st = d.ops["test", "BROKEN"]
    assert st.calls == 1 and st.errors == {AcceptStat.SYSTEM_ERR: 1}


async def test_the_fast_path_records_once_and_not_ready_records_nothing() -> None:
    ready = [True]

    async def handle(ctx: CallContext, v: int) -> int:
        return v

    def handle_nowait(ctx: CallContext, v: int) -> Any:
        return v if ready[0] else NOT_READY

    proc = Procedure("ECHO", Unpacker.unpack_uint, handle, Packer.pack_uint, True, handle_nowait)
    d = Dispatcher([Program(400101, "test", {1: {1: proc}})], None, StepClock())
    call = encode_call(1, 400101, 1, 1, b"\0\0\0\7")
    assert not isinstance(d.dispatch_nowait(call, CLIENT), Pending)
    ready[0] = False
    pending = d.dispatch_nowait(call, CLIENT)
    assert isinstance(pending, Pending)
    st = d.ops["test", "ECHO"]
    assert st.calls == 1  # NOT_READY: the caller runs finish, which records it
    d.now()  # a step passes before a task runs finish: the call waited that long too
    assert await d.finish(pending, call, CLIENT)
    # Its latency counts from dispatch_nowait's clock reading: two steps, not one.
    assert st.calls == 2 and st.sum_s == pytest.approx(3 * STEP_S) and not st.errors


async def test_a_replayed_reply_is_not_another_call(backend: LocalBackend) -> None:
    d = nfs_dispatcher(backend, DuplicateRequestCache())
    root = await root_fh(backend)
    mkdir = nfs_call(7, Proc.MKDIR, t.MkdirArgs(t.DirOpArgs(root, b"d"), t.SetAttrs()))
    first = await d.dispatch(mkdir, CLIENT)
    assert await d.dispatch(mkdir, CLIENT) == first  # a retransmission (RFC 5531 §8)
    assert d.ops["nfs", "MKDIR"].calls == 1 and not d.ops["nfs", "MKDIR"].errors
    assert d.counters["drc_replay"] == 1


async def test_exposition_histograms_every_procedure_and_names_nfsstat3(
    backend: LocalBackend,
) -> None:
    d = nfs_dispatcher(backend)
    root = await root_fh(backend)
    for xid in range(3):
        await d.dispatch(nfs_call(xid, Proc.LOOKUP, t.DirOpArgs(root, b"nope")), CLIENT)
    families = scrape(*metrics.op_families(d.ops.values()))
    seconds, errors = families["objcache_nfs_op_seconds"], families["objcache_nfs_op_errors"]
    assert seconds.type == "histogram" and errors.type == "counter"
    assert sample(seconds, "_count", program="nfs", proc="LOOKUP") == 3
    assert sample(seconds, "_sum", program="nfs", proc="LOOKUP") == pytest.approx(3 * STEP_S)
    assert sample(seconds, "_bucket", program="nfs", proc="LOOKUP", le="0.0025") == 0
    assert sample(seconds, "_bucket", program="nfs", proc="LOOKUP", le="0.005") == 3  # le: <=
    assert sample(seconds, "_bucket", program="nfs", proc="LOOKUP", le="+Inf") == 3
    assert sample(errors, "_total", program="nfs", proc="LOOKUP", error="NFS3ERR_NOENT") == 3
    # Every procedure has its series from the start, calls or not (RFC 1813's 22, MOUNT's 6).
    procs = {s.labels["proc"] for s in seconds.samples if s.labels["program"] == "nfs"}
    assert procs == {p.name for p in Proc}
    assert sample(seconds, "_count", program="mount", proc="EXPORT") == 0


def test_error_labels() -> None:
    assert metrics.error_label(Stat.JUKEBOX) == "NFS3ERR_JUKEBOX"
    assert metrics.error_label(AcceptStat.GARBAGE_ARGS) == "GARBAGE_ARGS"
    assert metrics.error_label(MountStat.MNT3ERR_NOENT) == "MNT3ERR_NOENT"


def test_opstats_keeps_a_bounded_set_of_error_kinds() -> None:
    st = OpStats("nfs", "X")
    for status in range(1, 200):
        st.record(20.0, status)  # slower than every bound: the last bucket
    assert len(st.errors) == 64 and st.buckets[-1] == 199


async def test_the_node_registry_exports_the_watched_server(backend: LocalBackend) -> None:
    exports = ExportTable([Export("/", 1, clients=(ipaddress.ip_network("0.0.0.0/0"),))])
    nfs = make_nfs3_program(backend, exports)
    server = RpcServer([Listener("127.0.0.1", 0, (nfs,))])
    metrics.watch_rpc(server)
    await server.dispatchers[0].dispatch(nfs_call(1, Proc.NULL, None), CLIENT)
    text = generate_latest(metrics.REGISTRY).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    null_calls = sample(families["objcache_nfs_op_seconds"], "_count", program="nfs",
                        proc="NULL")
    assert null_calls == 1
    # The server's clock is a real one (time.perf_counter): the call took some time.
    assert sample(families["objcache_nfs_op_seconds"], "_sum", program="nfs", proc="NULL") > 0
    assert sample(families["objcache_rpc_connections"], "") == 0
