"""Portmapper version 2 (RFC 1833 §3) as a Program table.

Rules:
- The map is what this process serves, read on every call from a callable (the server knows
  its bound ports only once it listens). Nobody else may register: SET and UNSET answer false.
- CALLIT (indirect calls, a traffic amplifier over UDP) is not offered: PROC_UNAVAIL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nfs_gateway.program import CallContext, Procedure, Program, decode_void, encode_void
from nfs_gateway.xdr import Packer, Unpacker, XdrError

PMAP_PROG = 100000
PMAP_VERS = 2
IPPROTO_TCP = 6
IPPROTO_UDP = 17
PMAPPROC_NULL, PMAPPROC_SET, PMAPPROC_UNSET, PMAPPROC_GETPORT, PMAPPROC_DUMP = range(5)
MAX_MAPPINGS = 1024


@dataclass(frozen=True, slots=True)
class Mapping:
    """struct mapping (RFC 1833 §3)."""

    prog: int
    vers: int
    prot: int
    port: int


def pack_mapping(p: Packer, m: Mapping) -> None:
    for v in (m.prog, m.vers, m.prot, m.port):
        p.pack_uint(v)


def unpack_mapping(u: Unpacker) -> Mapping:
    return Mapping(u.unpack_uint(), u.unpack_uint(), u.unpack_uint(), u.unpack_uint())


def pack_pmaplist(p: Packer, maps: Sequence[Mapping]) -> None:
    """pmaplist: a linked list, i.e. (TRUE, mapping)* then FALSE (RFC 1833 §3)."""
    for m in maps:
        p.pack_bool(True)
        pack_mapping(p, m)
    p.pack_bool(False)


def unpack_pmaplist(u: Unpacker) -> list[Mapping]:
    out: list[Mapping] = []
    while u.unpack_bool():
        if len(out) >= MAX_MAPPINGS:
            raise XdrError("pmaplist too long")
        out.append(unpack_mapping(u))
    return out


def mappings_for(programs: Sequence[Program], port: int, protocols: Sequence[int]) -> list[Mapping]:
    """A mapping for every version of every program, on each protocol, at `port`."""
    return [
        Mapping(prog.prog, vers, prot, port)
        for prog in programs
        for vers in sorted(prog.procedures)
        for prot in protocols
    ]


def make_portmap_program(mappings: Callable[[], Sequence[Mapping]]) -> Program:
    """Portmap v2 answering from `mappings()` (called per request)."""

    async def getport(_ctx: CallContext, want: Mapping) -> int:
        # RFC 1833 §3: "the port number on which the program is awaiting call requests", or 0.
        for m in mappings():
            if (m.prog, m.vers, m.prot) == (want.prog, want.vers, want.prot):
                return m.port
        return 0

    async def dump(_ctx: CallContext, _args: None) -> Sequence[Mapping]:
        return mappings()[:MAX_MAPPINGS]

    async def refuse(_ctx: CallContext, _m: Mapping) -> bool:
        return False

    async def null(_ctx: CallContext, _args: None) -> None:
        return None

    procs = {
        PMAPPROC_NULL: Procedure("NULL", decode_void, null, encode_void),
        PMAPPROC_SET: Procedure("SET", unpack_mapping, refuse, Packer.pack_bool),
        PMAPPROC_UNSET: Procedure("UNSET", unpack_mapping, refuse, Packer.pack_bool),
        PMAPPROC_GETPORT: Procedure("GETPORT", unpack_mapping, getport, Packer.pack_uint),
        PMAPPROC_DUMP: Procedure("DUMP", decode_void, dump, pack_pmaplist),
    }
    return Program(PMAP_PROG, "portmap", {PMAP_VERS: procs})
