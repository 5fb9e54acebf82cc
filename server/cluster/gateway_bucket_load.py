"""READDIR in directories bound to the bucket: loading a directory's listing from
ListObjectsV2 and HEAD by transactions (server/cluster/bucket.py; what a listing means:
bucket_listing.py, which also names the x-amz-meta-* attributes read), and what a gateway
remembers of the bucket. LOOKUP's side is gateway_bucket.py.

Rules:
- A directory whose inode has `store` != 0 is *bound*; `okey` is its key prefix ("" at an
  export's root, bound by `bind_store`), `listed_ns` when its listing was last loaded (0:
  never), by the loading gateway's clock. A directory is *fresh* within bucket.ttl_s of that.
  One made, renamed or changed here and not yet written back (dver != cver: its prefix is
  not the bucket's yet) is served as it is until it is.
- READDIR of a bound directory that is not fresh loads it first (`load_dir`): every page of
  the listing, the directory's entries and their inodes, bucket_listing.diff; then each
  action is checked against the bucket as it is now (`_confirm`: a HEAD of each new object,
  for its attributes with bucket.head_objects, and of each changed or vanished one, spread
  over the nodes when there are many: bucket_heads.py), so a listing older than a version
  written meanwhile (write-back, another loader) never undoes it; then the actions commit in
  batches (gateway_bucket_plan.py), the last with SetListed(the time the listing started).
- Any abort (a loader on another node linked a name first: EEXIST; an entry changed under
  us) makes the loader re-read the directory and diff again (at most MAX_REDIFFS times);
  every batch is right on its own, so nothing is half-applied and concurrent loaders end
  with each name once. One load per directory runs in a gateway; others wait for it.
- What this gateway checked against the bucket and when (`_remember`): an LRU of
  CHECKED_MEMORY entries, inodes and names found missing.
- READDIRPLUS of a bound directory loads its subdirectories that need it ahead, in the
  background (`list_ahead`): a walker (`find`, a model loader) descends next, and their loads
  then run at once instead of one after another as it gets to each. At most
  bucket.list_ahead_dirs per page, LIST_AHEAD_PARALLEL at a time, none added while
  LIST_AHEAD_QUEUE wait, and only a directory one LIST_AHEAD_KEYS listing holds (a first
  look says; the HEADs of a big one are left until someone reads it): what a bare `ls -l`
  costs stays bounded.
- Store errors (`store_errors`, the one place): StoreUnavailable -> JUKEBOX, AccessDenied
  -> ACCES, any other -> SERVERFAULT. A directory whose store is not configured on this node
  is served as it is.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import trio

from nfs_gateway.backend import (
    Access,
    FileType,
    FsError,
    Jukebox,
    ServerFault,
    Stale,
)
from server.cluster import protocol as p
from server.cluster.bucket import ROOT_MARK, first_leaf
from server.cluster.bucket_heads import HEAD_PARALLEL, head_all
from server.cluster.bucket_listing import (
    Action,
    Listed,
    add_page,
    confirm,
    diff,
)
from server.cluster.gateway_bucket_plan import BucketPlans
from server.fs.record_codec import decode_value
from server.fs.records import Dirent, Inode
from storage.objstore.base import (
    AccessDenied,
    ObjectInfo,
    ObjectStore,
    StoreError,
    StoreUnavailable,
)

log = logging.getLogger("objcache.bucket")


MAX_REDIFFS = 8  # re-reads of a directory after aborts during one load, then JUKEBOX
CHECKED_MEMORY = 65536  # entries and missing names whose last HEAD this gateway remembers
LIST_PAGE_KEYS = 1000
MAX_LIST_PAGES = 1000  # a directory of more than a million names is refused (SERVERFAULT)
DIR_PAGE = 10_000  # entries per ReadDir while diffing
INODE_BATCH = 4096  # inodes per GetInodes round while diffing
LIST_AHEAD_PARALLEL = 2  # subdirectories loaded ahead at once, per gateway
LIST_AHEAD_QUEUE = 64  # loads ahead waiting past this: a page adds no more
LIST_AHEAD_KEYS = 256  # a directory is loaded ahead only if this many names hold it all


class Flight:
    """One load of a directory that other LOOKUPs and READDIRs of it wait for."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: BaseException | None = None


