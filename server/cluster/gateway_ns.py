"""Namespace and attribute changes of ClusterBackend (RFC 1813 §3.3.2, §3.3.8 to §3.3.15).

Each operation reads, checks exactly as the single-node backend does (server/fs/namespace.py,
perms.py, common.py: same errors, same knfsd choices), and builds a Plan: records per group
with apply-time checks, so the groups refuse the plan if what was read changed meanwhile.

Placement of the records (coordinator first):
- CREATE/SYMLINK/MKNOD: the new inode takes its directory's group (inoalloc): one TxnLocal.
- MKDIR: the new directory's id lands in this node's group (cluster.dir_placement "local":
  its client's later creates, lookups and removes in it are local to the node it talks to,
  and clients spread over the nodes spread the load over the groups), or anywhere
  ("spread": one client's tree spreads over the groups): LinkDirent in the parent's group
  (coordinator), CreateInode in the new one's.
- REMOVE/RMDIR: UnlinkDirent(expect_ino) in the directory's group (coordinator); in the
  victim's group ExpectInode (empty directory; for a chunked file its nlink and size, which
  decide which chunk groups hold data) and AdjustLinks; when the last link of a chunked file
  goes, ChunkDelete in every other group holding its chunks, in the same transaction (so no
  chunk outlives its inode, and nothing is left for a collector to find).
- RENAME: the source directory's group coordinates; a directory moving to another parent gets
  an ExpectInode(parent) for the target directory and each of its ancestors (below the root)
  in their groups: a racing rename that moves one of them aborts this one, so a directory can
  never end up under itself. A replaced target is unlinked in the same transaction.
- SETATTR/truncate: the file's group coordinates. A shrink of a chunked file also trims the
  chunks in the other groups that hold bytes past the new size, in the same transaction, and
  every size change carries ExpectInode(size) for the size it was computed from (a racing
  WRITE may have moved the file into chunks of other groups): no byte past EOF ever survives
  to reappear in a later hole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nfs_gateway.backend import (
    BadType,
    Created,
    CreateMode,
    Cred,
    Exists,
    FileId,
    FileType,
    FsError,
    Inval,
    IsDir,
    LinkResult,
    MLink,
    NameTooLong,
    NoEnt,
    NotDir,
    NotEmpty,
    NotSync,
    Perm,
    RenameResult,
    SetAttrs,
    Wcc,
    XDev,
)
from server.cluster import protocol as p
from server.cluster.fence import fenced
from server.cluster.gateway_plan import Done, Plan, Reread
from server.fs import perms
from server.fs.common import DOT, DOTDOT, check_name, check_new_name, require_dir
from server.fs.namespace import new_owner, set_time, setattr_record
from server.fs.records import (
    AdjustLinks,
    ChunkDelete,
    ChunkTrim,
    CreateInode,
    ExpectInode,
    Inode,
    KeyHold,
    KeyRelease,
    LinkDirent,
    SetAttr,
    SetName,
    UnlinkDirent,
)

if TYPE_CHECKING:
    from server.cluster.gateway import ClusterBackend

    _Base = ClusterBackend
else:
    _Base = object

MAX_CHUNK_SCAN = 4096  # past this many chunks, every group is assumed to hold some
MAX_DEPTH = 1 << 16


class NamespaceOps(_Base):
    # -- SETATTR ----------------------------------------------------------------------------

    @fenced
    async def setattr(
        self, cred: Cred, fid: FileId, sattr: SetAttrs, guard_ctime_ns: int | None
    ) -> Wcc:
        async def build() -> Plan | Done:
            before = await self._get(fid)
            if guard_ctime_ns is not None and guard_ctime_ns != before.ctime_ns:
                raise NotSync("ctime guard", wcc=self._wcc(before, before))
            rec = setattr_record(cred, before, sattr, self._now(), self.config, self.fsid)
            if rec is None:
                return Done(self._wcc(before, before))
            plan = self._attr_plan(before, rec)
            plan.finish = lambda after: self._wcc(before, after[before.ino])
            return plan

        return await self._change(build)

    def _attr_plan(self, inode: Inode, rec: SetAttr) -> Plan:
        """A SetAttr in the inode's group; a shrink also trims the chunks held elsewhere."""
        group = self.ring.group_of_inode(inode.ino)
        plan = Plan(group, {inode.ino: inode})
        if rec.size is not None:
            # The groups to trim follow from the size read: a size change meanwhile (a WRITE
            # into new chunks, an inline file moved to chunks) must abort this one.
            plan.add(group, ExpectInode(inode.ino, size=inode.size))
            for g in sorted(self._chunk_groups(inode, rec.size)):
                plan.add(g, ChunkTrim(inode.ino, inode.chunk_size, rec.size))
        plan.add(group, rec)
        return plan

    def _chunk_groups(self, inode: Inode, keep: int) -> set[int]:
        """Groups other than the inode's that may hold bytes of it at or past `keep`."""
        cs = inode.chunk_size
        if inode.ftype != FileType.REG or inode.inline or cs <= 0 or inode.size <= keep:
            return set()
        first, last = keep // cs, (inode.size - 1) // cs
        own = self.ring.group_of_inode(inode.ino)
        if last - first > MAX_CHUNK_SCAN:
            groups = set(getattr(self.ring, "groups", ()))
            if groups:
                return groups - {own}
        return {self.ring.group_of_chunk(inode.ino, i) for i in range(first, last + 1)} - {own}

    # -- CREATE, MKDIR, SYMLINK, MKNOD ------------------------------------------------------

    @fenced
    async def create(
        self, cred: Cred, dir_fid: FileId, name: bytes, how: CreateMode, sattr: SetAttrs,
        verf: bytes | None,
    ) -> Created:
        check_new_name(name, self.config.max_name_bytes)

        async def build() -> Plan | Done:
            d, ent, child = await self._lookup_at(dir_fid, name)
            self._dir_for_change(cred, d)
            if ent is None:
                return await self._plan_new(cred, d, name, FileType.REG, sattr, verf=verf or b"",
                                            size=sattr.size or 0)
            if child is None:
                raise Reread(f"{name!r} points at a removed inode")
            return self._create_existing(cred, d, child, name, how, sattr, verf)

        return await self._change(build)

    def _create_existing(
        self, cred: Cred, d: Inode, child: Inode, name: bytes, how: CreateMode,
        sattr: SetAttrs, verf: bytes | None,
    ) -> Plan | Done:
        dw = self._wcc(d, d)
        if how == CreateMode.GUARDED or child.ftype != FileType.REG:
            raise Exists(f"{name!r}", wcc=dw)
        if how == CreateMode.EXCLUSIVE:
            # A retransmitted EXCLUSIVE CREATE finds its own file (RFC 1813 §3.3.8).
            if not verf or child.verf != verf:
                raise Exists(f"{name!r} (other verifier)", wcc=dw)
            return Done(Created(self._fid(child), self._attr(child), dw))
        # UNCHECKED on an existing file: only a size of 0 applies (knfsd do_nfsd_create).
        if sattr.size == 0 and child.size != 0:
            perms.check_io(cred, child, perms.W)
            now = self._now()
            plan = self._attr_plan(child, SetAttr(child.ino, now, size=0, mtime_ns=now))
            plan.finish = lambda after: Created(
                self._fid(child), self._attr(after[child.ino] or child), dw)
            return plan
        return Done(Created(self._fid(child), self._attr(child), dw))

    @fenced
    async def mkdir(self, cred: Cred, dir_fid: FileId, name: bytes, sattr: SetAttrs) -> Created:
        check_new_name(name, self.config.max_name_bytes)
        return await self._make(cred, dir_fid, name, FileType.DIR, sattr)

    @fenced
    async def symlink(
        self, cred: Cred, dir_fid: FileId, name: bytes, target: bytes, sattr: SetAttrs
    ) -> Created:
        check_new_name(name, self.config.max_name_bytes)
        if not target:
            raise NoEnt("empty symlink target")  # knfsd nfsd_symlink
        if len(target) > self.config.max_symlink_bytes:
            raise NameTooLong(f"symlink target of {len(target)} bytes")
        return await self._make(cred, dir_fid, name, FileType.LNK, sattr, target=target)

    @fenced
    async def mknod(
        self, cred: Cred, dir_fid: FileId, name: bytes, ftype: FileType, sattr: SetAttrs,
        rdev: tuple[int, int],
    ) -> Created:
        if ftype not in (FileType.CHR, FileType.BLK, FileType.SOCK, FileType.FIFO):
            raise BadType(f"MKNOD of a {ftype.name}")  # RFC 1813 §3.3.11
        check_new_name(name, self.config.max_name_bytes)
        if ftype in (FileType.CHR, FileType.BLK) and not cred.is_root:
            raise Perm("device nodes need root")  # mknod(2): CAP_MKNOD
        dev = rdev if ftype in (FileType.CHR, FileType.BLK) else (0, 0)
        return await self._make(cred, dir_fid, name, ftype, sattr, rdev=dev)

    async def _make(self, cred: Cred, dir_fid: FileId, name: bytes, ftype: FileType,
                    sattr: SetAttrs, **kw: object) -> Created:
        async def build() -> Plan | Done:
            d, ent, _ = await self._lookup_at(dir_fid, name)
            self._dir_for_change(cred, d)
            if ent is not None:
                raise Exists(f"{name!r}", wcc=self._wcc(d, d))
            return await self._plan_new(cred, d, name, ftype, sattr, **kw)  # type: ignore[arg-type]

        return await self._change(build)

    def _dir_for_change(self, cred: Cred, d: Inode) -> None:
        require_dir(d)
        try:
            perms.check_dir_write(cred, d)
        except FsError as e:
            e.wcc = self._wcc(d, d)
            raise

    async def _plan_new(
        self, cred: Cred, d: Inode, name: bytes, ftype: FileType, sattr: SetAttrs, *,
        verf: bytes = b"", size: int = 0, target: bytes = b"", rdev: tuple[int, int] = (0, 0),
    ) -> Plan:
        """A new inode linked as d/name (files take d's group; directories: module header)."""
        try:
            mode, uid, gid = new_owner(cred, d, ftype, sattr)
        except Perm as e:
            e.wcc = self._wcc(d, d)
            raise
        now = self._now()
        dg = self.ring.group_of_inode(d.ino)
        want = self._new_dir_group() if ftype == FileType.DIR else dg
        ino = await self.alloc.alloc(want, self.ring)
        ig = self.ring.group_of_inode(ino)
        gen = self._new_gen()
        plan = Plan(dg, {d.ino: d})
        plan.add(ig, CreateInode(
            ino=ino, gen=gen, ftype=ftype, mode=mode, uid=uid, gid=gid,
            nlink=2 if ftype == FileType.DIR else 1, time_ns=now, rdev=rdev, target=target,
            parent=d.ino, verf=verf,
            chunk_size=self.config.chunk_size if ftype == FileType.REG else 0, size=size,
            pname=name, store=d.store))
        atime = set_time(sattr.atime, sattr.atime_ns, now)
        mtime = set_time(sattr.mtime, sattr.mtime_ns, now)
        if atime is not None or mtime is not None:
            plan.add(ig, SetAttr(ino, now, atime_ns=atime, mtime_ns=mtime))
        plan.add(dg, LinkDirent(d.ino, name, ino, ftype, now))

        def finish(after: dict[int, Inode | None]) -> Created:
            inode = after.get(ino)
            assert inode is not None, "a committed create has its inode"
            return Created(FileId(ino, gen), self._attr(inode), self._wcc(d, after[d.ino]))

        plan.finish = finish
        return plan

    # -- REMOVE, RMDIR ----------------------------------------------------------------------

    @fenced
    async def remove(self, cred: Cred, dir_fid: FileId, name: bytes) -> Wcc:
        return await self._unlink(cred, dir_fid, name, want_dir=False)

    @fenced
    async def rmdir(self, cred: Cred, dir_fid: FileId, name: bytes) -> Wcc:
        return await self._unlink(cred, dir_fid, name, want_dir=True)

    async def _unlink(self, cred: Cred, dir_fid: FileId, name: bytes, *, want_dir: bool) -> Wcc:
        if name in (DOT, DOTDOT):
            raise Inval(f"cannot remove {name!r}")  # as LocalBackend
        check_name(name, self.config.max_name_bytes)

        async def build() -> Plan | Done:
            d, ent, victim = await self._lookup_at(dir_fid, name)
            self._dir_for_change(cred, d)
            dw = self._wcc(d, d)
            if ent is None:
                raise NoEnt(f"{name!r}", wcc=dw)
            if victim is None:
                raise Reread(f"{name!r} points at a removed inode")
            if want_dir and victim.ftype != FileType.DIR:
                raise NotDir(f"{name!r} is not a directory", wcc=dw)
            if not want_dir and victim.ftype == FileType.DIR:
                raise IsDir(f"{name!r} is a directory", wcc=dw)  # unlink(2) on Linux: EISDIR
            self._check_sticky(cred, d, victim, dw)
            if want_dir and not await self._is_empty(victim.ino):
                raise NotEmpty(f"{name!r}", wcc=dw)
            now = self._now()
            plan = Plan(self.ring.group_of_inode(d.ino), {d.ino: d, victim.ino: victim},
                        {(d.ino, name): ent})
            plan.add(plan.coordinator, UnlinkDirent(d.ino, name, now, expect_ino=victim.ino))
            self._drop_link(plan, victim, now, d.ino, name)
            plan.finish = lambda after: self._wcc(d, after[d.ino])
            return plan

        return await self._change(build)

    def _drop_link(self, plan: Plan, victim: Inode, now: int, dir_ino: int,
                   name: bytes) -> None:
        """One name of `victim` goes (a directory's own `.` with it)."""
        group = self.ring.group_of_inode(victim.ino)
        plan.before[victim.ino] = victim
        last = victim.ftype == FileType.DIR or victim.nlink == 1
        if not last and (victim.parent, victim.pname) == (dir_ino, name):
            # Its primary name goes, others stay: write-back has no key for it any more
            # (hard links have no place in a bucket; flush.py deletes its object).
            plan.add(group, SetName(victim.ino, 0, b"", now))
            self._hold_key(plan, victim)
        elif last:
            self._release_key(plan, victim)
        if victim.ftype == FileType.DIR:
            plan.add(group, ExpectInode(victim.ino, victim.gen, empty=True),
                     AdjustLinks(victim.ino, -2, now))
            return
        others = self._chunk_groups(victim, 0)
        if victim.ftype == FileType.REG:
            # Which groups hold data follows from the size read, whether this is the last
            # link from nlink: either changing meanwhile must abort this plan (else a chunk
            # written meanwhile in another group would outlive its inode).
            plan.add(group, ExpectInode(victim.ino, nlink=victim.nlink, size=victim.size))
        plan.add(group, AdjustLinks(victim.ino, -1, now))
        if others and victim.nlink == 1:
            for g in sorted(others):
                plan.add(g, ChunkDelete(victim.ino))

    def _key_group(self, inode: Inode) -> int | None:
        """The group keeping the key table of the inode's bucket (its store's root), if the
        inode has an object there (server/cluster/flush.py)."""
        if not (inode.store and inode.okey):
            return None
        root = self.store_roots.get(inode.store)
        return None if root is None else self.ring.group_of_inode(root)

    def _hold_key(self, plan: Plan, inode: Inode) -> None:
        """The inode moves away from its object's key: nobody may write there until the
        write-back moved the object (flush.py)."""
        self._expect_okey(plan, inode)
        g = self._key_group(inode)
        if g is not None:
            plan.add(g, KeyHold(inode.store, inode.okey, inode.ino))

    def _release_key(self, plan: Plan, inode: Inode) -> None:
        """The inode goes: its object is to be deleted from the bucket."""
        self._expect_okey(plan, inode)
        g = self._key_group(inode)
        if g is not None:
            plan.add(g, KeyRelease(inode.store, inode.okey, inode.ino, delete=True))

    def _expect_okey(self, plan: Plan, inode: Inode) -> None:
        """The key held or released is the inode's object key when the plan commits: a
        write-back that marked it clean at another key since it was read (or at its first
        key) aborts the plan, which is made again. Without this, a rename planned before
        such a mark held the old key for good, and a file made at that name later was never
        written back (found by the fault campaign: tests/faults/FINDINGS.md, 5)."""
        if inode.store:
            plan.add(self.ring.group_of_inode(inode.ino),
                     ExpectInode(inode.ino, okey=inode.okey, has_okey=True))

    def _check_sticky(self, cred: Cred, d: Inode, victim: Inode, dw: Wcc) -> None:
        try:
            perms.check_sticky(cred, d, victim)
        except Perm as e:
            e.wcc = dw
            raise

    async def _is_empty(self, dir_ino: int) -> bool:
        reply = await self._at_inode(dir_ino, p.ReadDir(0, dir_ino, 0, 1))
        return not reply.entries

    # -- RENAME -----------------------------------------------------------------------------

    @fenced
    async def rename(
        self, cred: Cred, from_dir: FileId, from_name: bytes, to_dir: FileId, to_name: bytes
    ) -> RenameResult:
        for n in (from_name, to_name):
            if n in (DOT, DOTDOT) or not n:
                raise Inval(f"cannot rename {n!r}")
            check_name(n, self.config.max_name_bytes)

        async def build() -> Plan | Done:
            fd, src_ent, src = await self._lookup_at(from_dir, from_name)
            td, dst_ent, dst = await self._lookup_at(to_dir, to_name)
            if fd.ino == td.ino:
                fd = td  # one read of the directory for both roles
            self._dir_for_change(cred, fd)
            self._dir_for_change(cred, td)
            fw, tw = self._wcc(fd, fd), self._wcc(td, td)
            if src_ent is None:
                raise NoEnt(f"{from_name!r}", wcc=fw)
            if src is None or (dst_ent is not None and dst is None):
                raise Reread("an entry points at a removed inode")
            self._check_sticky(cred, fd, src, fw)
            if dst is not None and dst.ino == src.ino:
                # Same name, or two links to one file: rename(2) does nothing.
                return Done(RenameResult(fw, tw))
            plan = await self._rename_plan(cred, fd, from_name, src, td, to_name, dst, tw)
            plan.dirents[(fd.ino, from_name)] = src_ent
            if dst_ent is not None:
                plan.dirents[(td.ino, to_name)] = dst_ent
            return plan

        return await self._change(build)

    async def _rename_plan(
        self, cred: Cred, fd: Inode, fname: bytes, src: Inode, td: Inode, tname: bytes,
        dst: Inode | None, tw: Wcc,
    ) -> Plan:
        ring = self.ring
        if src.store != td.store:
            raise XDev("rename between directories of different buckets", wcc=tw)
        plan = Plan(ring.group_of_inode(fd.ino), {fd.ino: fd, td.ino: td, src.ino: src})
        moving_dir = src.ftype == FileType.DIR and fd.ino != td.ino
        if moving_dir:
            for a in await self._ancestors(src.ino, td, tw):
                plan.before.setdefault(a.ino, a)
                plan.add(ring.group_of_inode(a.ino), ExpectInode(a.ino, parent=a.parent))
            perms.check(cred, src, perms.W)  # its `..` changes (Linux vfs_rename)
        now = self._now()
        plan.add(ring.group_of_inode(fd.ino), UnlinkDirent(fd.ino, fname, now, src.ino))
        if dst is not None:
            self._check_replace(cred, td, tname, src, dst, tw)
            if dst.ftype == FileType.DIR and not await self._is_empty(dst.ino):
                raise NotEmpty(f"{tname!r}", wcc=tw)  # RFC 1813 §3.3.14 allows EXIST too
            plan.add(ring.group_of_inode(td.ino), UnlinkDirent(td.ino, tname, now, dst.ino))
            self._drop_link(plan, dst, now, td.ino, tname)
        plan.add(ring.group_of_inode(td.ino), LinkDirent(td.ino, tname, src.ino, src.ftype, now))
        # Its name (and a directory's `..`) and ctime change; write-back moves its object.
        plan.add(ring.group_of_inode(src.ino), SetName(src.ino, td.ino, tname, now))
        self._hold_key(plan, src)
        plan.finish = lambda after: RenameResult(
            self._wcc(fd, after.get(fd.ino, fd)), self._wcc(td, after.get(td.ino, td)))
        return plan

    def _check_replace(self, cred: Cred, td: Inode, tname: bytes, src: Inode, dst: Inode,
                       tw: Wcc) -> None:
        self._check_sticky(cred, td, dst, tw)
        if src.ftype == FileType.DIR and dst.ftype != FileType.DIR:
            raise NotDir(f"{tname!r} is not a directory", wcc=tw)
        if src.ftype != FileType.DIR and dst.ftype == FileType.DIR:
            raise IsDir(f"{tname!r} is a directory", wcc=tw)

    async def _ancestors(self, ino: int, d: Inode, tw: Wcc) -> list[Inode]:
        """d and its ancestors below the root; INVAL if `ino` is one of them (rename(2):
        moving a directory under itself would detach a loop)."""
        out: list[Inode] = []
        cur = d
        for _ in range(MAX_DEPTH):
            if cur.ino == ino:
                raise Inval("cannot move a directory under itself", wcc=tw)
            if cur.parent == cur.ino:
                return out
            out.append(cur)
            parent = await self._inode(cur.parent)
            if parent is None:
                raise Reread(f"directory {cur.ino} lost its parent {cur.parent}")
            cur = parent
        raise Inval("directory tree too deep", wcc=tw)

    # -- LINK -------------------------------------------------------------------------------

    @fenced
    async def link(self, cred: Cred, fid: FileId, dir_fid: FileId, name: bytes) -> LinkResult:
        check_new_name(name, self.config.max_name_bytes)

        async def build() -> Plan | Done:
            inode = await self._get(fid)
            d, ent, _ = await self._lookup_at(dir_fid, name)
            self._dir_for_change(cred, d)
            dw = self._wcc(d, d)
            if inode.ftype == FileType.DIR:
                raise IsDir("hard links to directories", wcc=dw)  # knfsd nfsd_link: ISDIR
            if ent is not None:
                raise Exists(f"{name!r}", wcc=dw)
            if inode.nlink >= self.config.max_links:
                raise MLink(f"{inode.nlink} links", wcc=dw)
            now = self._now()
            plan = Plan(self.ring.group_of_inode(d.ino), {d.ino: d, inode.ino: inode})
            plan.add(plan.coordinator, LinkDirent(d.ino, name, inode.ino, inode.ftype, now))
            plan.add(self.ring.group_of_inode(inode.ino), ExpectInode(inode.ino, inode.gen),
                     AdjustLinks(inode.ino, 1, now))
            plan.finish = lambda after: LinkResult(
                self._attr(after[inode.ino] or inode), self._wcc(d, after[d.ino]))
            return plan

        return await self._change(build)

