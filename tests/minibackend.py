"""A test-only Backend with just enough for MOUNT: export_root and getattr.

Used until a real single-node Backend exists in server/fs; any other method raises NotSupp.
"""

from __future__ import annotations

from nfs_gateway.backend import Attr, FileId, FileType, NoEnt, NotSupp

ROOT = FileId(1, 1)


class MiniBackend:
    fsid = 42

    def __init__(self, roots: dict[str, FileId] | None = None) -> None:
        self.roots = roots if roots is not None else {"/": ROOT}

    async def export_root(self, path: str) -> FileId:
        try:
            return self.roots[path]
        except KeyError:
            raise NoEnt(path) from None

    async def getattr(self, fid: FileId) -> Attr:
        if fid not in self.roots.values():
            raise NoEnt(str(fid))
        return Attr(FileType.DIR, 0o755, 2, 0, 0, 4096, 4096, (0, 0), self.fsid, fid.ino, 0, 0, 0)

    def __getattr__(self, name: str):
        async def unsupported(*args, **kwargs):
            raise NotSupp(name)

        return unsupported


def make_handle(export, fid: FileId) -> bytes:
    """A stand-in for nfs3.fhandle.encode_fhandle: export id, inode, generation."""
    return (
        export.export_id.to_bytes(4, "big")
        + fid.ino.to_bytes(8, "big")
        + fid.gen.to_bytes(4, "big")
    )
