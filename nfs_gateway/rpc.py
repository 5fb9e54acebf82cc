"""ONC RPC version 2 (RFC 5531): call and reply headers, AUTH_NONE and AUTH_SYS.

Rules of this module:
- Pure code: a record (bytes) in, a header and an Unpacker at the arguments out; replies are
  encoded to bytes. No sockets, no clock; the trio server in server.py owns the I/O, and
  dispatch.py routes the decoded call to its procedure.
- Every way a call can fail before its handler runs is a typed exception raised by the decoder:
  `Unanswerable` (no reply) or a `Rejected` subclass (`RpcMismatch`, `AuthError`, `GarbageCall`)
  that encodes its own reply. Checks run in the order of RFC 5531 §9 and the Linux sunrpc server:
  message type, RPC version, credentials and verifier (here), then program, version, procedure,
  args (dispatch.py).
"""

from __future__ import annotations

import enum
import logging
import struct
from dataclasses import dataclass

from nfs_gateway.backend import Cred
from nfs_gateway.program import AUTH_NONE, AUTH_SYS
from nfs_gateway.xdr import Packer, Unpacker, XdrError

log = logging.getLogger("objcache.rpc")

RPC_VERSION = 2

# msg_type and reply_stat (RFC 5531 §9).
CALL = 0
REPLY = 1
MSG_ACCEPTED = 0
MSG_DENIED = 1

# Limits from RFC 5531 §8.2 and appendix A (authsys_parms).
MAX_AUTH_BYTES = 400
MAX_MACHINE_NAME = 255
MAX_GIDS = 16


class AcceptStat(enum.IntEnum):
    """accept_stat (RFC 5531 §9)."""

    SUCCESS = 0
    PROG_UNAVAIL = 1
    PROG_MISMATCH = 2
    PROC_UNAVAIL = 3
    GARBAGE_ARGS = 4
    SYSTEM_ERR = 5


class RejectStat(enum.IntEnum):
    """reject_stat (RFC 5531 §9)."""

    RPC_MISMATCH = 0
    AUTH_ERROR = 1


class AuthStat(enum.IntEnum):
    """auth_stat (RFC 5531 §9)."""

    AUTH_OK = 0
    AUTH_BADCRED = 1
    AUTH_REJECTEDCRED = 2
    AUTH_BADVERF = 3
    AUTH_REJECTEDVERF = 4
    AUTH_TOOWEAK = 5
    AUTH_INVALIDRESP = 6
    AUTH_FAILED = 7


@dataclass(frozen=True, slots=True)
class OpaqueAuth:
    """opaque_auth: a flavor and up to 400 bytes of body (RFC 5531 §8.2)."""

    flavor: int
    body: bytes = b""


NULL_AUTH = OpaqueAuth(AUTH_NONE, b"")


@dataclass(frozen=True, slots=True)
class CallHeader:
    """call_body of rpc_msg (RFC 5531 §9); `cred` is the decoded AUTH_SYS cred, if any."""

    xid: int
    prog: int
    vers: int
    proc: int
    auth: OpaqueAuth
    verf: OpaqueAuth
    cred: Cred | None = None


# --- Call rejections: raised while decoding; each knows its reply (RFC 5531 §9). ------------


class Unanswerable(Exception):
    """No reply is possible or wanted: no xid, or the message is not a CALL."""


class Rejected(Exception):
    """A call answered with an RPC error before any procedure runs."""

    def reply(self) -> bytes:
        raise NotImplementedError


@dataclass
class RpcMismatch(Rejected):
    xid: int
    rpcvers: int

    def reply(self) -> bytes:
        return rpc_mismatch_reply(self.xid)


@dataclass
class AuthError(Rejected):
    xid: int
    stat: AuthStat

    def reply(self) -> bytes:
        return auth_error_reply(self.xid, self.stat)


@dataclass
class GarbageCall(Rejected):
    """The call header after the xid could not be decoded."""

    xid: int
    reason: str

    def reply(self) -> bytes:
        return accepted_reply(self.xid, AcceptStat.GARBAGE_ARGS)


# --- Encoding ----------------------------------------------------------------------------------

_WORD = struct.Struct(">I")
_WORDS2 = struct.Struct(">2I")
_HDR6 = struct.Struct(">6I")
_HDR8 = struct.Struct(">8I")
_HDR5 = struct.Struct(">5I")


