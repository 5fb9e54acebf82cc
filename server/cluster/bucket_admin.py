"""`objcache admin warm PATH` and `objcache admin evict PATH`, on the node that is asked.

Rules:
- The node walks the tree under PATH through its own gateway (ClusterBackend, as root), so a
  directory never listed is loaded from the bucket on the way, exactly as an NFS client's
  READDIR would load it.
- warm: first the walk (files and their backed bytes: the total), then every backed chunk is
  fetched by its owner (ReadChunk with prefetch), `warm_parallel` at a time. It runs as a job
  in the node's nursery; the admin client polls its status (JobStatus) to draw progress. A
  chunk already cached costs its owner one index lookup. A chunk whose request ran past its
  deadline or found the owner or the store unavailable is asked again (WARM_TRIES, pausing
  longer each time): a fetch outlasting one try goes on at the owner and the next try joins
  it (bucket_reads.py), so a slow link delays the warm-up, it does not fail it.
- evict: the walk, then DropCached at every group that may hold a chunk of each file. Only
  clean copies go; materialized and written chunks are the replicated state's.
- flush: forced write-back rounds (flush.py) for the tree under PATH until nothing there is
  dirty or waiting to be deleted; progress counts files written and objects deleted.
- Errors of one file (gone meanwhile, a store error) are counted and the first few reported;
  the job goes on with the rest.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import trio

from nfs_gateway.backend import Cred, FileId, FileType, FsError, Jukebox
from server.cluster import protocol as p
from server.cluster.bucket import is_backed
from server.cluster.flush import Flusher
from server.cluster.gateway import ClusterBackend
from server.fs.records import Inode
from server.rpc.codec import message
from server.rpc.frames import DEADLINE, RemoteError
from server.rpc.plane import RpcPlane

log = logging.getLogger("objcache.admin")

ROOT = Cred(0, 0)
MAX_ERRORS = 20  # reported per job
WARM_PARALLEL = 8  # chunks in flight
WARM_TRIES = 6  # asks per chunk while the answer is "not yet" (module rules)
WARM_PAUSE_S = 0.25  # after the n-th of them, n times this
_NOT_YET = (DEADLINE, p.UNAVAILABLE)  # RemoteError codes worth asking again
FLUSH_STALLED_ROUNDS = 5  # forced rounds in a row that wrote nothing: give up and report
FLUSH_RETRY_S = 0.2


@message("adm.warm")
@dataclass(frozen=True, slots=True)
class WarmRequest:
    path: str


@message("adm.evict")
@dataclass(frozen=True, slots=True)
class EvictRequest:
    path: str


@message("adm.flush")
@dataclass(frozen=True, slots=True)
class FlushRequest:
    path: str


@message("adm.job")
@dataclass(frozen=True, slots=True)
class JobRequest:
    job_id: int


@message("adm.job_status")
@dataclass(frozen=True, slots=True)
class JobStatus:
    job_id: int
    kind: str
    path: str
    walked: bool  # the walk is over: the totals are final
    files: int
    total_bytes: int
    done_bytes: int  # warm: backed bytes fetched or found cached; evict: bytes freed
    finished: bool
    errors: tuple[str, ...]


@dataclass
class _Job:
    job_id: int
    kind: str
    path: str
    walked: bool = False
    files: int = 0
    total_bytes: int = 0
    done_bytes: int = 0
    finished: bool = False
    errors: list[str] = field(default_factory=list)

    def status(self) -> JobStatus:
        return JobStatus(self.job_id, self.kind, self.path, self.walked, self.files,
                         self.total_bytes, self.done_bytes, self.finished,
                         tuple(self.errors[:MAX_ERRORS]))

    def error(self, what: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(what)
        log.info("%s %s: %s", self.kind, self.path, what)


class BucketAdmin:
    """The node's warm and evict jobs (module rules). `serve(nursery)` registers the
    handlers on the plane."""

    def __init__(self, backend: ClusterBackend, plane: RpcPlane,
                 flusher: Flusher | None = None) -> None:
        self.backend = backend
        self.plane = plane
        self.flusher = flusher
        self.jobs: dict[int, _Job] = {}
        self._ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None

    def serve(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        for cls in (WarmRequest, EvictRequest, FlushRequest):
            self.plane.register(cls, self._on_start, admin=True)
        self.plane.register(JobRequest, self._on_job, admin=True)

    async def _on_start(self, peer: int, req: WarmRequest | EvictRequest | FlushRequest
                        ) -> JobStatus:
        kind = {WarmRequest: "warm", EvictRequest: "evict", FlushRequest: "flush"}[type(req)]
        job = self.start(kind, req.path)
        return job.status()

    async def _on_job(self, peer: int, req: JobRequest) -> JobStatus:
        job = self.jobs.get(req.job_id)
        if job is None:
            raise RemoteError("no-such-job", f"no job {req.job_id} on this node")
        return job.status()

    def start(self, kind: str, path: str) -> _Job:
        assert self._nursery is not None, "serve() first"
        job = _Job(next(self._ids), kind, path)
        self.jobs[job.job_id] = job
        self._nursery.start_soon(self.run, job)
        return job

    async def run(self, job: _Job) -> None:
        try:
            if job.kind == "flush":
                await self._flush(job)
                return
            files = await self._walk(job)
            job.walked = True
            if job.kind == "warm":
                await self._warm(job, files)
            else:
                await self._evict(job, files)
        except (FsError, p.Unavailable, p.RingChanged, RemoteError) as e:
            job.error(f"{type(e).__name__}: {e}")
        finally:
            job.finished = True
            log.info("%s %s: %d files, %d of %d bytes, %d errors", job.kind, job.path,
                     job.files, job.done_bytes, job.total_bytes, len(job.errors))

    async def _flush(self, job: _Job) -> None:
        """Force write-back rounds for the tree under job.path until nothing there is dirty
        or to be deleted, or rounds stop making progress (what is left is reported)."""
        if self.flusher is None:
            job.error("this node has no write-back")
            return
        b = self.backend
        inode = await b._get(await self._resolve(job.path))
        stores = [inode.store] if inode.store else sorted(b.store_roots)
        job.walked = True
        for store in stores:
            if store not in b.store_roots:
                continue
            under = await self.flusher._key_of(inode, {}) if inode.store else None
            stalled = 0
            while stalled < FLUSH_STALLED_ROUNDS:
                res = await self.flusher.round(store, force=True, under=under or None)
                job.done_bytes += res.flushed + res.deleted
                job.files = job.done_bytes
                job.total_bytes = job.done_bytes + res.dirty_left + res.deletes_left
                for e in res.errors:
                    job.error(e)
                if not res.dirty_left and not res.deletes_left:
                    break
                stalled = 0 if res.flushed or res.deleted else stalled + 1
                await trio.sleep(FLUSH_RETRY_S)
            else:
                job.error(f"store {store}: {res.dirty_left} files and {res.deletes_left} "
                          f"deletes could not be written back")

    async def _resolve(self, path: str) -> FileId:
        """The file or directory at `path` (LOOKUPs from the root, as root)."""
        fid = await self.backend.export_root("/")
        for part in (x for x in path.split("/") if x):
            fid = (await self.backend.lookup(ROOT, fid, part.encode())).fid
        return fid

    async def _walk(self, job: _Job) -> list[Inode]:
        """Every regular file under job.path (the path itself if it is a file)."""
        b = self.backend
        fid = await self._resolve(job.path)
        files: list[Inode] = []
        todo: list[FileId] = [fid]
        while todo:
            fid = todo.pop()
            inode = await b._get(fid)
            if inode.ftype == FileType.REG:
                files.append(inode)
                job.files += 1
                job.total_bytes += _bytes_of(job.kind, inode)
                continue
            if inode.ftype == FileType.DIR:
                todo.extend([e.fid async for e in b.children(fid, plus=True)
                             if e.fid is not None])
        return files

    async def _warm(self, job: _Job, files: list[Inode]) -> None:
        limiter = trio.CapacityLimiter(WARM_PARALLEL)
        b = self.backend

        async def one(inode: Inode, index: int) -> None:
            async with limiter:
                req = b._chunk_request(inode, index, 0, 0, prefetch=True)
                for attempt in range(1, WARM_TRIES + 1):
                    try:
                        await b._at(lambda: b.ring.group_of_chunk(inode.ino, index), req)
                        break
                    except (FsError, RemoteError) as e:
                        not_yet = isinstance(e, Jukebox) or (
                            isinstance(e, RemoteError) and e.code in _NOT_YET)
                        if not not_yet or attempt == WARM_TRIES:
                            job.error(f"inode {inode.ino} chunk {index}: {e}")
                            return
                    log.debug("warm: chunk %d of %d not yet (try %d)", index, inode.ino, attempt)
                    await trio.sleep(WARM_PAUSE_S * attempt)
                job.done_bytes += min(inode.chunk_size, inode.obase - index * inode.chunk_size)

        async with trio.open_nursery() as nursery:
            for inode in files:
                for index in range(_chunks(inode)):
                    if is_backed(inode, index):
                        nursery.start_soon(one, inode, index)

    async def _evict(self, job: _Job, files: list[Inode]) -> None:
        b = self.backend
        for inode in files:
            groups = {b.ring.group_of_chunk(inode.ino, i) for i in range(_chunks(inode))}
            for g in sorted(groups):
                try:
                    reply = await b._at(lambda g=g: g, p.DropCached(0, inode.ino))
                except (FsError, RemoteError) as e:
                    job.error(f"inode {inode.ino} group {g}: {e}")
                    continue
                job.done_bytes += reply.freed_bytes


def _chunks(inode: Inode) -> int:
    if inode.inline or inode.chunk_size <= 0:
        return 0
    return -(-max(inode.size, inode.obase) // inode.chunk_size)


def _bytes_of(kind: str, inode: Inode) -> int:
    return inode.obase if kind == "warm" and inode.etag and not inode.inline else 0
