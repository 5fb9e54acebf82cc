"""Fuzzing a real node: `objcache serve` as its own process (tests/serverproc.py), fed fuzzed
byte streams over TCP and fuzzed datagrams over UDP, on its NFS+MOUNT port and its portmap port.

What must hold, case by case: every reply is one a correct server gives to one of the records
that the stream holds (wire.check_reply), every answerable record of a stream that ends cleanly
is answered, the server closes each connection once the client has sent everything (no hang:
each case is bounded). And after the whole run: the process still runs, answers NULL over TCP
and UDP on both ports, serves a real client (libnfs `nfs-ls`), logged no stack trace, and its
resident memory grew by less than RSS_GROWTH_LIMIT_KIB.
"""

from __future__ import annotations

import re
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from fuzzlib import CASE_TIMEOUT_S, count, fuzz_settings, watchdog
from hypothesis import given
from hypothesis import strategies as st
from serverproc import ObjcacheServer, free_port, nfs_cat, nfs_cp, nfs_ls
from streams import reference_records, streams
from wire import SERVED, check_reply, decoder_programs, expect, records, xdr_string

from nfs_gateway.backend import CreateMode, Cred, SetAttrs, StableHow
from nfs_gateway.mount import MOUNT_PROG
from nfs_gateway.nfs3 import types as t
from nfs_gateway.nfs3.client_codec import CLIENT_CODECS
from nfs_gateway.nfs3.const import NFS_PROGRAM, NFS_V3, Proc
from nfs_gateway.portmap import PMAP_PROG
from nfs_gateway.program import AUTH_SYS
from nfs_gateway.record import RecordDecoder
from nfs_gateway.rpc import OpaqueAuth, decode_reply, encode_authsys, encode_call
from nfs_gateway.xdr import Packer

pytestmark = pytest.mark.integration

MAX_RECORD_BYTES = (1 << 20) + (64 << 10)  # the node's default limits.max_record_bytes
RSS_GROWTH_LIMIT_KIB = 64 * 1024
PROGRAMS = decoder_programs()
NFS_SERVED = {p: SERVED[p] for p in (NFS_PROGRAM, MOUNT_PROG)}
PMAP_SERVED = {PMAP_PROG: SERVED[PMAP_PROG]}


def vm_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert m is not None
    return int(m.group(1))


# --- a blocking client: one connection per stream, one socket per datagram burst ---------------


def tcp_exchange(port: int, stream: bytes) -> tuple[list[bytes], bool]:
    """Send `stream`, half-close, read until the server closes: (reply records, reset)."""
    with socket.create_connection(("127.0.0.1", port), timeout=CASE_TIMEOUT_S) as s:
        try:
            s.sendall(stream)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # EPIPE, ECONNRESET, ENOTCONN: the server closed part way (a marker
            pass  # over its limit), so the rest of the stream could not go out
        decoder, replies, deadline = RecordDecoder(1 << 30), [], time.monotonic() + CASE_TIMEOUT_S
        while True:
            try:
                data = s.recv(1 << 20)
            except ConnectionResetError:
                return [bytes(r) for r in replies], True
            except TimeoutError:
                raise AssertionError("the server neither answered nor closed: a hang") from None
            if not data:
                return [bytes(r) for r in replies], False
            replies += decoder.feed(data)
            assert time.monotonic() < deadline, "the server keeps the connection open: a hang"


def null_call(served: Mapping[int, Mapping[int, int]], xid: int) -> bytes:
    prog = next(iter(served))
    return encode_call(xid, prog, next(iter(served[prog])), 0)


def _xid(record: bytes) -> int | None:
    return struct.unpack_from(">I", record)[0] if len(record) >= 4 else None


def match_replies(
    records_sent: list[bytes], replies: list[bytes], served: Mapping[int, Mapping[int, int]]
) -> list[bytes]:
    """Pair every reply with a record it correctly answers; the records left unanswered."""
    left = list(records_sent)
    for reply in replies:
        for i, record in enumerate(left):
            if _xid(record) != _xid(reply):
                continue
            try:
                check_reply(record, reply, expect(record, served), PROGRAMS)
            except AssertionError:
                continue
            del left[i]
            break
        else:
            raise AssertionError(f"a reply that answers no record sent: {reply[:48]!r}")
    return left


def check_tcp(port: int, served, stream: bytes) -> None:
    sent, cut = reference_records(stream, MAX_RECORD_BYTES)
    replies, _reset = tcp_exchange(port, stream)
    unanswered = match_replies(sent, replies, served)
    answerable = [r for r in unanswered if expect(r, served).kind != "drop"]
    xids = [_xid(r) for r in sent]
    # A clean stream gets every answer (a duplicate xid may be a DRC retransmission: skipped).
    if not cut and len(set(xids)) == len(xids):
        assert not answerable, f"{len(answerable)} records not answered: {answerable[0][:48]!r}"


