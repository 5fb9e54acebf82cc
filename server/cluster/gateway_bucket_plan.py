"""The transactions of gateway_bucket.py: a batch of a directory's changes from the bucket
(bucket_listing.Action) as one Plan, committed through ClusterBackend._change.

Rules:
- A batch carries ExpectInode(directory, gen) and, last of a load, SetListed. New files take
  the directory's group, new directories wherever their id lands (as CREATE and MKDIR place
  them); both are bound by SetOrigin in the same transaction (clean: the bucket holds them).
- A vanished entry goes as REMOVE and RMDIR make it go (UnlinkDirent with expect_ino,
  ExpectInode, AdjustLinks, ChunkDelete in the other groups holding its chunks), unbound
  first: its object is gone, and one made again at that key meanwhile is not ours to delete.
- A changed object: SetOrigin with the new version (its group drops the chunks it holds) and
  ChunkTrim(keep=0) in every other group that may hold chunks of the old size, with
  ExpectInode(size), so no byte of the old version is ever read.
- An abort is not retried here: the loader reads again and diffs again (None).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from nfs_gateway.backend import FileType, NotEmpty
from server.cluster.bucket_listing import Action, Listed, new_attrs
from server.cluster.gateway_plan import Done, Plan
from server.fs.records import (
    AdjustLinks,
    ChunkDelete,
    ChunkTrim,
    CreateInode,
    Dirent,
    ExpectInode,
    Inode,
    KeyRelease,
    LinkDirent,
    SetListed,
    SetOrigin,
    UnlinkDirent,
)

if TYPE_CHECKING:
    from server.cluster.gateway import ClusterBackend

    _Base = ClusterBackend
else:
    _Base = object


BATCH = 256  # names per transaction of a load


class _Rediff(Exception):
    """A batch aborted: read the directory again and diff again."""


class BucketPlans(_Base):
    async def _commit(self, d: Inode, actions: list[Action],
                      meta: Mapping[bytes, Mapping[str, str]], started: int) -> bool:
        """The actions in batches, the last one marking the listing loaded; False after an
        abort (the caller diffs again)."""
        for i in range(0, max(len(actions), 1), BATCH):
            last = i + BATCH >= len(actions)
            after = await self._run_batch(d, actions[i:i + BATCH], meta,
                                          started if last else None)
            if after is None:
                return False
            d = after
        return True

    async def _run_batch(self, d: Inode, actions: list[Action],
                         meta: Mapping[bytes, Mapping[str, str]],
                         listed_ns: int | None) -> Inode | None:
        """One transaction; the directory afterwards, or None if it aborted."""
        built: list[Plan] = []

        async def build() -> Plan | Done:
            if built:
                raise _Rediff()  # aborted: what was read is out of date
            plan = await self._batch_plan(d, actions, meta, listed_ns)
            built.append(plan)
            return plan

        try:
            after = await self._change(build)
        except (_Rediff, NotEmpty):
            return None
        stats = self._bmem.stats
        stats["created"] += sum(a.create is not None for a in actions)
        stats["changed"] += sum(a.change is not None for a in actions)
        stats["removed"] += sum(a.old is not None and a.change is None for a in actions)
        return after if isinstance(after, Inode) else d

    # -- the records ------------------------------------------------------------------------

    async def _batch_plan(self, d: Inode, actions: list[Action],
                          meta: Mapping[bytes, Mapping[str, str]],
                          listed_ns: int | None) -> Plan:
        dg = self.ring.group_of_inode(d.ino)
        now = self._now()
        plan = Plan(dg, {d.ino: d})
        plan.add(dg, ExpectInode(d.ino, d.gen))
        for a in actions:
            if a.change is not None:
                assert a.old is not None
                self._plan_change(plan, d.store, a.old, a.change)
                continue
            if a.old is not None:
                assert a.old_dirent is not None
                self._plan_remove(plan, d, a.name, a.old, a.old_dirent, now)
            if a.create is not None:
                await self._plan_create(plan, d, a.create, meta.get(a.name, {}), now)
        if listed_ns is not None:
            plan.add(dg, SetListed(d.ino, listed_ns))
        plan.finish = lambda after: after.get(d.ino)
        return plan

    async def _plan_create(self, plan: Plan, d: Inode, lst: Listed,
                           meta: Mapping[str, str], now: int) -> None:
        attrs = new_attrs(lst, meta, self.bucket, now, self.config.max_symlink_bytes)
        dg = plan.coordinator
        is_dir = attrs.ftype == FileType.DIR
        ino = await self.alloc.alloc(None if is_dir else dg, self.ring)
        ig = self.ring.group_of_inode(ino)
        is_reg = attrs.ftype == FileType.REG
        plan.add(ig, CreateInode(
            ino=ino, gen=self._new_gen(), ftype=attrs.ftype, mode=attrs.mode, uid=attrs.uid,
            gid=attrs.gid, nlink=2 if is_dir else 1, time_ns=attrs.mtime_ns,
            target=attrs.target, parent=d.ino, pname=lst.name,
            chunk_size=self.config.chunk_size if is_reg else 0))
        plan.add(ig, SetOrigin(ino, d.store, lst.key, b"" if is_dir else lst.etag,
                               lst.size if is_reg else -1, attrs.mtime_ns if is_reg else 0))
        plan.add(dg, LinkDirent(d.ino, lst.name, ino, attrs.ftype, now))

    def _plan_remove(self, plan: Plan, d: Inode, name: bytes, old: Inode, dirent: Dirent,
                     now: int) -> None:
        """`name` is gone from the bucket: the entry goes (as REMOVE and RMDIR do it, with
        their apply-time checks). The inode is unbound from the bucket first: its object is
        gone already, and one made again at that key meanwhile is not ours to delete."""
        group = self.ring.group_of_inode(old.ino)
        plan.before[old.ino] = old
        plan.dirents[(d.ino, name)] = dirent
        plan.add(plan.coordinator, UnlinkDirent(d.ino, name, now, expect_ino=old.ino))
        root = self.store_roots.get(old.store)
        if root is not None and old.okey:  # write-back's entry of that key, if any, goes
            plan.add(self.ring.group_of_inode(root),
                     KeyRelease(old.store, old.okey, old.ino, delete=False))
        if old.ftype == FileType.DIR:
            plan.add(group, ExpectInode(old.ino, old.gen, empty=True), SetOrigin(old.ino, 0, b""),
                     AdjustLinks(old.ino, -2, now))
            return
        plan.add(group, ExpectInode(old.ino, old.gen, nlink=old.nlink, size=old.size),
                 SetOrigin(old.ino, 0, b""), AdjustLinks(old.ino, -1, now))
        if old.nlink == 1:  # the last link: no chunk may outlive the inode (gateway_ns.py)
            for g in sorted(self._chunk_groups(old, 0)):
                plan.add(g, ChunkDelete(old.ino))

    def _plan_change(self, plan: Plan, store: int, old: Inode, lst: Listed) -> None:
        """The object of clean file `old` changed: its new version, and no byte of the old
        one left in any group (module rules)."""
        group = self.ring.group_of_inode(old.ino)
        plan.before[old.ino] = old
        plan.add(group, ExpectInode(old.ino, old.gen, size=old.size),
                 SetOrigin(old.ino, store, lst.key, lst.etag, lst.size, lst.mtime_ns))
        for g in sorted(self._chunk_groups(old, 0)):
            plan.add(g, ChunkTrim(old.ino, old.chunk_size, 0))
