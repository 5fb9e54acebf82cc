"""NFS version 3 file handles (RFC 1813 §2.3.3, §4.1).

Rules:
- A handle holds only durable ids: the export id, the file system id and the file's FileId
  (inode id, generation). It stays valid across restarts and at every node's gateway; there is
  no handle cache to lose (the fault of handles kept in memory).
- Layout, 32 bytes, big-endian: version (1 byte), 3 reserved zero bytes, export id (u32),
  fsid (u64), inode id (u64), generation (u64). The version byte lets a later layout coexist.
- Decoding is strict: wrong length, unknown version, non-zero reserved bytes → BadHandle
  (NFS3ERR_BADHANDLE). Whether the export or file still exists is for the caller (STALE).
"""

from __future__ import annotations

import struct

from nfs_gateway.backend import BadHandle, FileId
from nfs_gateway.nfs3.const import NFS3_FHSIZE

FH_VERSION = 1
_FH = struct.Struct(">B3xIQQQ")
FH_SIZE = _FH.size
assert FH_SIZE <= NFS3_FHSIZE
_U32_MAX = 0xFFFFFFFF
_U64_MAX = 0xFFFFFFFFFFFFFFFF


def encode_fhandle(export_id: int, fsid: int, fid: FileId) -> bytes:
    """The handle of `fid` seen through export `export_id` of file system `fsid`."""
    assert 0 <= export_id <= _U32_MAX, export_id
    assert 0 <= fsid <= _U64_MAX and 0 <= fid.ino <= _U64_MAX and 0 <= fid.gen <= _U64_MAX
    return _FH.pack(FH_VERSION, export_id, fsid, fid.ino, fid.gen)


def decode_fhandle(data: bytes | memoryview) -> tuple[int, int, FileId]:
    """(export_id, fsid, FileId) from a handle; BadHandle if it is not one of ours."""
    if len(data) != FH_SIZE:
        raise BadHandle(f"file handle of {len(data)} bytes, expected {FH_SIZE}")
    if data[0] != FH_VERSION:
        raise BadHandle(f"file handle version {data[0]}, expected {FH_VERSION}")
    if data[1:4] != b"\0\0\0":
        raise BadHandle("file handle reserved bytes are not zero")
    _version, export_id, fsid, ino, gen = _FH.unpack(data)
    return export_id, fsid, FileId(ino, gen)
