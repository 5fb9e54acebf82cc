"""The FsError → nfsstat3 table (RFC 1813 §2.6) and the file handle format (§2.3.3, §4.1)."""

from __future__ import annotations

import inspect
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nfs_gateway import backend as b
from nfs_gateway.nfs3.const import NFS3_FHSIZE, Stat
from nfs_gateway.nfs3.errors import STATUS_OF, status_of
from nfs_gateway.nfs3.fhandle import FH_SIZE, decode_fhandle, encode_fhandle


def _fs_error_classes() -> list[type[b.FsError]]:
    return [
        cls
        for _, cls in inspect.getmembers(b, inspect.isclass)
        if issubclass(cls, b.FsError) and cls is not b.FsError
    ]


def _documented_status(cls: type[b.FsError]) -> Stat:
    """The nfsstat3 that backend.py's comment names for the class (`# NFS3ERR_X`)."""
    line = inspect.getsourcelines(cls)[0][0]
    m = re.search(r"#\s*NFS3ERR_(\w+)", line)
    assert m, f"{cls.__name__} has no NFS3ERR comment: {line!r}"
    return Stat[m.group(1)]


def test_every_fs_error_subclass_has_a_row() -> None:
    classes = _fs_error_classes()
    assert len(classes) >= 26
    missing = [c.__name__ for c in classes if c not in STATUS_OF]
    assert not missing, f"FsError subclasses without an nfsstat3: {missing}"


@pytest.mark.parametrize("cls", _fs_error_classes(), ids=lambda c: c.__name__)
def test_each_error_maps_to_the_status_backend_documents(cls: type[b.FsError]) -> None:
    assert status_of(cls("x")) == _documented_status(cls)


@pytest.mark.parametrize(
    ("err", "status"),
    [
        (b.Stale(), Stat.STALE),
        (b.NotSync(), Stat.NOT_SYNC),
        (b.Exists(), Stat.EXIST),
        (b.NotEmpty(), Stat.NOTEMPTY),
        (b.Access(), Stat.ACCES),
        (b.ReadOnly(), Stat.ROFS),
        (b.BadHandle(), Stat.BADHANDLE),
        (b.Jukebox(), Stat.JUKEBOX),
        (b.IOError_(), Stat.IO),
    ],
)
def test_some_statuses_by_number(err: b.FsError, status: Stat) -> None:
    assert status_of(err) == status
    assert int(status_of(err)) == int(status)


def test_refined_error_maps_like_its_ancestor() -> None:
    class ChunkMissing(b.IOError_):
        pass

    assert status_of(ChunkMissing()) == Stat.IO


def test_bare_fs_error_is_a_server_fault() -> None:
    assert status_of(b.FsError("?")) == Stat.SERVERFAULT


def test_status_numbers_are_rfc_1813() -> None:
    # §2.6: spot checks of the values that differ from errno.
    assert (Stat.NAMETOOLONG, Stat.NOTEMPTY, Stat.STALE) == (63, 66, 70)
    assert (Stat.BADHANDLE, Stat.NOT_SYNC, Stat.JUKEBOX) == (10001, 10002, 10008)


# --- file handles --------------------------------------------------------------------------

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)


@given(u32, u64, u64, u64)
def test_handle_round_trip(export_id: int, fsid: int, ino: int, gen: int) -> None:
    fh = encode_fhandle(export_id, fsid, b.FileId(ino, gen))
    assert len(fh) == FH_SIZE <= NFS3_FHSIZE
    assert decode_fhandle(fh) == (export_id, fsid, b.FileId(ino, gen))
    assert decode_fhandle(memoryview(fh)) == (export_id, fsid, b.FileId(ino, gen))


def test_handle_is_durable_bytes() -> None:
    # Only durable ids: the same file gives the same handle, in any process, at any time.
    fh = encode_fhandle(7, 42, b.FileId(1000, 3))
    assert fh == encode_fhandle(7, 42, b.FileId(1000, 3))
    assert fh[0] == 1  # version byte
    assert fh.hex() == "0100000000000007" + f"{42:016x}" + f"{1000:016x}" + f"{3:016x}"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01",
        bytes(FH_SIZE),  # version 0
        b"\x02" + bytes(FH_SIZE - 1),  # unknown version
        b"\x01\x00\x01\x00" + bytes(FH_SIZE - 4),  # reserved bytes not zero
        encode_fhandle(1, 2, b.FileId(3, 4)) + b"\0",  # too long
        encode_fhandle(1, 2, b.FileId(3, 4))[:-1],  # too short
        bytes(NFS3_FHSIZE),
    ],
)
def test_malformed_handles_are_bad_handle(data: bytes) -> None:
    with pytest.raises(b.BadHandle):
        decode_fhandle(data)


@given(st.binary(max_size=NFS3_FHSIZE))
def test_random_bytes_decode_or_bad_handle(data: bytes) -> None:
    try:
        export_id, fsid, fid = decode_fhandle(data)
    except b.BadHandle:
        return
    assert encode_fhandle(export_id, fsid, fid) == data
