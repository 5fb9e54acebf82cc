"""GETATTR, ACCESS and READLINK, the same over any store of inodes (RFC 1813 §3.3.1, §3.3.4,
§3.3.5): a backend that has `_get(fid) -> Inode` (NFS3ERR_STALE when gone) and
`_attr(inode) -> Attr` gets them by inheriting this mixin (LocalBackend, ClusterBackend)."""

from __future__ import annotations

from nfs_gateway.backend import Attr, Cred, FileId, FileType, Inval
from server.fs import perms
from server.fs.records import Inode


class AttrOps:
    async def _get(self, fid: FileId) -> Inode:
        raise NotImplementedError

    def _attr(self, inode: Inode) -> Attr:
        raise NotImplementedError

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