class BucketMemory:
    """What one gateway remembers of the bucket (module rules); one per gateway."""

    def __init__(self) -> None:
        self.flights: dict[int, Flight] = {}
        # ino -> when this gateway last checked it; (dir ino, name) -> when found missing
        self.checked: OrderedDict[object, int] = OrderedDict()
        self.stats: Counter[str] = Counter()
        self.missing_stores: set[int] = set()
        self.ahead: set[int] = set()  # directories waiting for or in a load ahead
        self.ahead_slots = trio.CapacityLimiter(LIST_AHEAD_PARALLEL)


def _action_key(a: Action) -> str:
    """The object an action is about: the new one, else the one that was there."""
    key = a.create.key if a.create is not None else a.old.okey  # type: ignore[union-attr]
    return key.decode()


@contextmanager
def store_errors(store: ObjectStore, what: str) -> Iterator[None]:
    """The one mapping of object-store errors to NFS errors (module rules)."""
    try:
        yield
    except StoreUnavailable as e:
        raise Jukebox(f"{store.url}: {what}: {e}") from e
    except AccessDenied as e:
        raise Access(f"{store.url}: {what}: {e}") from e
    except StoreError as e:
        raise ServerFault(f"{store.url}: {what}: {type(e).__name__}: {e}") from e


