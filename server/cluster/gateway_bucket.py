"""LOOKUP in directories bound to the bucket, and the checks of their files against it: the
gateway's side of the namespace loaded lazily from ListObjectsV2 and HEAD, by transactions
(server/cluster/bucket.py). Loading whole directories (READDIR, and what this gateway
remembers of the bucket) is gateway_bucket_load.py.

Rules:
- LOOKUP does not list a big directory for one name. Fresh: the state answers. Listed but
  stale and small (at most SMALL_DIR names ever linked): relisted. Otherwise a missing name
  is probed (HEAD key; else a one-key listing of key + "/": a directory), and an existing
  entry from the bucket is revalidated with HEAD (changed: SetOrigin and chunk trims; gone:
  removed) unless this gateway checked it within ttl (`_checked_recently`).
- A fresh listing vouches for its files (`vouch_listed`): LOOKUP and READDIRPLUS in a fresh
  directory count each file from the bucket as checked when the listing was loaded, so the
  GETATTR that follows (attrs_due) sends no HEAD on any gateway until ttl after the listing.
- lookup_nowait declines (None) whenever LOOKUP would go to the bucket (`bucket_nowait`).
- GETATTR of a clean file from the bucket not checked within ttl HEADs its object first
  (`attrs_due`, `revalidate_attrs`); a READ that found the object changed revalidates the
  file (`revalidate_file`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from nfs_gateway.backend import (
    FileId,
    FileType,
    Stale,
)
from server.cluster import protocol as p
from server.cluster.bucket import ROOT_MARK, child_key, name_ok
from server.cluster.bucket_listing import (
    Action,
    Listed,
    from_bucket,
)
from server.cluster.gateway_bucket_load import BucketLoads, store_errors
from server.cluster.gateway_plan import Done, Plan
from server.fs.changes import FIRST_COOKIE
from server.fs.common import require_dir
from server.fs.record_codec import decode_value
from server.fs.records import Dirent, ExpectInode, Inode, SetListed, SetOrigin

SMALL_DIR = 1000  # LOOKUP relists a stale directory that ever linked at most this many names

# What a LOOKUP must do first (_lookup_step).
WAIT, LIST, PROBE, HEAD = "wait", "list", "probe", "head"


class BucketOps(BucketLoads):
    # -- hooks of gateway.py ----------------------------------------------------------------

    async def reload_dir(self, d: Inode, cookie: int, want: int) -> tuple[Inode, Any]:
        """READDIR: load `d`, then read the page again."""
        await self.load_dir(d)
        reply = await self._at_inode(d.ino, p.ReadDir(0, d.ino, cookie, want))
        now = decode_value(reply.dir) if reply.dir else None
        if now is None or now.gen != d.gen:
            raise Stale(f"no directory {d.ino} generation {d.gen}")
        return now, reply

    def bucket_nowait(self, d: Inode, name: bytes, reply: Any) -> bool:
        """lookup_nowait: whether the state alone answers LOOKUP of `name` in `d`."""
        child = decode_value(reply.child) if reply.child else None
        return self._lookup_step(d, name, bool(reply.dirent), child) is None

    async def bucket_lookup(self, d: Inode, name: bytes, ent: Dirent | None,
                            child: Inode | None) -> tuple[Inode, Inode | None]:
        """LOOKUP: bring `name` in `d` up to date with the bucket (module rules); the
        directory and the entry's inode as they are afterwards."""
        step = self._lookup_step(d, name, ent is not None, child)
        if step is None:
            return d, child
        if step == WAIT:
            flight = self._bmem.flights.get(d.ino)
            if flight is not None:
                await self._wait(flight)
        elif step == LIST:
            await self.load_dir(d)
        elif step == PROBE:
            await self._probe(d, name)
        else:
            assert ent is not None and child is not None
            await self._revalidate(d, name, ent, child)
        d, _, child = await self._lookup_state(self._fid(d), name)
        if child is not None and step in (PROBE, HEAD):
            self._remember(child.ino)  # just read from the bucket
        return d, child

    # -- what LOOKUP needs ------------------------------------------------------------------

    def vouch_listed(self, d: Inode, children: Iterable[tuple[bytes, Inode | None]]) -> None:
        """Each file in `children` ((name, inode) in `d`) counts as checked when `d`'s listing
        was loaded, if that listing is fresh: it saw the object's etag then (a different one
        would have changed the inode). So a GETATTR after a LOOKUP or READDIRPLUS in a fresh
        directory sends no HEAD, and ttl counts from the listing (attrs_due)."""
        if not self._fresh(d) or self._store_of(d) is None:
            return
        for name, child in children:
            if child is not None and child.ftype == FileType.REG and from_bucket(d, name, child):
                self._remember(child.ino, d.listed_ns)

    def _lookup_step(self, d: Inode, name: bytes, has_entry: bool,
                     child: Inode | None) -> str | None:
        if self._store_of(d) is None or not name_ok(name):
            return None
        if d.ino in self._bmem.flights:
            return WAIT
        if self._fresh(d):
            self.vouch_listed(d, ((name, child),))
            return None
        if d.listed_ns and d.next_cookie - FIRST_COOKIE <= SMALL_DIR:
            return LIST
        if not has_entry:
            return None if self._checked_recently((d.ino, name)) else PROBE
        if child is None or child.ftype == FileType.DIR or not from_bucket(d, name, child):
            return None  # directories go only with a listing; local entries stay
        return None if self._checked_recently(child.ino) else HEAD

    async def _probe(self, d: Inode, name: bytes) -> None:
        """A name missing in `d`: the object, else a directory of that name, else nothing."""
        store = self._store_of(d)
        assert store is not None
        key = child_key(d.okey, name, False).decode()
        taken = await self._keys_in_flight(d)
        if key.encode() in taken or key.encode() + b"/" in taken:
            self._remember((d.ino, name))
            return
        info = await self._head(store, key)
        if info is not None:
            lst = Listed(name, key.encode(), False, info.size, info.etag.encode(), info.mtime_ns)
        else:
            with store_errors(store, f"list {key}/"):
                page = await store.list_page(key + "/", max_keys=1)
            self._bmem.stats["lists"] += 1
            if not (page.objects or page.prefixes):
                self._remember((d.ino, name))
                return
            lst = Listed(name, key.encode() + b"/", True)
            info = await self._head(store, key + "/") if self.bucket.head_objects else None
        meta = {name: info.metadata} if info is not None else {}
        await self._run_batch(d, [Action(name, create=lst)], meta, None)
        self._remember((d.ino, name))

    async def _revalidate(self, d: Inode, name: bytes, ent: Dirent, child: Inode) -> None:
        """An entry from the bucket not checked within ttl: HEAD its object."""
        store = self._store_of(d)
        assert store is not None
        info = await self._head(store, child.okey.decode())
        self._remember(child.ino)
        if info is not None and info.etag.encode() == child.etag:
            return
        if info is None:
            action = Action(name, old=child, old_dirent=ent)
        else:
            lst = Listed(name, child.okey, False, info.size, info.etag.encode(), info.mtime_ns)
            kind = "change" if child.ftype == FileType.REG else "create"
            action = Action(name, old=child, old_dirent=ent, **{kind: lst})
        meta = {name: info.metadata} if info is not None else {}
        await self._run_batch(d, [action], meta, None)

    # -- the data path and the node ---------------------------------------------------------

    def attrs_due(self, inode: Inode) -> bool:
        """GETATTR of a clean file from the bucket that this gateway has not checked within
        ttl: its object is HEADed first (`revalidate_attrs`), so a change others made in the
        bucket shows without a LOOKUP (clients revalidate cached files with GETATTR)."""
        return (inode.ftype == FileType.REG and bool(inode.store) and bool(inode.etag)
                and not inode.inline and inode.dver == inode.cver
                and inode.store in self.stores and not self._checked_recently(inode.ino))

    async def revalidate_attrs(self, inode: Inode) -> None:
        """HEAD the file's object: a new version is loaded; a vanished object makes its
        directory list again, which removes the entry (its handle then answers STALE)."""
        if await self.revalidate_file(inode.ino) is not False:
            return
        d = await self._inode(inode.parent) if inode.parent else None
        if d is not None and d.ftype == FileType.DIR and self._store_of(d) is not None:
            await self.load_dir(d)

    async def revalidate_file(self, ino: int) -> bool | None:
        """gateway_data.py: the object of file `ino` changed under a read. Its new version is
        loaded; an object that is gone leaves the file empty until its directory's next
        listing removes it. A file changed here and not written back is left to write-back
        (its bytes are not the bucket's to replace). Whether the object exists; None: not
        asked (not the bucket's file, or its store is not on this node)."""
        inode = await self._inode(ino)
        if (inode is None or inode.ftype != FileType.REG or not inode.etag or inode.inline
                or inode.dver != inode.cver):
            return None
        store = self.stores.get(inode.store)
        if store is None:
            return None
        info = await self._head(store, inode.okey.decode())
        self._remember(ino)
        if info is not None and info.etag.encode() == inode.etag:
            return True
        if info is None:
            lst = Listed(b"", inode.okey, False, 0, inode.etag, 0)
        else:
            lst = Listed(b"", inode.okey, False, info.size, info.etag.encode(), info.mtime_ns)

        async def build() -> Plan | Done:
            now = await self._inode(ino)
            if now is None or (now.etag, now.okey, now.dver) != (inode.etag, inode.okey,
                                                                 inode.cver):
                return Done(None)  # revalidated meanwhile, or no longer the bucket's
            plan = Plan(self.ring.group_of_inode(ino), {ino: now})
            self._plan_change(plan, now.store, now, lst)
            return plan

        await self._change(build)
        return info is not None

    async def bind_store(self, export: str | FileId | int, store_id: int) -> None:
        """Bind an export's directory to object store `store_id` (key prefix ""), unless it
        is bound to it already; its first READDIR or LOOKUP loads it."""
        if isinstance(export, str):
            fid = await self.export_root(export)
        elif isinstance(export, FileId):
            fid = export
        else:
            inode = await self._inode(export)
            if inode is None:
                raise Stale(f"no inode {export}")
            fid = self._fid(inode)

        async def build() -> Plan | Done:
            d = await self._get(fid)
            require_dir(d)
            self.store_roots[store_id] = d.ino
            if d.store == store_id and d.okey == b"" and d.etag == ROOT_MARK:
                return Done(None)
            plan = Plan(self.ring.group_of_inode(d.ino), {d.ino: d})
            plan.add(plan.coordinator, ExpectInode(d.ino, d.gen),
                     SetOrigin(d.ino, store_id, b"", ROOT_MARK), SetListed(d.ino, 0))
            return plan

        await self._change(build)

    def bucket_stats(self) -> dict[str, int]:
        """Loads, listings, HEADs and entries created, changed and removed by this gateway."""
        return dict(self._bmem.stats)
