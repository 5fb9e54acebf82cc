"""The LevelDB key schema of the file system state machine. Pure.

Rules:
- Every key of the state machine starts with `fs.` so that other tenants of the same LevelDB
  (the Raft log and hard state, transaction tables) can never collide with it.
- Integers are 8-byte big-endian, so LevelDB's byte order is numeric order: all entries of one
  directory are contiguous, and its cookie index iterates in cookie order (resuming a READDIR
  after a cookie is one range scan, O(page)).
- Names are raw bytes (NFS names are opaque, RFC 1813 §2.5 filename3) and come last in a key.
"""

from __future__ import annotations

import struct

INODE = b"fs.i"  # + ino                     -> Inode
DIRENT = b"fs.d"  # + dir ino + name         -> Dirent
COOKIE = b"fs.c"  # + dir ino + cookie       -> CookieEntry
META = b"fs.m"  # + meta name                -> Meta
INLINE = b"fs.x"  # + ino                    -> the bytes of a small file (raw, not a record)
MATERIALIZED = b"fs.k"  # + ino + chunk index  -> u64 version >= 1: the chunk's bytes held
#                                              here are the replicated truth (pinned)
DIRTY = b"fs.y"  # + ino                       -> b"": the bucket lacks the inode's version
BUCKET_KEY = b"fs.q"  # + u32 store + key       -> cbor [ino, state]: write-back's key table

_U64 = struct.Struct(">Q")
U64_MAX = (1 << 64) - 1

# Meta names.
NEXT_INO = META + b"next_ino"
APPLIED_INDEX = META + b"applied_index"
INODE_COUNT = META + b"inode_count"
WRITE_VERF = META + b"write_verf"
CLEAN_SHUTDOWN = META + b"clean_shutdown"
SYNC_MARK = META + b"sync_mark"  # written by group-commit fsyncs; its value is informational
# The last chunk version this group handed out (MATERIALIZED values): versions are never
# reused, so an Unpin for bytes write-back uploaded before a truncate or an earlier unpin can
# never match the chunk's later bytes (state.py _bump_chunk).
CHUNK_VERSION = META + b"chunk_version"


def u64(n: int) -> bytes:
    assert 0 <= n <= U64_MAX, n
    return _U64.pack(n)


def decode_u64(raw: bytes | None) -> int:
    """u64's inverse; a missing value reads as 0."""
    return 0 if raw is None else _U64.unpack(raw)[0]


def inode_key(ino: int) -> bytes:
    return INODE + u64(ino)


def inline_key(ino: int) -> bytes:
    return INLINE + u64(ino)


def materialized_key(ino: int, index: int) -> bytes:
    return MATERIALIZED + u64(ino) + u64(index)


def materialized_prefix(ino: int) -> bytes:
    return MATERIALIZED + u64(ino)


def parse_materialized_key(key: bytes) -> tuple[int, int]:
    return _U64.unpack_from(key, 4)[0], _U64.unpack_from(key, 12)[0]


def dirty_key(ino: int) -> bytes:
    return DIRTY + u64(ino)


def bucket_key(store: int, key: bytes) -> bytes:
    return BUCKET_KEY + struct.pack(">I", store) + key


def parse_bucket_key(k: bytes) -> tuple[int, bytes]:
    return struct.unpack_from(">I", k, len(BUCKET_KEY))[0], k[len(BUCKET_KEY) + 4:]


def dirent_key(dir_ino: int, name: bytes) -> bytes:
    return DIRENT + u64(dir_ino) + name


def dirent_prefix(dir_ino: int) -> bytes:
    return DIRENT + u64(dir_ino)


def cookie_key(dir_ino: int, cookie: int) -> bytes:
    return COOKIE + u64(dir_ino) + u64(cookie)


def cookie_prefix(dir_ino: int) -> bytes:
    return COOKIE + u64(dir_ino)


def parse_inode_key(key: bytes) -> int:
    assert key.startswith(INODE) and len(key) == len(INODE) + 8, key
    return _U64.unpack_from(key, len(INODE))[0]


def parse_dirent_key(key: bytes) -> tuple[int, bytes]:
    assert key.startswith(DIRENT) and len(key) >= len(DIRENT) + 8, key
    return _U64.unpack_from(key, len(DIRENT))[0], key[len(DIRENT) + 8 :]


def parse_cookie_key(key: bytes) -> tuple[int, int]:
    assert key.startswith(COOKIE) and len(key) == len(COOKIE) + 16, key
    dir_ino, cookie = struct.unpack_from(">QQ", key, len(COOKIE))
    return dir_ino, cookie
