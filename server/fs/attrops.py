"""GETATTR, ACCESS and READLINK, the same over any store of inodes (RFC 1813 §3.3.1, §3.3.4,
§3.3.5): a backend that has `_get(fid) -> Inode` (NFS3ERR_STALE when gone),
`_get_nowait(fid) -> Inode | None` (None: not answerable without waiting) and
`_attr(inode) -> Attr` gets them, and the synchronous GETATTR/ACCESS twins of
nfs_gateway.backend.NowaitBackend, by inheriting this mixin (LocalBackend, ClusterBackend)."""

from __future__ import annotations

from nfs_gateway.backend import Attr, Cred, FileId, FileType, Inval
from server.fs import perms
from server.fs.records import Inode


class AttrOps:
    async def _get(self, fid: FileId) -> Inode:
        raise NotImplementedError

    def _get_nowait(self, fid: FileId) -> Inode | None:
        raise NotImplementedError

    def _attr(self, inode: Inode) -> Attr:
        raise NotImplementedError

    def getattr_nowait(self, fid: FileId) -> Attr | None:
        inode = self._get_nowait(fid)
        return None if inode is None else self._attr(inode)

    def access_nowait(self, cred: Cred, fid: FileId, mask: int) -> tuple[int, Attr] | None:
        inode = self._get_nowait(fid)
        if inode is None:
            return None
        return perms.access_mask(cred, inode, mask), self._attr(inode)

    async def getattr(self, fid: FileId) -> Attr:
        return self._attr(await self._get(fid))

    async def access(self, cred: Cred, fid: FileId, mask: int) -> tuple[int, Attr]:
        inode = await self._get(fid)
        return perms.access_mask(cred, inode, mask), self._attr(inode)

    async def readlink(self, cred: Cred, fid: FileId) -> tuple[bytes, Attr]:
        inode = await self._get(fid)
        if inode.ftype != FileType.LNK:
            raise Inval("not a symbolic link")
        return inode.target, self._attr(inode)
