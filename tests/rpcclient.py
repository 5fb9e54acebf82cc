"""A small ONC RPC client for tests (RFC 5531): TCP with record marking, and UDP.

It shares our reading of the RFC, so behaviour that matters is also checked with libnfs; this
client exists for exact error codes and malformed input.

    async with await RpcClient.connect("127.0.0.1", port) as c:
        hdr, body = await c.call(MOUNT_PROG, 3, 0)
        assert hdr.accept_stat == AcceptStat.SUCCESS
"""

from __future__ import annotations

import itertools
import struct

import trio

from nfs_gateway.backend import Cred
from nfs_gateway.program import AUTH_SYS
from nfs_gateway.record import RecordDecoder, encode_fragments
from nfs_gateway.rpc import (
    NULL_AUTH,
    RPC_VERSION,
    OpaqueAuth,
    ReplyHeader,
    decode_reply,
    encode_authsys,
    encode_call,
)
from nfs_gateway.xdr import Unpacker

_xids = itertools.count(0x1000)
MAX_REPLY_BYTES = 16 * 1024 * 1024
DEFAULT_TIMEOUT_S = 10.0


def authsys(uid: int = 1000, gid: int = 1000, gids: tuple[int, ...] = (), machine: str = "test"):
    """An AUTH_SYS credential."""
    return OpaqueAuth(AUTH_SYS, encode_authsys(Cred(uid, gid, gids, machine)))


class RpcClient:
    """One TCP connection. `call` is sequential: it sends a call and reads the next record."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._decoder = RecordDecoder(MAX_REPLY_BYTES)
        self._records: list[bytearray] = []

    @classmethod
    async def connect(cls, host: str, port: int) -> RpcClient:
        return cls(await trio.open_tcp_stream(host, port))

    async def __aenter__(self) -> RpcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def send(self, data: bytes) -> None:
        """Raw bytes, no framing (for malformed input)."""
        await self.stream.send_all(data)

    async def send_record(self, record: bytes, fragment_bytes: int = 1 << 30) -> None:
        await self.send(encode_fragments(record, fragment_bytes))

    async def recv_record(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> bytes | None:
        """The next reply record, or None if the server closed the connection."""
        with trio.fail_after(timeout_s):
            while not self._records:
                try:
                    data = await self.stream.receive_some(256 * 1024)
                except trio.BrokenResourceError:
                    return None  # reset by the server
                if not data:
                    return None
                self._records += self._decoder.feed(data)
        return bytes(self._records.pop(0))

    async def call_raw(
        self,
        prog: int,
        vers: int,
        proc: int,
        args: bytes = b"",
        auth: OpaqueAuth = NULL_AUTH,
        verf: OpaqueAuth = NULL_AUTH,
        rpcvers: int = RPC_VERSION,
    ) -> tuple[int, bytes | None]:
        """Send a call; return its xid and the raw reply record (None if the server closed)."""
        xid = next(_xids)
        await self.send_record(encode_call(xid, prog, vers, proc, args, auth, verf, rpcvers))
        return xid, await self.recv_record()

    async def call(
        self,
        prog: int,
        vers: int,
        proc: int,
        args: bytes = b"",
        auth: OpaqueAuth = NULL_AUTH,
        verf: OpaqueAuth = NULL_AUTH,
        rpcvers: int = RPC_VERSION,
    ) -> tuple[ReplyHeader, Unpacker]:
        """Send a call; return the parsed reply header and an Unpacker at the results."""
        xid, record = await self.call_raw(prog, vers, proc, args, auth, verf, rpcvers)
        assert record is not None, "server closed the connection"
        hdr, body = decode_reply(record)
        assert hdr.xid == xid, (hdr.xid, xid)
        return hdr, body


class UdpRpcClient:
    """RPC over UDP: one datagram per call and per reply."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock

    @classmethod
    async def connect(cls, host: str, port: int) -> UdpRpcClient:
        sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
        await sock.connect((host, port))
        return cls(sock)

    async def __aenter__(self) -> UdpRpcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.sock.close()

    async def send(self, datagram: bytes) -> None:
        await self.sock.send(datagram)

    async def recv(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> bytes:
        with trio.fail_after(timeout_s):
            return await self.sock.recv(65536)

    async def call(
        self,
        prog: int,
        vers: int,
        proc: int,
        args: bytes = b"",
        auth: OpaqueAuth = NULL_AUTH,
        verf: OpaqueAuth = NULL_AUTH,
    ) -> tuple[ReplyHeader, Unpacker]:
        xid = next(_xids)
        await self.send(encode_call(xid, prog, vers, proc, args, auth, verf))
        while True:
            hdr, body = decode_reply(await self.recv())
            if hdr.xid == xid:  # a stale reply to an earlier call may still arrive
                return hdr, body


def u32(*values: int) -> bytes:
    """XDR unsigned ints, for hand-built arguments."""
    return struct.pack(f">{len(values)}I", *values)


def xdr_string(data: bytes) -> bytes:
    return u32(len(data)) + data + b"\0" * (-len(data) % 4)