class BucketLoads(BucketPlans):
    # -- what the gateway remembers of the bucket -----------------------------------------

    def needs_listing(self, d: Inode) -> bool:
        """READDIR: `d` is bound to a store of this node and not fresh."""
        return self._store_of(d) is not None and not self._fresh(d)

    @property
    def _bmem(self) -> BucketMemory:
        mem = self.__dict__.get("_bucket_memory")
        if mem is None:
            mem = self.__dict__["_bucket_memory"] = BucketMemory()
        return mem

    def _store_of(self, d: Inode) -> ObjectStore | None:
        if not d.store or not (d.okey or d.etag == ROOT_MARK):
            return None  # not bound, or made here and not written back yet (no prefix)
        store = self.stores.get(d.store)
        if store is None and d.store not in self._bmem.missing_stores:
            self._bmem.missing_stores.add(d.store)
            log.warning("directory %d is bound to store %d, which this node does not have; "
                        "served as it is", d.ino, d.store)
        return store

    def _ttl_ns(self) -> int:
        return int(self.bucket.ttl_s * 1e9)

    def _fresh(self, d: Inode) -> bool:
        return d.listed_ns != 0 and abs(self._now() - d.listed_ns) < self._ttl_ns()

    def _checked_recently(self, key: object) -> bool:
        at = self._bmem.checked.get(key)
        return at is not None and abs(self._now() - at) < self._ttl_ns()

    def _remember(self, key: object, at: int | None = None) -> None:
        """`key` was checked against the bucket at `at` (default: now); a later check stays."""
        checked = self._bmem.checked
        at = self._now() if at is None else at
        checked[key] = max(at, checked.get(key, at))
        checked.move_to_end(key)
        while len(checked) > CHECKED_MEMORY:
            checked.popitem(last=False)

    async def _head(self, store: ObjectStore, key: str) -> ObjectInfo | None:
        self._bmem.stats["heads"] += 1
        with store_errors(store, f"head {key}"):
            return await store.head(key)

    # -- loading a whole directory ----------------------------------------------------------

    async def load_dir(self, d: Inode) -> None:
        """Load the listing of bound directory `d` (single flight in this gateway)."""
        flights = self._bmem.flights
        flight = flights.get(d.ino)
        if flight is not None:
            await self._wait(flight)
            return
        flight = flights[d.ino] = Flight()
        try:
            await self._load(d)
        except BaseException as e:
            flight.error = e
            raise
        finally:
            del flights[d.ino]
            flight.done.set()

    def list_ahead(self, children: Iterable[Inode | None]) -> None:
        """READDIRPLUS listed these: load the subdirectories that need it ahead (module
        rules); best effort, in the background."""
        nursery, mem = self._nursery, self._bmem
        room = min(self.bucket.list_ahead_dirs, LIST_AHEAD_QUEUE - len(mem.ahead))
        if nursery is None or room <= 0:
            return
        for child in children:
            if room <= 0:
                break
            if (child is None or child.ftype != FileType.DIR or child.ino in mem.ahead
                    or child.ino in mem.flights or not self.needs_listing(child)):
                continue
            mem.ahead.add(child.ino)
            room -= 1
            nursery.start_soon(self._load_ahead, child)

    async def _load_ahead(self, d: Inode) -> None:
        mem = self._bmem
        try:
            async with mem.ahead_slots:
                # As it is now: the walker may have loaded it while this waited for a slot.
                now = await self._inode(d.ino)
                if now is None or now.gen != d.gen or d.ino in mem.flights or (
                        not self.needs_listing(now)):
                    return
                d, store = now, self._store_of(now)
                assert store is not None  # needs_listing: bound to a store of this node
                with store_errors(store, f"list {d.okey!r}"):
                    page = await store.list_page(d.okey.decode(), delimiter="/",
                                                 max_keys=LIST_AHEAD_KEYS)
                if page.next_token is not None:
                    mem.stats["ahead_skipped"] += 1
                    return
                mem.stats["ahead"] += 1
                await self.load_dir(d)
        except Exception as e:  # the walker's own READDIR loads it (and reports the error)
            log.debug("bucket: listing %r ahead: %s", d.okey, e)
        finally:
            mem.ahead.discard(d.ino)

    async def _wait(self, flight: Flight) -> None:
        await flight.done.wait()
        e = flight.error
        if isinstance(e, FsError):
            raise type(e)(str(e))
        if e is not None:
            raise Jukebox(f"the directory's load failed: {type(e).__name__}")

    async def _load(self, d: Inode) -> None:
        store = self._store_of(d)
        assert store is not None
        started = self._now()
        listed = await self._list_all(store, d.okey.decode())
        taken = await self._keys_in_flight(d)
        listed = {name: lst for name, lst in listed.items() if lst.key not in taken}
        meta: dict[bytes, Mapping[str, str]] = {}
        self._bmem.stats["loads"] += 1
        for _ in range(MAX_REDIFFS):
            d, current = await self._entries(d)
            inodes = await self._entry_inodes(current)
            actions = await self._removable(diff(d, listed, current, inodes))
            actions = await self._confirm(d.store, store, actions, meta)
            if await self._commit(d, actions, meta, started):
                return
            self._bmem.stats["rediffs"] += 1
        raise Jukebox(f"directory {d.ino} kept changing while it was loaded")

    async def _keys_in_flight(self, d: Inode) -> frozenset[bytes]:
        """Keys under `d`'s prefix that write-back is moving, writing or deleting (its key
        table, flush.py): objects there are not new entries, whatever the listing says."""
        root = self.store_roots.get(d.store)
        if root is None:
            return frozenset()
        reply = await self._at_inode(root, p.KeysUnder(0, d.store, d.okey))
        return frozenset(reply.keys)

    async def _list_all(self, store: ObjectStore, prefix: str) -> dict[bytes, Listed]:
        listed: dict[bytes, Listed] = {}
        token = None
        for _ in range(MAX_LIST_PAGES):
            with store_errors(store, f"list {prefix}"):
                page = await store.list_page(prefix, delimiter="/", token=token,
                                             max_keys=LIST_PAGE_KEYS)
            self._bmem.stats["lists"] += 1
            add_page(listed, prefix, page, self.config.max_name_bytes)
            if page.next_token is None:
                return listed
            token = page.next_token
        raise ServerFault(f"{store.url}: {prefix!r} has more than "
                          f"{MAX_LIST_PAGES * LIST_PAGE_KEYS} names")

    async def _entries(self, d: Inode) -> tuple[Inode, dict[bytes, Dirent]]:
        """The directory (Stale if gone) and all of its entries."""
        out: dict[bytes, Dirent] = {}
        cookie = 0
        for _ in range(MAX_LIST_PAGES):
            reply = await self._at_inode(d.ino, p.ReadDir(0, d.ino, cookie, DIR_PAGE))
            now = decode_value(reply.dir) if reply.dir else None
            if now is None or now.gen != d.gen:
                raise Stale(f"no directory {d.ino} generation {d.gen}")
            for c, name, ino, ftype in reply.entries:
                out[name] = Dirent(ino, c, FileType(ftype))
            if reply.eof or not reply.entries:
                return now, out
            cookie = reply.entries[-1][0]
        raise ServerFault(f"directory {d.ino} has too many entries to load")

    async def _entry_inodes(self, current: Mapping[bytes, Dirent]) -> dict[int, Inode | None]:
        inos = sorted({ent.ino for ent in current.values()})
        out: dict[int, Inode | None] = {}
        for i in range(0, len(inos), INODE_BATCH):
            out.update(await self._inodes(inos[i:i + INODE_BATCH]))
        return out

    async def _removable(self, actions: list[Action]) -> list[Action]:
        """Drop the removals of loaded directories that still have entries (left alone)."""
        out = []
        for a in actions:
            old = a.old
            if old is not None and old.ftype == FileType.DIR and not await self._is_empty(old.ino):
                log.info("bucket: directory %r is gone from the bucket but not empty; kept",
                         old.okey)
                continue
            out.append(a)
        return out

    async def _confirm(self, store_id: int, store: ObjectStore, actions: list[Action],
                       meta: dict[bytes, Mapping[str, str]]) -> list[Action]:
        """Each action checked against the bucket as it is now (bucket_listing.confirm): a
        HEAD of a new object (with bucket.head_objects: for its attributes) or of a changed
        or vanished one, spread over the cluster's nodes when there are many (bucket_heads.py),
        and a one-key listing of a vanished directory. The listing may be older than a version
        written meanwhile (write-back, another loader): it never undoes one."""
        out: list[Action | None] = list(actions)
        gone_dirs = [i for i, a in enumerate(actions) if a.old is not None
                     and a.old.ftype == FileType.DIR and a.create is None]
        skip = set(gone_dirs)
        headed = [i for i, a in enumerate(actions) if i not in skip
                  and (a.create is None or self.bucket.head_objects or a.old is not None)]

        async def head(key: str) -> ObjectInfo | None:
            return await self._head(store, key)

        async def relisted(i: int, limiter: trio.CapacityLimiter) -> None:
            okey = actions[i].old.okey  # type: ignore[union-attr]
            async with limiter:
                with store_errors(store, f"list {okey!r}"):
                    page = await store.list_page(okey.decode(), max_keys=1)
            if page.objects or page.prefixes:
                out[i] = None  # there again

        keys = [_action_key(actions[i]) for i in headed]
        infos: list[ObjectInfo | None] = []

        async def head_keys() -> None:
            if self.heads is not None:
                infos.extend(await self.heads.head_many(store_id, head, keys))
            else:
                infos.extend(await head_all(head, keys))

        try:
            async with trio.open_nursery() as nursery:  # the HEADs and the relistings at once
                nursery.start_soon(head_keys)
                limiter = trio.CapacityLimiter(HEAD_PARALLEL)
                for i in gone_dirs:
                    nursery.start_soon(relisted, i, limiter)
        except BaseExceptionGroup as eg:
            first = first_leaf(eg)
            if isinstance(first, FsError):
                raise first from eg
            raise
        for i, info in zip(headed, infos, strict=True):
            meta[actions[i].name] = info.metadata if info is not None else {}
            out[i] = confirm(actions[i], info)
        return [a for a in out if a is not None]
