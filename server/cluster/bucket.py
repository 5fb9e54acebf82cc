"""The bucket behind the cluster's files: what every part of the data path shares about it.

Picture:

    NFS READ ──▶ gateway ──ReadHead / ReadChunk(+origin)──▶ chunk's owner group (leader)
                                                             │ materialized? its chunk file
                                                             │ clean copy in ChunkCache? that
                                                             └ else ranged GETs (If-Match etag)
                                                               into the ChunkCache, then serve
    NFS LOOKUP/READDIR in a directory bound to a store ──▶ gateway_bucket.py: HEAD / listing,
                                                             loaded by transactions (SetOrigin,
                                                             SetListed, CreateInode, LinkDirent)

Rules:
- A store is bound to an export directory: its inode has `store` = the export id and
  `okey` = b"" (the store's own prefix is in its URL). A directory loaded from the bucket has
  `okey` = its key prefix ("a/b/"); a file its object key, `etag` the version read and `obase`
  the length of that version still part of the file (a truncate lowers it).
- Chunk `index` of a file is *backed* while index * chunk_size < obase and the chunk is not
  *materialized*: its bytes are the object's [index * cs, min((index + 1) * cs, obase)), zeros
  after obase. Backed bytes are read from the node-local ChunkCache (clean copies, evicted LRU,
  never replicated) or fetched with ranged GETs carrying If-Match, so a changed object is never
  read as a mix of two versions (PreconditionFailed -> the gateway re-reads the inode).
- A change to a backed chunk first makes it materialized: MaterializeChunk carries the bucket
  bytes in the replicated log, so every replica holds the whole chunk before the first write
  to it lands. Write plans carry ExpectChunk for chunks they believe materialized; the abort
  UNMATERIALIZED makes the gateway fetch the base and send MaterializeChunk first.
- Keys are UTF-8; a name that is not valid UTF-8 or contains "/" cannot be an object key.
"""

from __future__ import annotations

from nfs_gateway.backend import FileType
from server.config import CacheConfig
from server.fs.records import Inode

# How the cluster caches the bucket and writes back to it: the [cache] section itself.
BucketConfig = CacheConfig


# The etag of an export's root directory once bound to its store: a directory made here has
# no key prefix yet (b"") and must not be listed, the root's prefix is b"" too.
ROOT_MARK = b"/"


def is_backed(inode: Inode, index: int) -> bool:
    """Chunk `index` may still be the bucket's bytes (unless materialized; module rules)."""
    return bool(inode.etag) and not inode.inline and index * inode.chunk_size < inode.obase


def backed_len(inode_obase: int, chunk_size: int, index: int) -> int:
    """How many bytes at the start of chunk `index` come from the object (the rest: zeros)."""
    return max(0, min(chunk_size, inode_obase - index * chunk_size))


def key_text(key: bytes) -> str:
    return key.decode("utf-8")


def child_key(dir_okey: bytes, name: bytes, directory: bool) -> bytes:
    """The key (or key prefix, for a directory) of `name` under a directory whose prefix is
    `dir_okey`."""
    return dir_okey + name + (b"/" if directory else b"")


def name_ok(name: bytes) -> bool:
    """Whether `name` can be part of an object key."""
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        return False
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def first_leaf(eg: BaseExceptionGroup) -> BaseException:
    """The first error inside a (nested) group: what a nursery of parallel store requests
    raises, reported as the one error it is."""
    e: BaseException = eg
    while isinstance(e, BaseExceptionGroup):
        e = e.exceptions[0]
    return e


def key_below(prefix: bytes, chain: list[Inode], memo: dict[int, bytes | None]) -> bytes:
    """The object key of chain[0], where `chain` is an inode and then its ancestors up to (not
    including) the nearest one whose key `prefix` is known; a directory's key ends in "/".
    The directories' keys go into `memo`."""
    for node in reversed(chain):
        if node.ftype == FileType.DIR:
            prefix = prefix + node.pname + b"/"
            memo[node.ino] = prefix
        else:
            return prefix + node.pname
    return prefix
