"""The group's read handlers: protocol read requests answered from the applied state.

Rules:
- `answer(request, view, chunks, group)` is called by the group's leader after its read
  barrier, in a worker thread (it blocks: LevelDB reads, chunk file reads). `view` is a txn
  KvView (get/scan) of the applied state; `chunks` the node's ChunkStore.
- Pure with respect to the state: reads only, no clock. Values travel encoded
  (server.fs.record_codec.encode), b"" for "none" (protocol.py).
- A read never answers from an inode that a prepared transaction holds locked in this group:
  the participant applies its part only at TxnFinish, after the coordinator already told the
  client "committed", so such a read could miss a change the client saw acknowledged (a file
  made by MKDIR's other half, a WRITE's bytes). It answers RemoteError(UNAVAILABLE) instead,
  which the router retries shortly; locks are held only between prepare and finish.
- Misplaced requests are not detected here (it would need the ring): a gateway that asks the
  wrong group sees "no such inode", re-reads under the new ring (RingChanged) or answers STALE.
- READDIR resumes after a cookie: one range scan of the cookie index from (dir, cookie + 1).
  The txn KvView has only prefix scans, so the view may offer `scan_from(prefix, start,
  limit)`; a view over LevelDB (statemachine.StateView, which has `.kv`) is scanned directly;
  any other view is scanned from the start of the directory and filtered (bounded).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from server.cluster import protocol as p
from server.cluster.bucket import is_backed
from server.cluster.bucket_reads import BucketReads, Fetched, Origin
from server.fs import keys
from server.fs.changes import FIRST_COOKIE
from server.fs.keys import decode_u64
from server.fs.record_codec import decode
from server.fs.records import CookieEntry, Inode
from server.rpc.frames import RemoteError
from storage.chunks import ChunkStore
from txn.kv import KvView
from txn.state import TxnStateConfig

MAX_READ_BYTES = 16 << 20  # one request's bytes (a chunk at most)
MAX_DIR_PAGE = 10_000  # entries per ReadDir
_FALLBACK_SCAN = 200_000  # a directory scanned from its start (views without scan_from)
_LOCK = TxnStateConfig().prefix + b"lock/"  # txn/state.py's lock table


def unlocked(view: KvView, *inos: int) -> None:
    """Refuse (retryably) to read an inode a prepared transaction holds (module rules)."""
    for ino in inos:
        if view.get(_LOCK + ino.to_bytes(8, "big")) is not None:
            raise RemoteError(p.UNAVAILABLE, f"inode {ino} is held by a prepared transaction")


def answer(request: Any, view: KvView, chunks: ChunkStore, group: int,
           bucket: BucketReads | None = None, fetched: Fetched | None = None) -> Any:
    """The reply to one read request (protocol.py), from the applied state (worker thread).
    Backed chunks (server/cluster/bucket.py) need `bucket`; they may raise NeedFetch."""
    if bucket is not None and isinstance(request, p.ReadHead | p.ReadChunk):
        return _BACKED[type(request)](request, view, chunks, bucket, fetched)
    handler = _HANDLERS.get(type(request))
    assert handler is not None, f"not a read request: {type(request).__name__}"
    return handler(request, view, chunks)


def _get_inodes(r: p.GetInodes, view: KvView, chunks: ChunkStore) -> p.InodesReply:
    unlocked(view, *r.inos)
    return p.InodesReply(tuple(view.get(keys.inode_key(i)) or b"" for i in r.inos))


def _lookup(r: p.Lookup, view: KvView, chunks: ChunkStore) -> p.LookupReply:
    unlocked(view, r.dir_ino)
    d = view.get(keys.inode_key(r.dir_ino)) or b""
    ent = view.get(keys.dirent_key(r.dir_ino, r.name)) if d else None
    if ent is None:
        return p.LookupReply(d, b"", b"")
    child_ino = decode(ent).ino
    unlocked(view, child_ino)
    child = view.get(keys.inode_key(child_ino)) or b""
    return p.LookupReply(d, ent, child)


def _read_dir(r: p.ReadDir, view: KvView, chunks: ChunkStore) -> p.ReadDirReply:
    unlocked(view, r.dir_ino)
    d = view.get(keys.inode_key(r.dir_ino))
    if d is None:
        return p.ReadDirReply(b"", (), True)
    want = max(1, min(r.max_entries, MAX_DIR_PAGE))
    prefix = keys.cookie_prefix(r.dir_ino)
    start = keys.cookie_key(r.dir_ino, max(r.cookie + 1, FIRST_COOKIE))
    rows = scan_from(view, prefix, start, want + 1)  # one more tells whether this is the end
    entries = []
    for k, v in rows[:want]:
        e: CookieEntry = decode(v)
        entries.append((keys.parse_cookie_key(k)[1], e.name, e.ino, int(e.ftype)))
    return p.ReadDirReply(d, tuple(entries), len(rows) <= want)


def scan_from(view: Any, prefix: bytes, start: bytes, limit: int) -> list[tuple[bytes, bytes]]:
    """Items of `prefix` with key >= start, in key order, at most `limit`."""
    fn: Callable[..., list[tuple[bytes, bytes]]] | None = getattr(view, "scan_from", None)
    if fn is not None:
        return fn(prefix, start, limit)
    kv = getattr(view, "kv", None)
    if kv is not None and hasattr(kv, "iterate_sync"):
        return kv.iterate_sync(prefix=prefix, start=start, limit=limit)
    rows = view.scan(prefix, _FALLBACK_SCAN)
    return [(k, v) for k, v in rows if k >= start][:limit]


def _read_head(r: p.ReadHead, view: KvView, chunks: ChunkStore) -> p.ReadHeadReply:
    unlocked(view, r.ino)
    raw = view.get(keys.inode_key(r.ino))
    if raw is None:
        return p.ReadHeadReply(b"", data=b"")
    inode: Inode = decode(raw)
    end = min(r.offset + min(r.count, MAX_READ_BYTES), inode.size)
    if inode.inline:
        n = max(0, end - r.offset)
        blob = view.get(keys.inline_key(r.ino)) or b""
        data = blob[r.offset:r.offset + n]
        return p.ReadHeadReply(raw, data=data + bytes(n - len(data)))
    if inode.chunk_size <= 0:
        return p.ReadHeadReply(raw, data=b"")
    end = min(end, inode.chunk_size)  # chunk 0 lives here; the rest at the chunks' groups
    if end <= r.offset:
        return p.ReadHeadReply(raw, data=b"")
    data = chunks.pread_sync(r.ino, inode.chunk_size, r.offset, end - r.offset)
    return p.ReadHeadReply(raw, data=bytes(data))


def _read_head_backed(r: p.ReadHead, view: KvView, chunks: ChunkStore, bucket: BucketReads,
                      fetched: Fetched | None) -> p.ReadHeadReply:
    reply = _read_head(r, view, chunks)
    if not reply.inode:
        return reply
    inode: Inode = decode(reply.inode)
    if not reply.data or not is_backed(inode, 0):
        return reply
    origin = Origin(inode.store, inode.okey, inode.etag, inode.obase, inode.chunk_size)
    n = len(reply.data)
    base = bucket.backed_bytes(view, inode.ino, 0, origin, fetched, r.offset, n)
    if base is None:
        return reply  # materialized: the chunk file is the truth
    return p.ReadHeadReply(reply.inode, data=_padded(base, n))


def _read_chunk_backed(r: p.ReadChunk, view: KvView, chunks: ChunkStore, bucket: BucketReads,
                       fetched: Fetched | None) -> p.ReadChunkReply:
    if not r.etag or r.chunk_size <= 0 or r.index * r.chunk_size >= r.obase:
        return _read_chunk(r, view, chunks)
    unlocked(view, r.ino)
    origin = Origin(r.store, r.okey, r.etag, r.obase, r.chunk_size)
    count = max(0, min(r.count, MAX_READ_BYTES, r.chunk_size - r.offset))
    base = bucket.backed_bytes(view, r.ino, r.index, origin, fetched, r.offset, count)
    if base is None:
        return _read_chunk(r, view, chunks)
    return p.ReadChunkReply(_padded(base, count))


def _padded(piece: bytes, n: int) -> bytes:
    """`piece` followed by zeros up to n bytes (the object ends before the window does)."""
    return piece + bytes(n - len(piece)) if len(piece) < n else piece


def _read_chunk(r: p.ReadChunk, view: KvView, chunks: ChunkStore) -> p.ReadChunkReply:
    unlocked(view, r.ino)
    count = min(r.count, MAX_READ_BYTES)
    if count <= 0 or r.offset < 0:
        return p.ReadChunkReply(b"")
    # The request names (chunk, offset inside it); ChunkStore wants a file offset for some
    # chunk size. Any size that holds [offset, offset+count) inside one chunk maps back to
    # exactly (index, offset), and chunk files do not record their size.
    size = r.offset + count
    data = chunks.pread_sync(r.ino, size, r.index * size + r.offset, count)
    return p.ReadChunkReply(bytes(data))


def _fs_stat(r: p.FsStatRequest, view: KvView, chunks: ChunkStore) -> p.FsStatReply:
    st = os.statvfs(chunks.root)
    inodes = decode_u64(view.get(keys.INODE_COUNT))
    return p.FsStatReply(st.f_blocks * st.f_frsize, st.f_bfree * st.f_frsize,
                         st.f_bavail * st.f_frsize, inodes)


_BACKED: dict[type, Callable[..., Any]] = {
    p.ReadHead: _read_head_backed,
    p.ReadChunk: _read_chunk_backed,
}

_HANDLERS: dict[type, Callable[[Any, KvView, ChunkStore], Any]] = {
    p.GetInodes: _get_inodes,
    p.Lookup: _lookup,
    p.ReadDir: _read_dir,
    p.ReadHead: _read_head,
    p.ReadChunk: _read_chunk,
    p.FsStatRequest: _fs_stat,
}