def pack_accepted_header(p: Packer, xid: int, stat: AcceptStat) -> None:
    """xid, REPLY, MSG_ACCEPTED, verf AUTH_NONE (empty), accept_stat (RFC 5531 §9)."""
    p.pack_fopaque(24, _HDR6.pack(xid, REPLY, MSG_ACCEPTED, AUTH_NONE, 0, stat))


def accepted_reply(xid: int, stat: AcceptStat, low: int = 0, high: int = 0) -> bytes:
    """An accepted reply without results; PROG_MISMATCH carries the supported versions."""
    if stat == AcceptStat.PROG_MISMATCH:
        return _HDR8.pack(xid, REPLY, MSG_ACCEPTED, AUTH_NONE, 0, stat, low, high)
    return _HDR6.pack(xid, REPLY, MSG_ACCEPTED, AUTH_NONE, 0, stat)


def rpc_mismatch_reply(xid: int) -> bytes:
    """MSG_DENIED / RPC_MISMATCH with low = high = 2: we speak only RPC version 2."""
    return _HDR6.pack(xid, REPLY, MSG_DENIED, RejectStat.RPC_MISMATCH, RPC_VERSION, RPC_VERSION)


def auth_error_reply(xid: int, stat: AuthStat) -> bytes:
    """MSG_DENIED / AUTH_ERROR with the reason (RFC 5531 §9)."""
    return _HDR5.pack(xid, REPLY, MSG_DENIED, RejectStat.AUTH_ERROR, stat)


def encode_authsys(cred: Cred, stamp: int = 0) -> bytes:
    """authsys_parms (RFC 5531 appendix A): the body of an AUTH_SYS credential."""
    p = Packer()
    p.pack_uint(stamp)
    machine = cred.machine.encode("utf-8", "surrogateescape")
    assert len(machine) <= MAX_MACHINE_NAME and len(cred.gids) <= MAX_GIDS
    p.pack_string(machine)
    p.pack_uint(cred.uid)
    p.pack_uint(cred.gid)
    p.pack_array(list(cred.gids), p.pack_uint)
    return p.get_bytes()


def encode_call(
    xid: int,
    prog: int,
    vers: int,
    proc: int,
    args: bytes = b"",
    auth: OpaqueAuth = NULL_AUTH,
    verf: OpaqueAuth = NULL_AUTH,
    rpcvers: int = RPC_VERSION,
) -> bytes:
    """A call message (for clients and tests)."""
    p = Packer()
    for v in (xid, CALL, rpcvers, prog, vers, proc):
        p.pack_uint(v)
    for a in (auth, verf):
        p.pack_uint(a.flavor)
        p.pack_opaque(a.body)
    return p.get_bytes() + args


# --- Decoding ----------------------------------------------------------------------------------


def decode_authsys(xid: int, body: bytes) -> Cred:
    """authsys_parms → Cred; any malformation is AUTH_BADCRED (RFC 5531 §9, appendix A)."""
    u = Unpacker(body)
    try:
        u.unpack_uint()  # stamp: opaque to the server
        machine = u.unpack_string(MAX_MACHINE_NAME).decode("utf-8", "surrogateescape")
        uid = u.unpack_uint()
        gid = u.unpack_uint()
        gids = tuple(u.unpack_array(u.unpack_uint, MAX_GIDS))
        u.done()
    except XdrError as e:
        log.debug("xid %#x: bad AUTH_SYS body: %s", xid, e)
        raise AuthError(xid, AuthStat.AUTH_BADCRED) from e
    return Cred(uid=uid, gid=gid, gids=gids, machine=machine)


def _check_auth(
    xid: int, auth: OpaqueAuth, verf: OpaqueAuth, creds: CredCache | None = None
) -> Cred | None:
    """Accept AUTH_NONE and AUTH_SYS credentials with an AUTH_NONE verifier (RFC 5531 §10)."""
    if verf.flavor != AUTH_NONE or verf.body:
        raise AuthError(xid, AuthStat.AUTH_BADVERF)
    if auth.flavor == AUTH_SYS:
        if creds is None:
            return decode_authsys(xid, auth.body)
        return creds.get(xid, auth.body)
    if auth.flavor == AUTH_NONE and not auth.body:
        return None
    # Unknown flavors (AUTH_DH, RPCSEC_GSS, ...) are bad credentials, as in Linux sunrpc.
    raise AuthError(xid, AuthStat.AUTH_BADCRED)


