"""Write-back's hands in each group: the uploads a flusher asks of the group that holds the
bytes (flush.py decides what and when; this module only moves bytes to the bucket).

Rules:
- PutObject (at the inode's group): the whole file (inline bytes or chunk 0 — the flusher
  sends this only for files of at most one chunk), read from the applied state like a READ
  (backed bytes from the cache or fetched), PUT with the given metadata. The inode's version
  is read BEFORE the bytes: an answer names a version whose bytes are at least that new, so
  SetClean can never mark newer changes clean with older bytes in the bucket.
- PutPart (at a chunk's group): one chunk as one part of a multipart upload. A chunk that is
  wholly the object's bytes (backed, not materialized, inside obase) is copied inside the
  store (UploadPartCopy with If-Match), never read through the cluster; any other chunk is
  read like a READ and uploaded.
- PutObjects (a lane: several PutObject at one group, flush_batch.py): the versions and bytes
  of all its files are read in one worker-thread trip (after one read barrier), then PUT one
  after another; each file gets its own answer or error, so one refusal costs only its file.
  A file whose bytes must first come from the bucket takes PutObject's path.
- Both answer the pin version (keys.materialized_key) the chunk had before its bytes were
  read: after the clean mark, write-back unpins exactly that version (Unpin), so a chunk
  written meanwhile stays pinned.
- A request's `stop_ns` (the wall-clock end of the write-back round's claim on the key, less
  a margin: flush_claim.py) cuts its store work: nothing is sent to the store after it, and
  the request fails as a store failure.
- Failures: store errors travel as RemoteError (STORE_FAILED, which the router does not
  retry: the flusher's next round does; ORIGIN_CHANGED: the source object changed) and the
  flusher keeps the file dirty.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import trio

from server.cluster import protocol as p
from server.cluster.bucket import backed_len
from server.cluster.bucket_reads import NeedFetch
from server.cluster.flush_claim import trio_deadline
from server.fs import keys
from server.fs.keys import decode_u64
from server.fs.record_codec import decode_value
from server.fs.records import Inode
from server.rpc.frames import RemoteError
from storage.objstore.base import ObjectStore, PreconditionFailed, StoreError

if TYPE_CHECKING:
    from server.cluster.group import GroupRuntime


def _store(runtime: GroupRuntime, store: int) -> ObjectStore:
    bucket = runtime.bucket
    s = bucket.stores.get(store) if bucket is not None else None
    if s is None:
        raise RemoteError(p.UNAVAILABLE, f"no object store {store} on node {runtime.node_id}")
    return s


@contextmanager
def _until(stop_ns: int, what: str) -> Iterator[None]:
    """Cut the store work inside at `stop_ns` (module rules; 0: no bound)."""
    if not stop_ns:
        yield
        return
    with trio.move_on_at(trio_deadline(stop_ns, time.time_ns())) as scope:
        yield
    if scope.cancelled_caught:
        raise RemoteError(p.STORE_FAILED, f"{what}: the write-back round's claim on the key "
                                          "ended first")


async def _pin_version(runtime: GroupRuntime, ino: int, index: int) -> int:
    return decode_u64(await runtime.kv.get(keys.materialized_key(ino, index)))


async def put_object(runtime: GroupRuntime, req: p.PutObject) -> p.PutReply:
    version = await _pin_version(runtime, req.ino, 0)  # before the bytes (module rules)
    head = await runtime.handle(p.ReadHead(req.ring_version, req.ino, 0, p.MAX_PUT_BYTES))
    return await _put(runtime, req, version, head)


async def put_objects(runtime: GroupRuntime, req: p.PutObjects) -> p.PutObjectsReply:
    await runtime.read_barrier()
    heads = await trio.to_thread.run_sync(_heads_sync, runtime, req)
    replies: list[p.PutReply] = []
    errors: list[tuple[str, str]] = []
    for put, head in zip(req.puts, heads, strict=True):
        try:
            if isinstance(head, RemoteError):
                raise head
            if head is None:  # its bytes are in the bucket only: PutObject's own path
                reply = await put_object(runtime, put)
            else:
                reply = await _put(runtime, put, *head)
        except RemoteError as e:
            replies.append(p.PutReply(False, "", 0))
            errors.append((e.code, e.message))
        else:
            replies.append(reply)
            errors.append(("", ""))
    return p.PutObjectsReply(tuple(replies), tuple(errors))


_Head = tuple[int, p.ReadHeadReply] | RemoteError | None


def _heads_sync(runtime: GroupRuntime, req: p.PutObjects) -> list[_Head]:
    """Each put's pin version, then its inode and bytes (as put_object reads them, in the
    same order); None when the bytes need a fetch from the bucket first."""
    out: list[_Head] = []
    for put in req.puts:
        try:
            version = decode_u64(runtime.kv.get_sync(keys.materialized_key(put.ino, 0)))
            out.append((version, runtime.answer_sync(
                p.ReadHead(req.ring_version, put.ino, 0, p.MAX_PUT_BYTES))))
        except NeedFetch:
            out.append(None)
        except RemoteError as e:
            out.append(e)
    return out


async def _put(runtime: GroupRuntime, req: p.PutObject, version: int,
               head: p.ReadHeadReply) -> p.PutReply:
    if not head.inode:
        return p.PutReply(False, "", 0)
    inode: Inode = decode_value(head.inode)
    if inode.dver != req.dver or inode.size > p.MAX_PUT_BYTES:
        return p.PutReply(False, "", 0)
    data = head.data[:inode.size]
    data += bytes(inode.size - len(data))
    try:
        with _until(req.stop_ns, f"PUT {req.key!r}"):
            etag = await _store(runtime, req.store).put(req.key.decode(), data,
                                                        metadata=dict(req.metadata))
    except StoreError as e:
        raise RemoteError(p.STORE_FAILED, f"PUT {req.key!r}: {type(e).__name__}: {e}") from e
    return p.PutReply(True, etag, inode.size, 0 if inode.inline else version)


async def put_part(runtime: GroupRuntime, req: p.PutPart) -> p.PartReply:
    store = _store(runtime, req.store)
    cs = req.chunk_size
    start = req.index * cs
    materialized = await _pin_version(runtime, req.ino, req.index)
    try:
        with _until(req.stop_ns, f"part {req.part_number} of {req.key!r}"):
            if (req.etag and not materialized
                    and backed_len(req.obase, cs, req.index) >= req.length):
                etag = await store.upload_part_copy(
                    req.key.decode(), req.upload_id, req.part_number, req.okey.decode(),
                    start, start + req.length, if_match=req.etag.decode())
                return p.PartReply(etag, True)
            reply = await runtime.handle(p.ReadChunk(
                req.ring_version, req.ino, req.index, 0, req.length, cs, req.store,
                req.okey, req.etag, req.obase))
            data = reply.data + bytes(req.length - len(reply.data))
            etag = await store.upload_part(req.key.decode(), req.upload_id, req.part_number,
                                           data)
    except StoreError as e:
        code = p.ORIGIN_CHANGED if isinstance(e, PreconditionFailed) else p.STORE_FAILED
        raise RemoteError(code, f"part {req.part_number} of {req.key!r}: {e}") from e
    return p.PartReply(etag, False, materialized)
