"""Namespace and attribute changes of LocalBackend (RFC 1813 §3.3.2, §3.3.8 to §3.3.15).

Each operation checks under the metadata lock, then commits its records in one batch; errors
follow Linux knfsd where the RFC leaves a choice (cited inline).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nfs_gateway.backend import (
    BadType,
    Created,
    CreateMode,
    Cred,
    Exists,
    FBig,
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
    TimeHow,
    Wcc,
)
from server.fs import keys, perms
from server.fs.changes import Changes
from server.fs.common import DOT, DOTDOT, check_name, check_new_name, require_dir, wcc
from server.fs.config import FsConfig
from server.fs.records import (
    AdjustLinks,
    CreateInode,
    Inode,
    LinkDirent,
    SetAttr,
    SetParent,
    UnlinkDirent,
)
from storage.kv import prefix_end

if TYPE_CHECKING:
    from server.fs.backend import LocalBackend

    _Base = LocalBackend
else:
    _Base = object

_DEFAULT_MODE = {FileType.DIR: 0o755, FileType.LNK: 0o777}


class NamespaceOps(_Base):
    # -- SETATTR ----------------------------------------------------------------------------

    async def setattr(
        self, cred: Cred, fid: FileId, sattr: SetAttrs, guard_ctime_ns: int | None
    ) -> Wcc:
        async with self._ino_lock(fid.ino):
            async with self._writing():
                before = await self._get(fid)
                if guard_ctime_ns is not None and guard_ctime_ns != before.ctime_ns:
                    raise NotSync("ctime guard", wcc=wcc(before, before, self.fsid))
                record = self._setattr_record(cred, before, sattr)
                if record is None:
                    return wcc(before, before, self.fsid)
                changes = await self._commit([record])
            await self._data_effects(changes, held=fid.ino)
        return wcc(before, changes.inodes[fid.ino], self.fsid)

    def _setattr_record(self, cred: Cred, inode: Inode, s: SetAttrs) -> SetAttr | None:
        return setattr_record(cred, inode, s, self._now(), self.config, self.fsid)

    # -- CREATE, MKDIR, SYMLINK, MKNOD ------------------------------------------------------

    async def create(
        self,
        cred: Cred,
        dir_fid: FileId,
        name: bytes,
        how: CreateMode,
        sattr: SetAttrs,
        verf: bytes | None,
    ) -> Created:
        check_new_name(name, self.config.max_name_bytes)
        held = None
        if how == CreateMode.UNCHECKED and sattr.size == 0:
            # It may truncate an existing file: take that file's data lock first (lock order).
            ent = await self._meta.dirent(dir_fid.ino, name)
            held = None if ent is None else ent.ino
        if held is None:
            return await self._create_locked(cred, dir_fid, name, how, sattr, verf, None)
        async with self._ino_lock(held):
            return await self._create_locked(cred, dir_fid, name, how, sattr, verf, held)

    async def _create_locked(
        self,
        cred: Cred,
        dir_fid: FileId,
        name: bytes,
        how: CreateMode,
        sattr: SetAttrs,
        verf: bytes | None,
        held: int | None,
    ) -> Created:
        async with self._writing():
            d = await self._dir_for_change(cred, dir_fid)
            existing = await self._meta.dirent(d.ino, name)
            if existing is None:
                return await self._create_new(
                    cred, d, name, FileType.REG, sattr, verf=verf or b"", size=sattr.size or 0
                )
            created, changes = await self._create_existing(
                cred, d, name, existing.ino, how, sattr, verf
            )
        if changes is not None:
            await self._data_effects(changes, held=held)
        return created

    async def _create_existing(
        self,
        cred: Cred,
        d: Inode,
        name: bytes,
        ino: int,
        how: CreateMode,
        sattr: SetAttrs,
        verf: bytes | None,
    ) -> tuple[Created, Changes | None]:
        inode = await self._meta.inode(ino)
        assert inode is not None, f"dangling entry {name!r} in {d.ino}"
        dw = wcc(d, d, self.fsid)
        if how == CreateMode.GUARDED or inode.ftype != FileType.REG:
            raise Exists(f"{name!r}", wcc=dw)
        if how == CreateMode.EXCLUSIVE:
            # A retransmitted EXCLUSIVE CREATE finds its own file (RFC 1813 §3.3.8).
            if not verf or inode.verf != verf:
                raise Exists(f"{name!r} (other verifier)", wcc=dw)
            return Created(self._fid(inode), self._attr(inode), dw), None
        # UNCHECKED on an existing file: only a size of 0 applies (knfsd do_nfsd_create).
        changes = None
        if sattr.size == 0 and inode.size != 0:
            perms.check_io(cred, inode, perms.W)
            now = self._now()
            changes = await self._commit([SetAttr(ino, now, size=0, mtime_ns=now)])
            inode = changes.inodes[ino] or inode
        return Created(self._fid(inode), self._attr(inode), dw), changes

    async def mkdir(self, cred: Cred, dir_fid: FileId, name: bytes, sattr: SetAttrs) -> Created:
        check_new_name(name, self.config.max_name_bytes)
        async with self._writing():
            d = await self._dir_for_change(cred, dir_fid)
            await self._require_absent(d, name)
            return await self._create_new(cred, d, name, FileType.DIR, sattr)

    async def symlink(
        self, cred: Cred, dir_fid: FileId, name: bytes, target: bytes, sattr: SetAttrs
    ) -> Created:
        check_new_name(name, self.config.max_name_bytes)
        if not target:
            raise NoEnt("empty symlink target")  # knfsd nfsd_symlink
        if len(target) > self.config.max_symlink_bytes:
            raise NameTooLong(f"symlink target of {len(target)} bytes")
        async with self._writing():
            d = await self._dir_for_change(cred, dir_fid)
            await self._require_absent(d, name)
            return await self._create_new(cred, d, name, FileType.LNK, sattr, target=target)

    async def mknod(
        self,
        cred: Cred,
        dir_fid: FileId,
        name: bytes,
        ftype: FileType,
        sattr: SetAttrs,
        rdev: tuple[int, int],
    ) -> Created:
        if ftype not in (FileType.CHR, FileType.BLK, FileType.SOCK, FileType.FIFO):
            raise BadType(f"MKNOD of a {ftype.name}")  # RFC 1813 §3.3.11
        check_new_name(name, self.config.max_name_bytes)
        if ftype in (FileType.CHR, FileType.BLK) and not cred.is_root:
            raise Perm("device nodes need root")  # mknod(2): CAP_MKNOD
        async with self._writing():
            d = await self._dir_for_change(cred, dir_fid)
            await self._require_absent(d, name)
            dev = rdev if ftype in (FileType.CHR, FileType.BLK) else (0, 0)
            return await self._create_new(cred, d, name, ftype, sattr, rdev=dev)

    async def _dir_for_change(self, cred: Cred, dir_fid: FileId) -> Inode:
        d = await self._get(dir_fid)
        require_dir(d)
        try:
            perms.check_dir_write(cred, d)
        except FsError as e:
            e.wcc = wcc(d, d, self.fsid)
            raise
        return d

    async def _require_absent(self, d: Inode, name: bytes) -> None:
        if await self._meta.dirent(d.ino, name) is not None:
            raise Exists(f"{name!r}", wcc=wcc(d, d, self.fsid))

    async def _create_new(
        self,
        cred: Cred,
        d: Inode,
        name: bytes,
        ftype: FileType,
        sattr: SetAttrs,
        *,
        verf: bytes = b"",
        size: int = 0,
        target: bytes = b"",
        rdev: tuple[int, int] = (0, 0),
    ) -> Created:
        """Records for a new inode linked as d/name; the caller holds the metadata lock."""
        try:
            mode, uid, gid = new_owner(cred, d, ftype, sattr)
        except Perm as e:
            e.wcc = wcc(d, d, self.fsid)
            raise
        now = self._now()
        ino = self._meta.alloc_ino()
        records: list[object] = [
            CreateInode(
                ino=ino,
                gen=self._new_gen(),
                ftype=ftype,
                mode=mode,
                uid=uid,
                gid=gid,
                nlink=2 if ftype == FileType.DIR else 1,
                time_ns=now,
                rdev=rdev,
                target=target,
                parent=d.ino if ftype == FileType.DIR else 0,
                verf=verf,
                chunk_size=self.chunk_size if ftype == FileType.REG else 0,
                size=size,
            ),
            LinkDirent(d.ino, name, ino, ftype, now),
        ]
        atime = set_time(sattr.atime, sattr.atime_ns, now)
        mtime = set_time(sattr.mtime, sattr.mtime_ns, now)
        if atime is not None or mtime is not None:
            records.append(SetAttr(ino, now, atime_ns=atime, mtime_ns=mtime))
        changes = await self._commit(records)
        inode = changes.inodes[ino]
        assert inode is not None
        return Created(
            self._fid(inode), self._attr(inode), wcc(d, changes.inodes[d.ino], self.fsid)
        )

    # -- REMOVE, RMDIR ----------------------------------------------------------------------

    async def remove(self, cred: Cred, dir_fid: FileId, name: bytes) -> Wcc:
        return await self._unlink(cred, dir_fid, name, want_dir=False)

    async def rmdir(self, cred: Cred, dir_fid: FileId, name: bytes) -> Wcc:
        return await self._unlink(cred, dir_fid, name, want_dir=True)

    async def _unlink(self, cred: Cred, dir_fid: FileId, name: bytes, *, want_dir: bool) -> Wcc:
        if name in (DOT, DOTDOT):
            # knfsd answers ACCES for REMOVE/RMDIR of dot entries; POSIX rmdir(".") is EINVAL.
            raise Inval(f"cannot remove {name!r}")
        check_name(name, self.config.max_name_bytes)
        async with self._writing():
            d = await self._dir_for_change(cred, dir_fid)
            try:
                victim = await self._victim(cred, d, name, want_dir=want_dir)
            except FsError as e:
                e.wcc = wcc(d, d, self.fsid)  # nothing changed (made only on failure: it costs)
                raise
            now = self._now()
            links = -2 if want_dir else -1  # a directory's own `.` goes with its entry
            changes = await self._commit(
                [UnlinkDirent(d.ino, name, now), AdjustLinks(victim.ino, links, now)]
            )
        await self._data_effects(changes)
        return wcc(d, changes.inodes[d.ino], self.fsid)

    async def _victim(self, cred: Cred, d: Inode, name: bytes, *, want_dir: bool) -> Inode:
        """The inode REMOVE or RMDIR of d/name would unlink, if it may."""
        ent = await self._meta.dirent(d.ino, name)
        if ent is None:
            raise NoEnt(f"{name!r}")
        victim = await self._meta.inode(ent.ino)
        assert victim is not None, f"dangling entry {name!r} in {d.ino}"
        if want_dir and victim.ftype != FileType.DIR:
            raise NotDir(f"{name!r} is not a directory")
        if not want_dir and victim.ftype == FileType.DIR:
            raise IsDir(f"{name!r} is a directory")  # unlink(2) on Linux: EISDIR
        perms.check_sticky(cred, d, victim)
        if want_dir and not await self._is_empty(victim.ino):
            raise NotEmpty(f"{name!r}")
        return victim

    def _check_sticky(self, cred: Cred, d: Inode, victim: Inode, dw: Wcc) -> None:
        try:
            perms.check_sticky(cred, d, victim)
        except Perm as e:
            e.wcc = dw
            raise

    async def _is_empty(self, dir_ino: int) -> bool:
        known = self._meta.complete.is_empty(dir_ino)
        if known is not None:
            return known
        prefix = keys.cookie_prefix(dir_ino)
        rows = await self._meta.scan(prefix, prefix_end(prefix), 1)
        return not rows

    # -- RENAME -----------------------------------------------------------------------------

    async def rename(
        self, cred: Cred, from_dir: FileId, from_name: bytes, to_dir: FileId, to_name: bytes
    ) -> RenameResult:
        for n in (from_name, to_name):
            if n in (DOT, DOTDOT) or not n:
                raise Inval(f"cannot rename {n!r}")  # knfsd: PERM; rename(2): EINVAL/EBUSY
            check_name(n, self.config.max_name_bytes)
        async with self._writing():
            fd = await self._dir_for_change(cred, from_dir)
            td = await self._dir_for_change(cred, to_dir)
            changes = await self._rename_locked(cred, fd, from_name, td, to_name)
        if changes is None:
            return RenameResult(wcc(fd, fd, self.fsid), wcc(td, td, self.fsid))
        await self._data_effects(changes)
        return RenameResult(
            wcc(fd, changes.inodes.get(fd.ino, fd), self.fsid),
            wcc(td, changes.inodes.get(td.ino, td), self.fsid),
        )

    async def _rename_locked(self, cred: Cred, fd: Inode, fname: bytes, td: Inode, tname: bytes):
        fw, tw = wcc(fd, fd, self.fsid), wcc(td, td, self.fsid)
        src_ent = await self._meta.dirent(fd.ino, fname)
        if src_ent is None:
            raise NoEnt(f"{fname!r}", wcc=fw)
        src = await self._meta.inode(src_ent.ino)
        assert src is not None
        self._check_sticky(cred, fd, src, fw)
        dst_ent = await self._meta.dirent(td.ino, tname)
        if dst_ent is not None and dst_ent.ino == src.ino:
            return None  # same name, or two links to one file: rename(2) does nothing
        is_dir = src.ftype == FileType.DIR
        if is_dir and fd.ino != td.ino:
            await self._check_not_ancestor(src.ino, td, tw)
            perms.check(cred, src, perms.W)  # its `..` changes (Linux vfs_rename)
        now = self._now()
        records: list[object] = [UnlinkDirent(fd.ino, fname, now)]
        if dst_ent is not None:
            records += await self._replace_target(cred, td, tname, src, dst_ent.ino, now, tw)
        records.append(LinkDirent(td.ino, tname, src.ino, src.ftype, now))
        if is_dir and fd.ino != td.ino:
            records.append(SetParent(src.ino, td.ino, now))
        else:
            records.append(SetAttr(src.ino, now))  # rename changes the inode's ctime
        return await self._commit(records)

    async def _check_not_ancestor(self, ino: int, d: Inode, tw: Wcc) -> None:
        """Moving a directory under itself would detach a loop: INVAL (rename(2))."""
        cur = d
        for _ in range(1 << 16):
            if cur.ino == ino:
                raise Inval("cannot move a directory under itself", wcc=tw)
            if cur.parent == cur.ino:
                return
            parent = await self._meta.inode(cur.parent)
            assert parent is not None, f"directory {cur.ino} lost its parent"
            cur = parent
        raise Inval("directory tree too deep", wcc=tw)

    async def _replace_target(
        self, cred: Cred, td: Inode, tname: bytes, src: Inode, dst_ino: int, now: int, tw: Wcc
    ) -> list[object]:
        dst = await self._meta.inode(dst_ino)
        assert dst is not None
        self._check_sticky(cred, td, dst, tw)
        if src.ftype == FileType.DIR and dst.ftype != FileType.DIR:
            raise NotDir(f"{tname!r} is not a directory", wcc=tw)
        if src.ftype != FileType.DIR and dst.ftype == FileType.DIR:
            raise IsDir(f"{tname!r} is a directory", wcc=tw)
        if dst.ftype == FileType.DIR and not await self._is_empty(dst.ino):
            raise NotEmpty(f"{tname!r}", wcc=tw)  # RFC 1813 §3.3.14 allows EXIST too
        links = -2 if dst.ftype == FileType.DIR else -1
        return [UnlinkDirent(td.ino, tname, now), AdjustLinks(dst.ino, links, now)]

    # -- LINK -------------------------------------------------------------------------------

    async def link(self, cred: Cred, fid: FileId, dir_fid: FileId, name: bytes) -> LinkResult:
        check_new_name(name, self.config.max_name_bytes)
        async with self._writing():
            inode = await self._get(fid)
            d = await self._dir_for_change(cred, dir_fid)
            dw = wcc(d, d, self.fsid)
            if inode.ftype == FileType.DIR:
                raise IsDir("hard links to directories", wcc=dw)  # knfsd nfsd_link: ISDIR
            await self._require_absent(d, name)
            if inode.nlink >= self.config.max_links:
                raise MLink(f"{inode.nlink} links", wcc=dw)
            now = self._now()
            changes = await self._commit(
                [
                    LinkDirent(d.ino, name, inode.ino, inode.ftype, now),
                    AdjustLinks(inode.ino, 1, now),
                ]
            )
        after = changes.inodes[inode.ino]
        assert after is not None
        return LinkResult(self._attr(after), wcc(d, changes.inodes[d.ino], self.fsid))


def setattr_record(
    cred: Cred, inode: Inode, s: SetAttrs, now: int, config: FsConfig, fsid: int
) -> SetAttr | None:
    """The checked SetAttr for sattr, or None if nothing changes (knfsd does nothing then).
    Shared with the cluster gateway (server/cluster/gateway_ns.py)."""
    try:
        perms.check_setattr(cred, inode, s)
    except FsError as e:  # add the wcc the RFC wants in failure replies
        e.wcc = e.wcc or wcc(inode, inode, fsid)
        raise
    if s.size is not None and inode.ftype != FileType.REG:
        raise Inval(f"size of a {inode.ftype.name}")  # dirs raised IsDir above
    if s.size is not None and s.size > config.max_file_size:
        raise FBig(f"size {s.size}", wcc=wcc(inode, inode, fsid))
    mode = None if s.mode is None else perms.chmod_mode(cred, inode, s.mode)
    if inode.ftype == FileType.LNK:
        mode = None  # knfsd ignores mode changes on symlinks
    if (s.uid is not None and s.uid != inode.uid) or (s.gid is not None and s.gid != inode.gid):
        mode = perms.chown_clears(inode, inode.mode if mode is None else mode)
    atime = set_time(s.atime, s.atime_ns, now)
    mtime = set_time(s.mtime, s.mtime_ns, now)
    if s.size is not None and mtime is None:
        mtime = now  # a size change sets mtime (knfsd, RFC 5661 §18.30.4)
    fields = (mode, s.uid, s.gid, s.size, atime, mtime)
    if all(f is None for f in fields):
        return None
    return SetAttr(inode.ino, now, mode, s.uid, s.gid, s.size, atime, mtime)


def new_owner(cred: Cred, d: Inode, ftype: FileType, sattr: SetAttrs) -> tuple[int, int, int]:
    """(mode, uid, gid) of a new object: the creator's ids, the group of a setgid directory
    (BSD semantics, inherited by subdirectories), and sattr's ids only where a chown would be
    allowed (knfsd applies them with the caller's rights)."""
    mode = sattr.mode if sattr.mode is not None else _DEFAULT_MODE.get(ftype, 0)
    mode &= 0o7777
    if ftype == FileType.LNK:
        mode = 0o777  # symlink permissions mean nothing; Linux always shows 0777
    gid = cred.gid
    if d.mode & perms.S_ISGID:
        gid = d.gid
        if ftype == FileType.DIR:
            mode |= perms.S_ISGID
    elif mode & perms.S_ISGID and not cred.is_root and not perms.in_group(cred, gid):
        mode &= ~perms.S_ISGID
    if sattr.uid is not None and sattr.uid != cred.uid and not cred.is_root:
        raise Perm("only root may create files for someone else")
    if sattr.gid is not None and sattr.gid != gid:
        if not cred.is_root and not perms.in_group(cred, sattr.gid):
            raise Perm("not a member of that group")
        gid = sattr.gid
    return mode, cred.uid if sattr.uid is None else sattr.uid, gid


def set_time(how: TimeHow, client_ns: int, now: int) -> int | None:
    """The time a sattr3 time_how asks for, or None (leave it)."""
    if how == TimeHow.SET_TO_SERVER_TIME:
        return now
    if how == TimeHow.SET_TO_CLIENT_TIME:
        return client_ns
    return None
