"""RPC programs as declarative tables (the nfs-ganesha way): decoder, handler, encoder, flags.

Rules:
- A handler takes the call context and decoded arguments and returns a result object. It never
  touches XDR; the encoder never does I/O.
- A decoder raises XdrError on malformed arguments; the RPC layer answers GARBAGE_ARGS.
- `idempotent=False` marks procedures whose retransmission must get the original reply from the
  duplicate request cache (CREATE, REMOVE, RENAME, LINK, ...; RFC 1813 §4.4 and RFC 5531 §8).
- Operating errors are not exceptions at this level: an NFS handler returns a result carrying its
  nfsstat3. An exception escaping a handler is a server fault (RPC SYSTEM_ERR).
- A procedure may also have `handle_nowait`, a synchronous twin of its handler for calls that
  can be answered from memory (cached metadata, page-cache reads): it returns the result, or
  NOT_READY when answering needs I/O, and the RPC layer then runs `handle`. The server answers
  such calls without a task or a worker thread. Both must give the same answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nfs_gateway.backend import Cred
from nfs_gateway.xdr import Packer, Unpacker

# auth_flavor (RFC 5531 §8.2 and appendix A)
AUTH_NONE = 0
AUTH_SYS = 1


class _NotReady:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_READY"


NOT_READY: Any = _NotReady()  # what a `handle_nowait` returns when the call needs I/O


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a handler knows about the call besides its arguments."""

    client: tuple[str, int]  # (address, port) of the caller
    auth_flavor: int
    cred: Cred | None  # the AUTH_SYS credentials as sent (before any export squashing)
    xid: int
    transport: str = "tcp"  # "tcp" or "udp"


@dataclass(frozen=True, slots=True)
class Procedure:
    name: str
    decode: Callable[[Unpacker], Any]
    handle: Callable[[CallContext, Any], Awaitable[Any]]
    encode: Callable[[Packer, Any], None]
    idempotent: bool = True
    handle_nowait: Callable[[CallContext, Any], Any] | None = None  # result or NOT_READY


@dataclass(frozen=True, slots=True)
class Program:
    """One RPC program at one or more versions: procedures[version][procedure number]."""

    prog: int
    name: str
    procedures: Mapping[int, Mapping[int, Procedure]] = field(default_factory=dict)

    @property
    def low_version(self) -> int:
        return min(self.procedures)

    @property
    def high_version(self) -> int:
        return max(self.procedures)


def decode_void(u: Unpacker) -> None:
    return None


def encode_void(p: Packer, _res: None) -> None:
    return None
