"""Portmap v2 (RFC 1833 §3) and MOUNT v3 (RFC 1813 appendix I) through the Dispatcher, over the
real single-node backend (server/fs LocalBackend on a temporary directory)."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rpcclient import u32, xdr_string

from nfs_gateway.backend import Cred, SetAttrs
from nfs_gateway.dispatch import Dispatcher
from nfs_gateway.exports import Export, ExportTable
from nfs_gateway.mount import (
    MNTPROC3_DUMP,
    MNTPROC3_EXPORT,
    MNTPROC3_MNT,
    MNTPROC3_UMNT,
    MNTPROC3_UMNTALL,
    MOUNT_PROG,
    MountStat,
    make_mount_program,
)
from nfs_gateway.nfs3.program import handle_maker
from nfs_gateway.portmap import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    PMAP_PROG,
    PMAPPROC_DUMP,
    PMAPPROC_GETPORT,
    PMAPPROC_SET,
    PMAPPROC_UNSET,
    Mapping,
    make_portmap_program,
    mappings_for,
    unpack_pmaplist,
)
from nfs_gateway.rpc import AcceptStat, decode_reply, encode_call
from server.fs.backend import LocalBackend

CLIENT = ("10.0.0.5", 700)
EXPORTS = ExportTable(
    [
        Export("/", 1),
        Export("/data", 2, clients=(ipaddress.ip_network("192.168.0.0/16"),)),
        Export("/gone", 3),
    ]
)


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[LocalBackend]:
    """`/` and `/data` exist; `/gone` is exported but has no directory (the backend's NoEnt)."""
    async with LocalBackend(tmp_path / "fs") as be:
        await be.mkdir(Cred(0, 0), await be.export_root("/"), b"data", SetAttrs(mode=0o755))
        yield be


async def call(d: Dispatcher, prog, vers, proc, args=b"", client=CLIENT):
    reply = await d.dispatch(encode_call(1, prog, vers, proc, args), client)
    hdr, u = decode_reply(b"".join(reply))
    assert hdr.accept_stat == AcceptStat.SUCCESS
    return u


# --- Portmap -------------------------------------------------------------------------------------


def portmap(backend: LocalBackend) -> Dispatcher:
    mount = make_mount_program(backend, EXPORTS, handle_maker(backend))
    maps = mappings_for([mount], 2049, [6, 17])
    return Dispatcher([make_portmap_program(lambda: maps)])


async def test_getport(backend):
    d = portmap(backend)
    u = await call(d, PMAP_PROG, 2, PMAPPROC_GETPORT, u32(MOUNT_PROG, 3, IPPROTO_UDP, 0))
    assert u.unpack_uint() == 2049
    u = await call(d, PMAP_PROG, 2, PMAPPROC_GETPORT, u32(MOUNT_PROG, 1, IPPROTO_TCP, 0))
    assert u.unpack_uint() == 0  # not registered: port 0


async def test_dump_lists_every_mapping(backend):
    u = await call(portmap(backend), PMAP_PROG, 2, PMAPPROC_DUMP)
    assert unpack_pmaplist(u) == [
        Mapping(MOUNT_PROG, 3, IPPROTO_TCP, 2049),
        Mapping(MOUNT_PROG, 3, IPPROTO_UDP, 2049),
    ]
    u.done()


async def test_set_and_unset_are_refused(backend):
    for proc in (PMAPPROC_SET, PMAPPROC_UNSET):
        u = await call(portmap(backend), PMAP_PROG, 2, proc, u32(1, 1, 6, 111))
        assert u.unpack_bool() is False


async def test_callit_is_not_offered(backend):
    reply = await portmap(backend).dispatch(
        encode_call(1, PMAP_PROG, 2, 5, u32(1, 1, 0, 0)), CLIENT
    )
    assert decode_reply(b"".join(reply))[0].accept_stat == AcceptStat.PROC_UNAVAIL


# --- MOUNT ---------------------------------------------------------------------------------------


def mount(backend: LocalBackend) -> Dispatcher:
    return Dispatcher([make_mount_program(backend, EXPORTS, handle_maker(backend))])


async def mnt(d: Dispatcher, path: bytes, client=CLIENT):
    u = await call(d, MOUNT_PROG, 3, MNTPROC3_MNT, xdr_string(path), client)
    status = u.unpack_enum()
    if status != MountStat.MNT3_OK:
        u.done()
        return status, None, None
    fh = u.unpack_opaque(64)
    flavors = u.unpack_array(u.unpack_int, 10)
    u.done()
    return status, fh, flavors


async def test_mnt_returns_handle_and_flavors(backend):
    status, fh, flavors = await mnt(mount(backend), b"/")
    assert status == MountStat.MNT3_OK
    assert fh == handle_maker(backend)(EXPORTS.by_id(1), await backend.export_root("/"))
    assert flavors == [1, 0]  # AUTH_SYS, AUTH_NONE


async def test_mnt_errors(backend):
    d = mount(backend)
    assert (await mnt(d, b"/nope"))[0] == MountStat.MNT3ERR_NOENT
    assert (await mnt(d, b"/gone"))[0] == MountStat.MNT3ERR_NOENT  # backend NoEnt
    assert (await mnt(d, b"/data"))[0] == MountStat.MNT3ERR_ACCES  # wrong network
    assert (await mnt(d, b"/data", ("192.168.1.1", 700)))[0] == MountStat.MNT3_OK
    assert (await mnt(d, b"/data", ("192.168.1.1", 4000)))[0] == MountStat.MNT3ERR_ACCES
    assert (await mnt(d, b"/" + b"a" * 1024))[0] == MountStat.MNT3ERR_NAMETOOLONG


async def test_dump_umnt_umntall(backend):
    d = mount(backend)
    await mnt(d, b"/")
    await mnt(d, b"/data", ("192.168.1.1", 700))

    async def dump():
        u = await call(d, MOUNT_PROG, 3, MNTPROC3_DUMP)
        out = []
        while u.unpack_bool():
            out.append((u.unpack_string(255), u.unpack_string(1024)))
        u.done()
        return out

    assert await dump() == [(b"10.0.0.5", b"/"), (b"192.168.1.1", b"/data")]
    await call(d, MOUNT_PROG, 3, MNTPROC3_UMNT, xdr_string(b"/"))
    assert await dump() == [(b"192.168.1.1", b"/data")]
    await call(d, MOUNT_PROG, 3, MNTPROC3_UMNTALL, client=("192.168.1.1", 700))
    assert await dump() == []


async def test_export_lists_paths_and_groups(backend):
    u = await call(mount(backend), MOUNT_PROG, 3, MNTPROC3_EXPORT)
    out = []
    while u.unpack_bool():
        path = u.unpack_string(1024)
        groups = []
        while u.unpack_bool():
            groups.append(u.unpack_string(255))
        out.append((path, groups))
    u.done()
    assert out == [(b"/", [b"*"]), (b"/data", [b"192.168.0.0/16"]), (b"/gone", [b"*"])]
