"""ClusterBackend: the nfs_gateway Backend protocol over the cluster's groups (a protocol.Router).

Rules:
- Reads go to the owning group's leader (router.call): inodes, lookups and directory pages to
  the inode's group, chunk bytes to the chunk's group. Reads are optimistic: they decide what
  to propose and what the client is told, never what is applied.
- Every change is one transaction (txn/), built as a Plan: records per group, the coordinator
  being the group of the primary inode (the directory of a create/remove/link, the source
  directory of a rename, the file of a setattr/write). One group: a TxnLocal; more: 2PC. The
  records carry apply-time checks (LinkDirent: EEXIST; UnlinkDirent.expect_ino; ExpectInode:
  empty directory, unchanged parent, nlink and size), so the groups refuse a plan whose reads
  went stale. Then the gateway re-reads and rebuilds with attempt+1 (optimistic concurrency),
  at most `max_attempts` times (then JUKEBOX); the re-read decides the NFS answer, except
  ENOTEMPTY, which is the answer.
- Exactly once: txn ids are txn.ids.txn_id(client id, request counter, attempt); the client id
  is the node id plus a random per-start incarnation. A reply that is lost or undecided
  (TxnReply.decided False) is retried with the SAME txn id (RunTxn.retry), so a txn never
  applies twice; only a definitive abort moves to a new attempt.
- protocol.Unavailable -> Jukebox (the client retries later); protocol.RingChanged -> re-plan
  against the router's new ring.
- The after-attributes of a change (wcc_data, new objects' attributes) are computed by applying
  the plan's records to what was read (the state machine is pure); if that is not possible the
  inodes are read again after the commit.
- While a drain holds `fence` (fence.py), client changes answer JUKEBOX; reads go on.
- Data: see gateway_data.py. Namespace changes: gateway_ns.py. Permission checks, name rules
  and sattr handling are the single-node backend's (server/fs/perms.py, common.py, namespace.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from nfs_gateway.backend import (
    Attr,
    Cred,
    DirEntry,
    FileId,
    FileType,
    FsStat,
    Jukebox,
    LookupResult,
    NoEnt,
    NoSpc,
    NotDir,
    NotEmpty,
    ReadDirResult,
    ServerFault,
    Stale,
)
from server.cluster import protocol as p
from server.cluster.bucket import BucketConfig
from server.cluster.bucket_heads import HeadFanout
from server.cluster.fence import WriteFence
from server.cluster.fsops import ENOTEMPTY, MISPLACED, MOVING, encode_ops, owner_of
from server.cluster.gateway_bucket import BucketOps
from server.cluster.gateway_data import LISTED_PREFETCH_PARALLEL, DataOps
from server.cluster.gateway_leases import LeasedReads
from server.cluster.gateway_ns import NamespaceOps
from server.cluster.gateway_plan import Done, Plan, PlanView, Reread
from server.cluster.inoalloc import InoAllocator
from server.fs import perms
from server.fs import state as fs_state
from server.fs.attrops import AttrOps
from server.fs.changes import Changes, StateError
from server.fs.common import DOT, DOTDOT, check_name, dir_cookieverf, require_dir, to_attr, wcc
from server.fs.config import FsConfig
from server.fs.readdir import DOT_COOKIE, DOTDOT_COOKIE, check_cookie
from server.fs.record_codec import decode_value
from server.fs.records import Dirent, Inode, Multi
from server.metrics import TXN_RETRIES
from server.rpc.frames import RemoteError
from txn.ids import txn_id

if TYPE_CHECKING:
    from storage.objstore.base import ObjectStore

ROOT_INO = 1
MAX_ATTEMPTS = 30  # rebuilds of one operation after aborts, then JUKEBOX
MAX_RESENDS = 20  # resends of one txn id whose answer was lost or undecided
MAX_SILENT_RESENDS = 3  # of those, after the router gave up (Unavailable)
MAX_REPLANS = 8  # ring changes during one read
BACKOFF_MAX_S = 0.05
MOVING_WAIT_S = 0.01  # between tries of a change a ring change holds (ringstate.py)
CHILDREN_PAGE = 1000  # entries per READDIR when a tree is walked
# Where a change tries its transaction again (objcache_txn_retries_total, server/metrics.py).
_RETRY_ABORTED, _RETRY_MOVING, _RETRY_RESENT = (
    TXN_RETRIES.labels(reason) for reason in ("aborted", "moving", "resent"))


class ClusterBackend(NamespaceOps, DataOps, BucketOps, AttrOps, LeasedReads):
    """The Backend protocol over a Router. The node builds one with the node's InoAllocator
    and its FsConfig; `incarnation` and `rng` are for simulations (default: random)."""

    def __init__(
        self,
        router: p.Router,
        alloc: InoAllocator,
        config: FsConfig,
        fsid: int,
        node_id: int,
        clock: Callable[[], int] = time.time_ns,
        *,
        incarnation: bytes | None = None,
        rng: random.Random | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        stores: Mapping[int, ObjectStore] | None = None,
        bucket: BucketConfig | None = None,
        home_group: Callable[[], int | None] | None = None,
    ) -> None:
        self.router = router
        # Where MKDIR puts new directories (cluster.dir_placement): this node's group when
        # given, else wherever the new id hashes (gateway_ns.py).
        self._home_group = home_group
        # The object stores by export id (server/cluster/bucket.py): a directory whose inode
        # names a store is loaded from it on first use and revalidated after bucket.ttl_s.
        self.stores: Mapping[int, ObjectStore] = stores or {}
        self.bucket = bucket or BucketConfig()
        # The root directory of each store (export id -> inode): its group keeps the store's
        # key table (flush.py). Set by the node once the export roots are bound.
        self.store_roots: dict[int, int] = {}
        self._sequential: dict[int, int] = {}  # ino -> where its last READ ended (read-ahead)
        self._prefetched: dict[tuple[int, int], None] = {}  # chunks asked ahead, oldest first
        self._listed_limiter = trio.CapacityLimiter(LISTED_PREFETCH_PARALLEL)
        self._listed_pending = 0  # small files of listings asked ahead and not done yet
        self.heads: HeadFanout | None = None  # a listing's HEADs over the nodes; the node's
        self._materialized: dict[tuple[int, int], None] = {}  # backed chunks known local
        # WRITEs to one file take turns (gateway_data.py): ino -> (lock, users)
        self._write_locks: dict[int, tuple[trio.Lock, int]] = {}
        self._nursery: trio.Nursery | None = None  # background work (read-ahead); the node's
        self.alloc = alloc
        self.config = config
        self.fsid = fsid
        self.node_id = node_id
        self._clock = clock
        self._rng = rng or random.Random(secrets.randbits(64))
        self._client_id = node_id.to_bytes(4, "big") + (incarnation or secrets.token_bytes(8))
        self._requests = itertools.count()
        self.max_attempts = max_attempts
        # writeverf3: every acknowledged WRITE is in the groups' Raft logs (FILE_SYNC), so the
        # verifier only has to differ between gateway starts.
        self.verifier = bytes(self._rng.getrandbits(8) for _ in range(8))
        self.stats = {"txns": 0, "aborts": 0, "resends": 0, "replans": 0, "rereads": 0}
        self.last_abort = ""  # the reason of the latest abort (tests, logs)
        self.fence = WriteFence()  # held by a drain (drain.py): client changes wait
        self._init_lease_cache()  # other groups' replies held under leases (gateway_leases.py)

    @property
    def ring(self) -> p.RingView:
        return self.router.ring

    # -- small helpers ----------------------------------------------------------------------

    def _new_dir_group(self) -> int | None:
        """The group a new directory should land in (None: anywhere). Only a group in the
        current ring: a node whose group is not placed (yet) spreads its directories."""
        home = self._home_group() if self._home_group is not None else None
        return home if home in getattr(self.ring, "groups", ()) else None

    def _now(self) -> int:
        return self._clock()

    def _new_gen(self) -> int:
        return self._rng.getrandbits(31) << 1 | 1  # never 0: FileId(ino, 0) is always stale

    def _fid(self, inode: Inode) -> FileId:
        return FileId(inode.ino, inode.gen)

    def _attr(self, inode: Inode) -> Attr:
        return to_attr(inode, self.fsid)

    def _wcc(self, before: Inode | None, after: Inode | None) -> Any:
        return wcc(before, after, self.fsid)

    async def _backoff(self, attempt: int) -> None:
        await trio.sleep(self._rng.uniform(0, min(0.001 * (1 << min(attempt, 10)), BACKOFF_MAX_S)))

    # -- reads ------------------------------------------------------------------------------

    async def _call(self, group: int, request: Any) -> Any:
        try:
            return await self.router.call(group, request)
        except p.Unavailable as e:
            raise Jukebox(str(e)) from e

    async def _at(self, where: Callable[[], int], request: Any) -> Any:
        """A read at the group `where()` names under the current ring; re-planned on a ring
        change."""
        for _ in range(MAX_REPLANS):
            try:
                return await self._call(where(), request)
            except p.RingChanged:
                self.stats["replans"] += 1
        raise Jukebox("placement keeps changing")

    async def _at_inode(self, ino: int, request: Any) -> Any:
        return await self._at(lambda: self.ring.group_of_inode(ino), request)

    async def _inode(self, ino: int) -> Inode | None:
        raw = self.held(("i", ino))
        if raw is None:
            raw = (await self._leased_inodes((ino,))).inodes[0]
        return decode_value(raw) if raw else None

    async def _inodes(self, inos: list[int]) -> dict[int, Inode | None]:
        """Several inodes: one GetInodes per group."""
        by_group: dict[int, list[int]] = {}
        out: dict[int, Inode | None] = {}
        for ino in dict.fromkeys(inos):
            raw = self.held(("i", ino))
            if raw is not None:
                out[ino] = decode_value(raw) if raw else None
            else:
                by_group.setdefault(self.ring.group_of_inode(ino), []).append(ino)
        if not by_group:
            return out

        async def ask(group: int, some: list[int]) -> None:
            try:
                reply = await self._leased_inodes(tuple(some), group)
            except p.RingChanged:
                for ino in some:
                    out[ino] = await self._inode(ino)
                return
            for ino, raw in zip(some, reply.inodes, strict=True):
                out[ino] = decode_value(raw) if raw else None

        if len(by_group) == 1:
            await ask(*next(iter(by_group.items())))
            return out
        async with trio.open_nursery() as nursery:  # the groups answer in parallel
            for group, some in sorted(by_group.items()):
                nursery.start_soon(ask, group, some)
        return out

    async def _get(self, fid: FileId) -> Inode:
        inode = await self._inode(fid.ino)
        if inode is None or inode.gen != fid.gen:
            raise Stale(f"no inode {fid.ino} generation {fid.gen}")
        return inode

    async def _lookup_at(
        self, dir_fid: FileId, name: bytes
    ) -> tuple[Inode, Dirent | None, Inode | None]:
        """The directory (Stale if gone), its entry `name` and the entry's inode; in a
        directory bound to the bucket, brought up to date with it first (gateway_bucket.py:
        a name only the bucket has yet exists for CREATE, REMOVE, RENAME... as for LOOKUP)."""
        d, ent, child = await self._lookup_state(dir_fid, name)
        if d.store and self._lookup_step(d, name, ent is not None, child) is not None:
            await self.bucket_lookup(d, name, ent, child)
            d, ent, child = await self._lookup_state(dir_fid, name)
        return d, ent, child

    async def _lookup_state(
        self, dir_fid: FileId, name: bytes
    ) -> tuple[Inode, Dirent | None, Inode | None]:
        """The directory (Stale if gone), its entry `name` and the entry's inode, as the
        state has them."""
        reply = self.held(("l", dir_fid.ino, name)) or await self._leased_lookup(dir_fid.ino,
                                                                                 name)
        d = decode_value(reply.dir) if reply.dir else None
        if d is None or d.gen != dir_fid.gen:
            raise Stale(f"no directory {dir_fid.ino} generation {dir_fid.gen}")
        if not reply.dirent:
            return d, None, None
        ent: Dirent = decode_value(reply.dirent)
        child = decode_value(reply.child) if reply.child else await self._inode(ent.ino)
        return d, ent, child

    # -- changes ----------------------------------------------------------------------------

    async def _change(self, build: Callable[[], Awaitable[Plan | Done]]) -> Any:
        """Run a change: read and build, commit as one transaction, rebuild after an abort."""
        request = next(self._requests)
        moving_since = None
        attempt = 0
        for tries in itertools.count():  # each try has its own txn id
            if attempt >= self.max_attempts:
                break
            try:
                plan = await build()
                if isinstance(plan, Done):
                    return plan.value
                after = self._after(plan)
                reply = await self._run_txn(plan, request, tries)
            except p.RingChanged:
                self.stats["replans"] += 1
                attempt += 1
                continue
            except Reread:
                self.stats["rereads"] += 1
                attempt += 1
                await self._backoff(attempt)
                continue
            if reply.commit:
                if after is None:  # read what the plan touched (new inodes too)
                    after = dict(plan.before)
                    touched = {owner_of(r) for recs in plan.parts.values() for r in recs}
                    after.update(await self._inodes(sorted(touched | set(plan.before))))
                return plan.finish(after)
            self.stats["aborts"] += 1
            self.last_abort = reply.reason
            if reply.reason in (MOVING, MISPLACED):
                # A ring change holds this state, or the group has a newer ring than the plan
                # (ringstate.py): wait for the new placement without spending the conflict
                # budget, up to the request timeout.
                now = trio.current_time()
                moving_since = now if moving_since is None else moving_since
                if now - moving_since > self.router.request_timeout_s:
                    raise Jukebox("the state stayed frozen by a ring change")
                _RETRY_MOVING.inc()
                await trio.sleep(MOVING_WAIT_S)
                continue
            attempt += 1
            if plan.on_abort is not None:
                plan.on_abort(reply.reason)
            if reply.reason == ENOTEMPTY:
                raise NotEmpty("directory not empty")
            if attempt < self.max_attempts:
                _RETRY_ABORTED.inc()
            await self._backoff(attempt)
        raise Jukebox(f"gave up after {self.max_attempts} conflicting attempts")

    def _after(self, plan: Plan) -> dict[int, Inode | None] | None:
        """The inodes after the plan commits, from what it read (None: cannot tell)."""
        view = PlanView(plan)
        changes = Changes()
        try:
            for recs in plan.parts.values():
                fs_state.apply(Multi(tuple(recs)), view, changes, 0)
        except StateError:
            return None
        after: dict[int, Inode | None] = dict(plan.before)
        after.update(changes.inodes)
        return after

    async def _run_txn(self, plan: Plan, request: int, attempt: int) -> p.TxnReply:
        tid = txn_id(self._client_id, request, attempt)
        parts = tuple(sorted((g, encode_ops(recs)) for g, recs in plan.parts.items() if recs))
        self.stats["txns"] += 1
        retry = False
        silent = 0
        for resend in range(MAX_RESENDS):
            try:
                reply = await self.router.call(plan.coordinator, p.RunTxn(0, tid, parts, retry))
            except RemoteError as e:
                if e.code == p.NOSPC:  # the coordinator's cache is full for good
                    raise NoSpc(e.message) from e
                raise
            except p.Unavailable as e:
                # The router already waited its whole request timeout: a few more tries (a
                # lost reply), then the client hears JUKEBOX and retries the NFS call.
                silent += 1
                if silent > MAX_SILENT_RESENDS:
                    raise Jukebox(str(e)) from e
                reply = None
            if reply is not None and reply.decided:
                return reply
            retry = True  # same txn id: applied at most once
            self.stats["resends"] += 1
            _RETRY_RESENT.inc()
            await self._backoff(resend)
        raise Jukebox("transaction undecided")

    # -- attributes -------------------------------------------------------------------------

    async def export_root(self, path: str) -> FileId:
        """`/` is the root (inode 1); deeper paths are walked like LOOKUPs by root."""
        root = await self._inode(ROOT_INO)
        if root is None:
            raise Jukebox("the root directory is not made yet")
        fid = self._fid(root)
        for part in (x for x in path.split("/") if x):
            fid = (await self.lookup(Cred(0, 0), fid, part.encode())).fid
        require_dir(await self._get(fid))
        return fid

    # -- the fast path (nfs_gateway.backend.NowaitBackend): reads of this node's own group --

    def _answer_now(self, ino: int, request: p.GetInodes | p.Lookup) -> Any | None:
        """The reply of the group placing `ino`, if that is this node's one-voter group and it
        can answer without waiting, or if this node holds it under a lease
        (gateway_leases.py); else None (the caller falls back to the async method)."""
        local = getattr(self.router, "local", None)
        ring = self.router.ring
        if local is not None and local.group == ring.group_of_inode(ino):
            reply = local.answer_now(dataclasses.replace(request, ring_version=ring.version))
            if reply is not None:
                return reply  # else: a follower's gateway may hold the leader's reply
        if isinstance(request, p.Lookup):
            return self.held(("l", request.dir_ino, request.name))
        raw = self.held(("i", request.inos[0]))
        return None if raw is None else p.InodesReply((raw,))

    def _get_nowait(self, fid: FileId) -> Inode | None:
        reply = self._answer_now(fid.ino, p.GetInodes(0, (fid.ino,)))
        if reply is None or not reply.inodes[0]:
            return None
        inode: Inode = decode_value(reply.inodes[0])
        if inode.gen != fid.gen or (inode.store and self.attrs_due(inode)):
            return None  # the async path answers Stale, or asks the bucket first
        return inode

    async def getattr(self, fid: FileId) -> Attr:
        inode = await self._get(fid)
        if inode.store and self.attrs_due(inode):
            await self.revalidate_attrs(inode)
            inode = await self._get(fid)
        return self._attr(inode)

    def lookup_nowait(self, cred: Cred, dir_fid: FileId, name: bytes) -> LookupResult | None:
        if name in (DOT, DOTDOT):
            return None
        check_name(name, self.config.max_name_bytes)
        reply = self._answer_now(dir_fid.ino, p.Lookup(0, dir_fid.ino, name))
        if reply is None or not reply.dir:
            return None
        d: Inode = decode_value(reply.dir)
        if d.gen != dir_fid.gen:
            return None
        require_dir(d)
        perms.check(cred, d, perms.X)
        if d.store and not self.bucket_nowait(d, name, reply):  # gateway_bucket.py
            return None
        if not reply.dirent:
            raise NoEnt(f"{name!r}", wcc=wcc(None, d, self.fsid))
        raw = reply.child
        if not raw:  # the child lives in another group: held under a lease, perhaps
            ino = decode_value(reply.dirent).ino
            held = self._answer_now(ino, p.GetInodes(0, (ino,)))
            if held is None or not held.inodes[0]:
                return None
            raw = held.inodes[0]
        child: Inode = decode_value(raw)
        return LookupResult(self._fid(child), self._attr(child), self._attr(d))

    async def lookup(self, cred: Cred, dir_fid: FileId, name: bytes) -> LookupResult:
        if name in (DOT, DOTDOT):
            d = await self._get(dir_fid)
            require_dir(d)
            perms.check(cred, d, perms.X)
            child = d if name == DOT else await self._parent(d)
            return LookupResult(self._fid(child), self._attr(child), self._attr(d))
        check_name(name, self.config.max_name_bytes)
        # In a directory bound to the bucket, loaded or revalidated first (gateway_bucket.py).
        d, _, child = await self._lookup_at(dir_fid, name)
        require_dir(d)
        perms.check(cred, d, perms.X)
        if child is None:
            raise NoEnt(f"{name!r}", wcc=wcc(None, d, self.fsid))
        return LookupResult(self._fid(child), self._attr(child), self._attr(d))

    async def _parent(self, d: Inode) -> Inode:
        parent = d if d.parent == d.ino else await self._inode(d.parent)
        if parent is None:
            raise ServerFault(f"directory {d.ino} has no parent {d.parent}")
        return parent

    async def fsstat(self, fid: FileId) -> tuple[FsStat, Attr]:
        inode = await self._get(fid)
        groups = getattr(self.ring, "groups", None) or (self.ring.group_of_inode(ROOT_INO),)
        total = free = avail = used = 0
        for g in groups:
            try:
                r = await self._call(g, p.FsStatRequest(0))
            except p.RingChanged:
                continue
            total, free = total + r.total_bytes, free + r.free_bytes
            avail, used = avail + r.avail_bytes, used + r.inodes
        free_files = max(self.config.max_files - used, 0)
        stat = FsStat(tbytes=total, fbytes=free, abytes=avail, tfiles=used + free_files,
                      ffiles=free_files, afiles=free_files, invarsec=0)
        return stat, self._attr(inode)

    # -- directories ------------------------------------------------------------------------

    async def readdir(
        self, cred: Cred, dir_fid: FileId, cookie: int, cookieverf: bytes, max_entries: int,
        plus: bool, *, ahead: bool = True,
    ) -> ReadDirResult:
        """A page in cookie order (cookies are the directory's, stable for its life; the
        verifier is its generation: server/fs/readdir.py), child attributes for READDIRPLUS
        with one GetInodes per group."""
        max_entries = max(1, min(max_entries, self.config.max_readdir_entries))
        dots = (cookie < DOT_COOKIE) + (cookie < DOTDOT_COOKIE)
        want = max(1, max_entries - dots)
        reply = await self._at_inode(dir_fid.ino, p.ReadDir(0, dir_fid.ino, cookie, want))
        d = decode_value(reply.dir) if reply.dir else None
        if d is None or d.gen != dir_fid.gen:
            raise Stale(f"no directory {dir_fid.ino} generation {dir_fid.gen}")
        if d.ftype != FileType.DIR:
            raise NotDir(f"inode {d.ino} is not a directory")
        perms.check(cred, d, perms.R)
        if d.store and self.needs_listing(d):  # gateway_bucket_load.py
            d, reply = await self.reload_dir(d, cookie, want)
        check_cookie(d, cookie, cookieverf)
        rows = list(reply.entries)
        want_inos = [ino for _, _, ino, _ in rows] if plus else []
        if plus and cookie < DOTDOT_COOKIE:
            want_inos.append(d.parent)
        found = await self._inodes(want_inos) if want_inos else {}
        entries: list[DirEntry] = []
        if cookie < DOT_COOKIE:
            entries.append(self._dir_entry(DOT, DOT_COOKIE, d, plus))
        if cookie < DOTDOT_COOKIE:
            parent = found.get(d.parent) if plus else None
            if parent is None:
                entries.append(DirEntry(d.parent, DOTDOT, DOTDOT_COOKIE))
            else:
                entries.append(self._dir_entry(DOTDOT, DOTDOT_COOKIE, parent, plus))
        if plus and d.store:
            listed = [(name, found.get(ino)) for _, name, ino, _ in rows]
            self.vouch_listed(d, listed)
            if ahead:  # a client's READDIRPLUS: it is likely to read and descend next
                children = [child for _, child in listed]
                self.prefetch_listed(children)
                self.list_ahead(children)
        for c, name, ino, _ftype in rows:
            child = found.get(ino)
            if plus and child is not None:
                entries.append(DirEntry(ino, name, c, self._fid(child), self._attr(child)))
            else:
                entries.append(DirEntry(ino, name, c))
        eof = reply.eof
        if len(entries) > max_entries:  # a page of one: `.` alone, then `..`, then entries
            entries, eof = entries[:max_entries], False
        return ReadDirResult(self._attr(d), dir_cookieverf(d), tuple(entries), eof)

    async def children(self, fid: FileId, plus: bool = False) -> AsyncIterator[DirEntry]:
        """Every entry of a directory but `.` and `..`, READDIR page after page, as root
        (admin jobs and write-back walk trees with it). Nothing is fetched or listed ahead:
        an `admin evict` walk must not fetch what it is about to drop."""
        cookie, verf = 0, b"\0" * 8
        while True:
            page = await self.readdir(Cred(0, 0), fid, cookie, verf, CHILDREN_PAGE, plus,
                                      ahead=False)
            for e in page.entries:
                if e.name not in (DOT, DOTDOT):
                    yield e
                cookie = e.cookie
            verf = page.cookieverf
            if page.eof or not page.entries:
                return

    def _dir_entry(self, name: bytes, cookie: int, inode: Inode, plus: bool) -> DirEntry:
        if not plus:
            return DirEntry(inode.ino, name, cookie)
        return DirEntry(inode.ino, name, cookie, self._fid(inode), self._attr(inode))
