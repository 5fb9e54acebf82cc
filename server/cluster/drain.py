"""`objcache admin drain`: scale to zero. Every change goes to the bucket, is verified there,
and only then does every node exit.

Picture (the node the admin asked coordinates; every node, itself included, takes part):

    admin ──DrainRequest──▶ coordinator            (then DrainPoll until the status is final)
      1. fence    FenceWrites(drain, lease) ──▶ every node: its gateway answers JUKEBOX to
                  client changes (fence.py) and waits for the changes already running; the
                  coordinator renews the lease while it works (a dead coordinator's fence
                  lapses by itself)
      2. flush    forced write-back rounds (flush.py) of every store, until nothing is dirty
                  or waiting to be deleted, or rounds stop making progress
      3. verify   every inode (ScanState of each group): what the bucket must hold
                  (drain_check.py); each such object's size and ETag as the replicated
                  state records them, from a listing of its directory or a HEAD; a
                  directory's marker found missing is written again (below); then
                  nothing became dirty since step 1
      4. stop     StopNode ──▶ every other node: its fence closes for good and it shuts down
                  as on SIGTERM; the coordinator last, once the admin has read the result
    a failure in 1-3: LiftFence ──▶ every node; nodes and data stay; the status lists each
    path that is not in the bucket as it should be, and why.

Rules:
- Nothing is lost: a node exits only after step 3 found every change in the bucket, and no
  client change can land after that (the fence; step 3's last scan catches a transaction
  that a gateway gave up on but its group still decided).
- A drain never half-stops a cluster it could not verify; a node that cannot be fenced
  (unreachable) fails the drain before anything was flushed.
- One drain at a time per coordinator: a DrainRequest while one runs gets its status.
- A directory's marker ("dir/", no bytes, the directory's mode and owner as metadata) that
  the bucket lacks is PUT again from the inode and checked once more, with a warning: the
  cluster holds all it says. Seen on SeaweedFS, where a marker can vanish while its
  directory stays implicit (HEAD then answers ETag "<md5>-0" and listings omit it); how it
  vanished is not known yet (tests/faults/FINDINGS.md 15). A file's object is never rewritten
  here: a wrong one fails the drain.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from nfs_gateway.backend import FsError
from server.cluster import drain_check, state_scan
from server.cluster import protocol as p
from server.cluster.bucket_listing import metadata_of
from server.cluster.flush import Flusher, RoundResult
from server.cluster.gateway import ClusterBackend
from server.cluster.router import GroupRouter
from server.fs import keys
from server.fs.record_codec import decode_value
from server.fs.records import Inode
from server.rpc.codec import message
from server.rpc.frames import RemoteError, RpcError
from server.rpc.plane import RpcPlane
from storage.kv import prefix_end
from storage.objstore.base import ObjectInfo, StoreError

log = logging.getLogger("objcache.drain")

LEASE_S = 30.0  # a fence lapses this long after the coordinator's last renewal
RENEW_S = 5.0
IDLE_WAIT_S = 10.0  # for client changes that passed the fence before it closed
CALL_TIMEOUT_S = IDLE_WAIT_S + 10.0
STALLED_ROUNDS = 2  # write-back rounds in a row that wrote nothing: what is left is reported
# ...once the store refused all of it, or after this long without progress: a round that only
# met a group catching up or a move still being written (FINDINGS.md 16) is not a verdict.
STALL_WAIT_S = 10.0
ROUND_PAUSE_S = 0.2
VERIFY_PARALLEL = 16  # HEADs and listings in flight
MAX_LIST_PAGES = 100  # per directory listed (then its other objects are HEADed)
SCAN_PAGE = 5_000
MAX_PROBLEMS = 1_000  # listed in a status (the count says how many there were)
EXIT_DELAY_S = 0.2  # between answering StopNode and stopping: the answer gets out first
POLL_HOLD_S = 0.1  # a DrainPoll waits this long for the end before it answers
EXIT_GRACE_S = 30.0  # the coordinator stops this long after success even if nobody asked

ANY_ERROR = (FsError, p.Unavailable, p.RingChanged, RpcError, StoreError)


# -- messages ----------------------------------------------------------------------------------


@message("adm.drain")
@dataclass(frozen=True, slots=True)
class DrainRequest:
    pass


@message("adm.drain_poll")
@dataclass(frozen=True, slots=True)
class DrainPoll:
    drain_id: int


@message("adm.drain_status")
@dataclass(frozen=True, slots=True)
class DrainStatus:
    drain_id: int
    phase: str  # fencing, flushing, verifying, stopping, done, failed
    flushed: int  # files written and objects deleted
    to_flush: int  # what was dirty or to delete when the flush began (grows if more came)
    verified: int  # objects HEADed
    to_verify: int
    finished: bool
    ok: bool  # finished and every node was told to stop
    problems: tuple[tuple[str, str], ...]  # (path, why), at most MAX_PROBLEMS
    problem_count: int
    timings: tuple[tuple[str, float], ...] = ()  # (phase, seconds) of the phases passed


@message("cl.fence")
@dataclass(frozen=True, slots=True)
class FenceWrites:
    drain_id: int
    lease_s: float
    wait_s: float  # for the client changes already running (0: do not wait)


@message("cl.fence_reply")
@dataclass(frozen=True, slots=True)
class FenceReply:
    in_flight: int  # client changes still running when the wait ended (0: fenced and idle)


@message("cl.unfence")
@dataclass(frozen=True, slots=True)
class LiftFence:
    drain_id: int


@message("cl.stop")
@dataclass(frozen=True, slots=True)
class StopNode:
    drain_id: int


class DrainFailed(Exception):
    pass


# -- one drain ---------------------------------------------------------------------------------


@dataclass
class _Job:
    drain_id: int
    phase: str = "fencing"
    flushed: int = 0
    to_flush: int = 0
    verified: int = 0
    to_verify: int = 0
    finished: bool = False
    ok: bool = False
    problems: list[tuple[str, str]] = field(default_factory=list)
    problem_count: int = 0
    round: RoundResult | None = None  # the write-back round running (its live counts)
    why_dirty: dict[int, str] = field(default_factory=dict)  # ino -> last write-back error
    refused: set[int] = field(default_factory=set)  # inodes the store refused (why_dirty)
    renew_error: str = ""
    timings: list[tuple[str, float]] = field(default_factory=list)
    ended: trio.Event = field(default_factory=trio.Event)  # set once `finished`
    _since: float | None = None

    def enter(self, phase: str) -> None:
        now = trio.current_time()
        if self._since is not None:
            self.timings.append((self.phase, round(now - self._since, 3)))
        self.phase, self._since = phase, now

    def status(self) -> DrainStatus:
        flushed = self.flushed + (self.round.flushed + self.round.deleted if self.round else 0)
        return DrainStatus(self.drain_id, self.phase, flushed, max(self.to_flush, flushed),
                           self.verified, self.to_verify, self.finished, self.ok,
                           tuple(self.problems[:MAX_PROBLEMS]), self.problem_count,
                           tuple(self.timings))

    def problem(self, path: str, why: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append((path, why))
        log.warning("drain %d: %s%s", self.drain_id, f"{path}: " if path else "", why)


class Drains:
    """A node's side of drains: the participant's handlers (fence, lift, stop) and, when the
    admin asks this node, the coordinator's job (module picture). `stop()` makes the node
    shut down as on SIGTERM; `peer_url(rpc)` is the plane URL of a node's RPC address;
    `export_paths`: store -> its export path (for the paths reported)."""

    def __init__(self, backend: ClusterBackend, flusher: Flusher, plane: RpcPlane,
                 router: GroupRouter, stop: Callable[[], None],
                 peer_url: Callable[[str], str], export_paths: dict[int, str]) -> None:
        self.b = backend
        self.flusher = flusher
        self.plane = plane
        self.router = router
        self.stop = stop
        self.peer_url = peer_url
        self.export_paths = export_paths
        self.job: _Job | None = None
        self._ids = itertools.count(secrets.randbits(20) << 20)
        self._nursery: trio.Nursery | None = None
        self._exit_scope: trio.CancelScope | None = None

    def serve(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.plane.register(DrainRequest, self._on_drain, admin=True)
        self.plane.register(DrainPoll, self._on_poll, admin=True)
        self.plane.register(FenceWrites, self._on_fence)
        self.plane.register(LiftFence, self._on_lift)
        self.plane.register(StopNode, self._on_stop)

    # -- the participant --------------------------------------------------------------------

    async def _on_fence(self, peer: int, req: FenceWrites) -> FenceReply:
        fence = self.b.fence
        fence.hold(req.drain_id, trio.current_time() + req.lease_s)
        with trio.move_on_after(req.wait_s):
            await fence.wait_idle()
        return FenceReply(fence.in_flight)

    async def _on_lift(self, peer: int, req: LiftFence) -> FenceReply:
        self.b.fence.release(req.drain_id)
        return FenceReply(self.b.fence.in_flight)

    async def _on_stop(self, peer: int, req: StopNode) -> FenceReply:
        self._exit(EXIT_DELAY_S)
        return FenceReply(self.b.fence.in_flight)

    def _exit(self, delay_s: float) -> None:
        """Fence for good, and shut down within `delay_s` (an earlier exit wins)."""
        self.b.fence.close_for_good()
        deadline = trio.current_time() + delay_s
        if self._exit_scope is not None:
            self._exit_scope.deadline = min(self._exit_scope.deadline, deadline)
            return
        assert self._nursery is not None, "serve() first"
        scope = self._exit_scope = trio.CancelScope(deadline=deadline)

        async def later() -> None:
            with scope:
                await trio.sleep_forever()
            log.info("drained: node %d shuts down", self.plane.node_id)
            self.stop()

        self._nursery.start_soon(later)

    # -- the coordinator --------------------------------------------------------------------

    async def _on_drain(self, peer: int, req: DrainRequest) -> DrainStatus:
        if self.job is None or (self.job.finished and not self.job.ok):
            assert self._nursery is not None, "serve() first"
            self.job = _Job(next(self._ids))
            self._nursery.start_soon(self.run, self.job)
        return self.job.status()

    async def _on_poll(self, peer: int, req: DrainPoll) -> DrainStatus:
        job = self.job
        if job is None or job.drain_id != req.drain_id:
            raise RemoteError("no-such-drain", f"no drain {req.drain_id} on this node")
        # Held until the drain ends or POLL_HOLD_S passed: the admin learns the end at once,
        # not up to a poll interval later (the nodes stop right after), and asks no faster.
        with trio.move_on_after(POLL_HOLD_S):
            await job.ended.wait()
        if job.finished and job.ok:
            self._exit(EXIT_DELAY_S)  # the admin has the result: the coordinator goes last
        return job.status()

    async def run(self, job: _Job) -> None:
        log.info("drain %d: fencing writes on every node", job.drain_id)
        job.enter("fencing")
        try:
            await self._phases(job)
            job.ok = True
            job.enter("done")
            self._exit(EXIT_GRACE_S)
        except* DrainFailed as group:
            for e in group.exceptions:
                job.problem("", str(e))
        except* ANY_ERROR as group:
            for e in group.exceptions:
                job.problem("", f"{type(e).__name__}: {e}")
        finally:
            if not job.ok:
                job.enter("failed")
                with trio.CancelScope(shield=True), trio.move_on_after(CALL_TIMEOUT_S):
                    await self._lift_all(job)
            job.finished = True
            job.ended.set()
            log.info("drain %d: %s (%d problems)", job.drain_id, job.phase, job.problem_count)

    async def _phases(self, job: _Job) -> None:
        async with trio.open_nursery() as nursery:
            await self._fence_all(job)
            nursery.start_soon(self._renew, job)
            await self._flush(job)
            await self._verify(job)
            await self._stop_others(job)
            nursery.cancel_scope.cancel()

    async def _each_node(self, msg: FenceWrites | LiftFence | StopNode, *, me_too: bool = True
                         ) -> dict[int, FenceReply | str]:
        """`msg` to every node (this one through its own handler, if `me_too`), in parallel:
        each reply, or the error that kept it."""
        out: dict[int, FenceReply | str] = {}
        me = self.plane.node_id
        local = {FenceWrites: self._on_fence, LiftFence: self._on_lift, StopNode: self._on_stop}

        async def one(node_id: int) -> None:
            try:
                if node_id == me:
                    out[node_id] = await local[type(msg)](me, msg)  # type: ignore[operator]
                else:
                    out[node_id] = await self.plane.call(node_id, msg, CALL_TIMEOUT_S)
            except RpcError as e:
                out[node_id] = f"{type(e).__name__}: {e}"

        async with trio.open_nursery() as nursery:
            for n in self.router.nodelist.nodes:
                if n.node_id != me:
                    self.plane.add_peer(n.node_id, self.peer_url(n.rpc))
                    nursery.start_soon(one, n.node_id)
                elif me_too:
                    nursery.start_soon(one, me)
        return out

    async def _fence_all(self, job: _Job) -> None:
        replies = await self._each_node(FenceWrites(job.drain_id, LEASE_S, IDLE_WAIT_S))
        bad = [f"node {n}: {r}" if isinstance(r, str) else
               f"node {n}: {r.in_flight} client changes still running"
               for n, r in sorted(replies.items()) if isinstance(r, str) or r.in_flight]
        if bad:
            raise DrainFailed("could not fence writes: " + "; ".join(bad))

    async def _renew(self, job: _Job) -> None:
        while True:
            await trio.sleep(RENEW_S)
            replies = await self._each_node(FenceWrites(job.drain_id, LEASE_S, 0.0))
            bad = [f"node {n}: {r}" for n, r in sorted(replies.items()) if isinstance(r, str)]
            if bad:
                job.renew_error = "the write fence could not be renewed: " + "; ".join(bad)

    async def _lift_all(self, job: _Job) -> None:
        replies = await self._each_node(LiftFence(job.drain_id))
        for n, r in sorted(replies.items()):
            if isinstance(r, str):
                log.warning("drain %d: lifting the fence of node %d: %s (its lease lapses in "
                            "%.0f s)", job.drain_id, n, r, LEASE_S)

    def _check_renewed(self, job: _Job) -> None:
        if job.renew_error:
            raise DrainFailed(job.renew_error)

    # -- 2. flush ---------------------------------------------------------------------------

    async def _flush(self, job: _Job) -> None:
        job.enter("flushing")
        stores = sorted(self.b.store_roots)
        if not stores:
            raise DrainFailed("no export is backed by a bucket: draining would lose the data")
        for store in stores:
            dirty, deletes = await self.flusher.pending(store)
            job.to_flush += dirty + deletes
        for store in stores:
            await self._flush_store(job, store)
        self._check_renewed(job)

    async def _flush_store(self, job: _Job, store: int) -> None:
        stalled, refused_all, progress_at = 0, False, trio.current_time()
        while stalled < STALLED_ROUNDS or not (
                refused_all or trio.current_time() - progress_at >= STALL_WAIT_S):
            res = job.round = RoundResult()
            await self.flusher.round(store, force=True, res=res)
            job.round = None
            job.flushed += res.flushed + res.deleted
            for ino, (_key, why, refused) in res.failed.items():
                # The store's own refusal says more than a later timeout waiting for it.
                if refused or ino not in job.refused:
                    job.why_dirty[ino] = why
                if refused:
                    job.refused.add(ino)
            for e in res.errors:
                log.info("drain %d: write-back: %s", job.drain_id, e)
            if not res.dirty_left and not res.deletes_left:
                return
            # A key that another round (the background write-back, here or on a node that
            # led before) is uploading right now is skipped as busy: progress under way, not
            # a stall. Counting it as a stall ended drains after 0.4 s while that upload went
            # on (found by the fault campaign). The upload is bounded by the store's timeouts
            # and attempts, a dead node's hold by its lease (flush_claim.py).
            busy = self.flusher.uploading(store) or res.held
            stalled = 0 if res.flushed or res.deleted or busy else stalled + 1
            if not stalled:
                progress_at = trio.current_time()
            # The store's own refusals will not change: what is left can be reported now.
            refused_all = bool(res.failed) and all(r for _k, _w, r in res.failed.values())
            await trio.sleep(ROUND_PAUSE_S)
        log.warning("drain %d: store %d: write-back stopped making progress", job.drain_id,
                    store)

    # -- 3. verify --------------------------------------------------------------------------

    async def _verify(self, job: _Job) -> None:
        job.enter("verifying")
        inodes = await self._all_inodes()
        roots = dict(self.b.store_roots)
        tables = {s: await self.flusher.key_table(s) for s in sorted(roots)}
        expected, problems = drain_check.expected_objects(inodes, roots, tables, job.why_dirty)
        job.to_verify = len(expected)
        for pr in problems:
            job.problem(self._path(pr.store, pr.key, pr.ino), pr.why)
        await self._heads(job, expected, inodes)
        if job.problem_count:
            raise DrainFailed(f"{job.problem_count} files or objects are not in the bucket as "
                              "they should be; nothing was stopped")
        for store in sorted(roots):  # a change decided after the scan (module rules)
            dirty, deletes = await self.flusher.pending(store)
            if dirty or deletes:
                raise DrainFailed(f"store {store}: {dirty} files changed during the drain")
        self._check_renewed(job)

    async def _all_inodes(self) -> dict[int, Inode]:
        """Every inode of every group (ScanState pages of the inode key range)."""
        out: dict[int, Inode] = {}
        for g in sorted(self.router.nodelist.groups()):
            rows = await state_scan.scan(lambda req, g=g: self.b._at(lambda: g, req),
                                         start=keys.INODE, stop=prefix_end(keys.INODE) or b"",
                                         page=SCAN_PAGE)
            for _, v in rows:
                inode: Inode = decode_value(v)
                out[inode.ino] = inode
        return out

    async def _heads(self, job: _Job, expected: list[drain_check.Expected],
                     inodes: dict[int, Inode]) -> None:
        """Each expected object confirmed by a listing of its directory or by a HEAD
        (drain_check.py rules); a missing directory marker written again (module rules)."""
        limiter = trio.CapacityLimiter(VERIFY_PARALLEL)
        listed: dict[tuple[int, bytes], ObjectInfo] = {}

        async def list_dir(store: int, prefix: bytes) -> None:
            async with limiter:
                listed.update(await self._list_dir(store, prefix))

        async def one(e: drain_check.Expected) -> None:
            info = listed.get((e.store, e.key))
            if _mismatch(e, info):
                async with limiter:
                    try:
                        info = await self.b.stores[e.store].head(e.key.decode())
                    except StoreError as err:
                        job.problem(self._path(e.store, e.key, e.ino),
                                    f"HEAD failed: {type(err).__name__}: {err}")
                        return
            why = _mismatch(e, info)
            inode = inodes.get(e.ino)
            if why and inode is not None and drain_check.is_marker(e, inode):
                async with limiter:
                    why = await self._rewrite_marker(e, inode, why)
            job.verified += 1
            if why:
                job.problem(self._path(e.store, e.key, e.ino), why)

        async with trio.open_nursery() as nursery:
            for store, prefix in drain_check.listings(expected):
                nursery.start_soon(list_dir, store, prefix)
        async with trio.open_nursery() as nursery:
            for e in expected:
                nursery.start_soon(one, e)

    async def _rewrite_marker(self, e: drain_check.Expected, inode: Inode,
                              why: str) -> str | None:
        """PUT a directory's marker the bucket lacks again, and HEAD it: None when it is there
        now, else why not."""
        store = self.b.stores[e.store]
        log.warning("drain: the marker %r of directory inode %d: %s; writing it again",
                    e.key, e.ino, why)
        try:
            await store.put(e.key.decode(), b"", metadata=metadata_of(inode))
            info = await store.head(e.key.decode())
        except StoreError as err:
            return f"{why}; writing it again failed: {type(err).__name__}: {err}"
        again = _mismatch(e, info)
        return None if again is None else f"{why}; written again: {again}"

    async def _list_dir(self, store: int, prefix: bytes) -> dict[tuple[int, bytes], ObjectInfo]:
        """The objects directly under `prefix` (a delimiter listing, page after page); a store
        error only means the HEADs decide."""
        out: dict[tuple[int, bytes], ObjectInfo] = {}
        token: str | None = None
        try:
            for _ in range(MAX_LIST_PAGES):
                page = await self.b.stores[store].list_page(prefix.decode(), token=token)
                out.update(((store, o.key.encode()), o) for o in page.objects)
                token = page.next_token
                if token is None:
                    break
        except StoreError as e:
            log.info("drain: listing %r: %s (HEADs instead)", prefix, e)
        return out

    def _path(self, store: int, key: bytes | None, ino: int) -> str:
        if key is None:
            return f"(inode {ino}, no path)"
        export = self.export_paths.get(store, f"(store {store})").rstrip("/")
        return f"{export}/{key.decode(errors='replace')}"

    # -- 4. stop ----------------------------------------------------------------------------

    async def _stop_others(self, job: _Job) -> None:
        job.enter("stopping")
        replies = await self._each_node(StopNode(job.drain_id), me_too=False)
        bad = [f"node {n}: {r}" for n, r in sorted(replies.items()) if isinstance(r, str)]
        if bad:
            raise DrainFailed("every change is in the bucket, but some nodes could not be "
                              "told to stop: " + "; ".join(bad))


def _mismatch(e: drain_check.Expected, info: ObjectInfo | None) -> str | None:
    """drain_check.mismatch of what a HEAD or listing found (None: no object)."""
    return drain_check.mismatch(e, info.size if info else None, info.etag if info else "")