def check_udp(port: int, served, datagrams: list[bytes]) -> None:
    """One datagram at a time: the reply when one is due; then a NULL call as a sentinel, and
    nothing but its reply may arrive (no reply to what allows none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(CASE_TIMEOUT_S)
        s.connect(("127.0.0.1", port))
        for record in [*datagrams, null_call(served, 0xF00D)]:
            s.send(record)
            e = expect(record, served)
            if e.kind == "drop":
                continue
            try:
                reply = s.recv(1 << 16)
            except TimeoutError:
                raise AssertionError(f"no UDP reply to {record[:48]!r}") from None
            check_reply(record, reply, e, PROGRAMS)


# --- the node --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ObjcacheServer, int]]:
    tmp = tmp_path_factory.mktemp("fuzz-node")
    pmap_port = free_port()
    server = ObjcacheServer(
        tmp / "data", log_path=tmp / "objcache.log", portmap_listen=f"127.0.0.1:{pmap_port}"
    )
    server.start()
    try:
        yield server, pmap_port
    finally:
        server.stop()


def mount_root(port: int) -> bytes:
    replies, _ = tcp_exchange(port, _framed(encode_call(1, MOUNT_PROG, 3, 1, xdr_string(b"/"))))
    body = replies[0][24:]
    assert struct.unpack_from(">I", body)[0] == 0, "MNT / failed"
    (n,) = struct.unpack_from(">I", body, 4)
    return body[8 : 8 + n]


def nfs_call(port: int, proc: Proc, args: object) -> object:
    """One NFSv3 call over TCP as root (AUTH_SYS), its decoded result."""
    p = Packer()
    CLIENT_CODECS[proc][0](p, args)
    cred = OpaqueAuth(AUTH_SYS, encode_authsys(Cred(0, 0)))
    call = encode_call(1, NFS_PROGRAM, NFS_V3, proc, p.get_bytes(), cred)
    replies, _ = tcp_exchange(port, _framed(call))
    hdr, u = decode_reply(replies[0])
    assert hdr.accept_stat == 0, hdr
    return CLIENT_CODECS[proc][1](u)


def populate(port: int, root: bytes) -> list[bytes]:
    """many/ (200 files with long names) and f (100 KB) in the root: their handles."""
    many = nfs_call(port, Proc.MKDIR, t.MkdirArgs(t.DirOpArgs(root, b"many"), SetAttrs(mode=0o755)))
    for i in range(200):
        name = (b"entry-%04d-" % i).ljust(255, b"x")
        nfs_call(port, Proc.CREATE, t.CreateArgs(t.DirOpArgs(many.fh, name), CreateMode.UNCHECKED))
    f = nfs_call(port, Proc.CREATE, t.CreateArgs(t.DirOpArgs(root, b"f"), CreateMode.UNCHECKED))
    data = bytes(range(256)) * 400
    nfs_call(port, Proc.WRITE, t.WriteArgs(f.fh, 0, len(data), StableHow.FILE_SYNC, data))
    return [many.fh, f.fh]


def _framed(record: bytes) -> bytes:
    return struct.pack(">I", 0x8000_0000 | len(record)) + record


def test_node_survives_fuzzed_records(node: tuple[ObjcacheServer, int], tmp_path: Path) -> None:
    server, pmap_port = node
    root = mount_root(server.nfs_port)
    handles = [root, *populate(server.nfs_port, root)]
    nfs_ls(server.url("/"))  # warm: the first libnfs session, caches, the DRC
    rss_before = vm_rss_kib(server.pid)
    log_before = len(server.log_text())
    ports = {"nfs": (server.nfs_port, NFS_SERVED), "portmap": (pmap_port, PMAP_SERVED)}

    @fuzz_settings(200)
    @given(
        where=st.sampled_from(("nfs", "nfs", "nfs", "portmap")),
        case=streams(handles, MAX_RECORD_BYTES).map(lambda c: ("tcp", c[0]))
        | st.lists(records(handles), min_size=1, max_size=4).map(lambda d: ("udp", d)),
    )
    def prop(where: str, case: tuple[str, object]) -> None:
        count("node-" + case[0])
        port, served = ports[where]
        with watchdog():
            if case[0] == "tcp":
                check_tcp(port, served, case[1])  # type: ignore[arg-type]
            else:
                check_udp(port, served, [d for d in case[1] if len(d) <= 60_000])  # type: ignore[union-attr]

    prop()
    assert server.running(), f"the node died:\n{server.log_tail()}"
    for port, served in ports.values():
        check_tcp(port, served, _framed(null_call(served, 7)))
        check_udp(port, served, [])
    # A real client still works: lists the (fuzzed) root, writes a file and reads it back.
    listing = nfs_ls(server.url("/"), check=False)
    assert listing.returncode == 0, listing
    payload = tmp_path / "after-fuzzing"
    payload.write_bytes(b"still serving\n" * 1000)
    nfs_cp(payload, server.url("/after-fuzzing"))
    assert nfs_cat(server.url("/after-fuzzing")) == payload.read_bytes()
    log = server.log_text()[log_before:]
    assert "Traceback" not in log, log[log.index("Traceback") - 500 :][:3000]
    rss_after = vm_rss_kib(server.pid)
    print(f"node RSS {rss_before} KiB before, {rss_after} KiB after the fuzzing")
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_KIB, (rss_before, rss_after)