class CredCache:
    """Decoded AUTH_SYS bodies by their bytes: a client sends the same body with every call.
    Bounded (cleared when full); only valid bodies are kept."""

    __slots__ = ("_d", "limit")

    def __init__(self, limit: int = 256) -> None:
        assert limit > 0
        self.limit = limit
        self._d: dict[bytes, Cred] = {}

    def get(self, xid: int, body: bytes) -> Cred:
        cred = self._d.get(body)
        if cred is None:
            cred = decode_authsys(xid, body)
            if len(self._d) >= self.limit:
                self._d.clear()
            self._d[body] = cred
        return cred


def _auth_at(record: bytes | bytearray | memoryview, pos: int, xid: int, bad: AuthStat):
    """opaque_auth at pos: (OpaqueAuth, next pos); lengths checked like Unpacker does."""
    n = len(record)
    if pos + 8 > n:
        raise GarbageCall(xid, f"need 8 bytes at offset {pos}, have {max(n - pos, 0)}")
    flavor, length = _WORDS2.unpack_from(record, pos)
    if length > MAX_AUTH_BYTES:
        raise AuthError(xid, bad)
    end = pos + 8 + length
    if end + (-length & 3) > n:
        raise GarbageCall(xid, f"auth body of {length} bytes past the end")
    if not length and flavor == AUTH_NONE:
        return NULL_AUTH, end
    return OpaqueAuth(flavor, bytes(record[pos + 8 : end])), end + (-length & 3)


def decode_call(
    record: bytes | bytearray | memoryview, creds: CredCache | None = None
) -> tuple[CallHeader, Unpacker]:
    """The call header, and an Unpacker positioned at the procedure's arguments."""
    n = len(record)
    if n < 8:
        raise Unanswerable(f"record too short for a header: {n} bytes")
    xid, mtype = _WORDS2.unpack_from(record)
    if mtype != CALL:
        raise Unanswerable(f"xid {xid:#x}: message type {mtype} is not CALL")
    if n >= 12 and _WORD.unpack_from(record, 8)[0] != RPC_VERSION:
        raise RpcMismatch(xid, _WORD.unpack_from(record, 8)[0])
    if n < 24:
        raise GarbageCall(xid, f"call header truncated at {n} bytes")
    # One struct call for the fixed words: this runs for every request.
    _, _, _, prog, vers, proc = _HDR6.unpack_from(record)
    auth, pos = _auth_at(record, 24, xid, AuthStat.AUTH_BADCRED)
    verf, pos = _auth_at(record, pos, xid, AuthStat.AUTH_BADVERF)
    cred = _check_auth(xid, auth, verf, creds)
    return CallHeader(xid, prog, vers, proc, auth, verf, cred), Unpacker(record, pos)


@dataclass(frozen=True, slots=True)
class ReplyHeader:
    """A decoded reply header (for clients and tests). Unused fields are 0."""

    xid: int
    reply_stat: int
    accept_stat: int = 0
    reject_stat: int = 0
    auth_stat: int = 0
    low: int = 0
    high: int = 0
    verf: OpaqueAuth = NULL_AUTH


def decode_reply(record: bytes | bytearray | memoryview) -> tuple[ReplyHeader, Unpacker]:
    """The reply header, and an Unpacker positioned at the results (RFC 5531 §9)."""
    u = Unpacker(record)
    xid = u.unpack_uint()
    if u.unpack_uint() != REPLY:
        raise XdrError("not a REPLY")
    stat = u.unpack_uint()
    if stat == MSG_ACCEPTED:
        verf = OpaqueAuth(u.unpack_uint(), u.unpack_opaque(MAX_AUTH_BYTES))
        acc = u.unpack_uint()
        mismatch = acc == AcceptStat.PROG_MISMATCH
        low, high = (u.unpack_uint(), u.unpack_uint()) if mismatch else (0, 0)
        return ReplyHeader(xid, stat, accept_stat=acc, low=low, high=high, verf=verf), u
    if stat != MSG_DENIED:
        raise XdrError(f"bad reply_stat {stat}")
    rej = u.unpack_uint()
    if rej == RejectStat.RPC_MISMATCH:
        low, high = u.unpack_uint(), u.unpack_uint()
        return ReplyHeader(xid, stat, reject_stat=rej, low=low, high=high), u
    if rej != RejectStat.AUTH_ERROR:
        raise XdrError(f"bad reject_stat {rej}")
    return ReplyHeader(xid, stat, reject_stat=rej, auth_stat=u.unpack_uint()), u
