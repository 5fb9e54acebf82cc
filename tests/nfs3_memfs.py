"""A test-only in-memory Backend, complete enough to drive every NFS version 3 handler.

Used by tests/unit/test_nfs3_procs.py alongside the real single-node backend (server/fs), so the
handlers are checked against two implementations of the Backend protocol. Not a file system:
no permissions beyond what the tests need, times from a counter (no clock), one lock-free dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from nfs_gateway import backend as b

_VERF = b"memfs-v1"
_COOKIEVERF = b"\0" * 8


@dataclass
class _Node:
    attr: b.Attr
    gen: int
    data: bytearray = field(default_factory=bytearray)
    entries: dict[bytes, int] = field(default_factory=dict)  # name → ino, in creation order
    cookies: dict[bytes, int] = field(default_factory=dict)  # name → cookie (never reused)
    target: bytes = b""
    verf: bytes | None = None
    parent: int = 1


class MemBackend:
    fsid = 77

    def __init__(self) -> None:
        self._nodes: dict[int, _Node] = {}
        self._next_ino = 1
        self._now = 1_000_000_000
        self._next_cookie = 3  # 1 and 2 are "." and ".."
        self._mk(b.FileType.DIR, 0o777, b.SetAttrs(), parent=1)

    # --- helpers ---------------------------------------------------------------------------

    def _tick(self) -> int:
        self._now += 1000
        return self._now

    def _mk(self, ftype: b.FileType, mode: int, s: b.SetAttrs, parent: int, rdev=(0, 0)) -> int:
        ino, now = self._next_ino, self._tick()
        self._next_ino += 1
        nlink = 2 if ftype == b.FileType.DIR else 1
        mode = s.mode if s.mode is not None else mode
        attr = b.Attr(ftype, mode, nlink, s.uid or 0, s.gid or 0, 0, 0, rdev, self.fsid, ino,
                      now, now, now)  # fmt: skip
        self._nodes[ino] = _Node(attr, gen=7, parent=parent)
        return ino

    def _node(self, fid: b.FileId) -> _Node:
        n = self._nodes.get(fid.ino)
        if n is None or n.gen != fid.gen:
            raise b.Stale(str(fid))
        return n

    def _dir(self, fid: b.FileId) -> _Node:
        n = self._node(fid)
        if n.attr.type != b.FileType.DIR:
            raise b.NotDir(str(fid), b.Wcc(after=n.attr))
        return n

    def _fid(self, ino: int) -> b.FileId:
        return b.FileId(ino, self._nodes[ino].gen)

    def _touch(self, n: _Node, **changes: int) -> None:
        now = self._tick()
        n.attr = replace(n.attr, ctime_ns=now, **changes)

    def _link(self, d: _Node, name: bytes, ino: int) -> None:
        d.entries[name] = ino
        d.cookies[name] = self._next_cookie
        self._next_cookie += 1
        self._touch(d, mtime_ns=self._now)

    def _new(self, dir_fid, name, ftype, mode, s, rdev=(0, 0), target=b"") -> b.Created:
        d = self._dir(dir_fid)
        before = b.WccAttr.of(d.attr)
        if name in d.entries:
            raise b.Exists(name.decode(), b.Wcc(before, d.attr))
        ino = self._mk(ftype, mode, s, dir_fid.ino, rdev)
        self._nodes[ino].target = target
        if ftype == b.FileType.DIR:
            self._touch(d, nlink=d.attr.nlink + 1)
        self._link(d, name, ino)
        return b.Created(self._fid(ino), self._nodes[ino].attr, b.Wcc(before, d.attr))

    def _unlink(self, d: _Node, name: bytes) -> None:
        ino = d.entries.pop(name)
        d.cookies.pop(name)
        self._touch(d, mtime_ns=self._now)
        n = self._nodes[ino]
        self._touch(n, nlink=n.attr.nlink - 1)
        if n.attr.nlink == 0 or n.attr.type == b.FileType.DIR:
            del self._nodes[ino]

    # --- Backend -----------------------------------------------------------------------------

    async def export_root(self, path: str) -> b.FileId:
        ino = 1
        for part in [p for p in path.split("/") if p]:
            child = self._nodes[ino].entries.get(part.encode())
            if child is None:
                raise b.NoEnt(path)
            ino = child
        return self._fid(ino)

    async def getattr(self, fid: b.FileId) -> b.Attr:
        return self._node(fid).attr

    async def setattr(self, cred, fid, sattr, guard_ctime_ns):
        n = self._node(fid)
        before = b.WccAttr.of(n.attr)
        if guard_ctime_ns is not None and guard_ctime_ns != n.attr.ctime_ns:
            raise b.NotSync("ctime", b.Wcc(before, n.attr))
        changes = {k: getattr(sattr, k) for k in ("mode", "uid", "gid", "size")}
        changes = {k: v for k, v in changes.items() if v is not None}
        if "size" in changes:
            if n.attr.type == b.FileType.DIR:
                raise b.IsDir("size of a directory", b.Wcc(before, n.attr))
            del n.data[changes["size"] :]
            n.data.extend(bytes(changes["size"] - len(n.data)))
        if sattr.mtime == b.TimeHow.SET_TO_CLIENT_TIME:
            changes["mtime_ns"] = sattr.mtime_ns
        self._touch(n, **changes)
        return b.Wcc(before, n.attr)

    async def lookup(self, cred, dir_fid, name):
        d = self._dir(dir_fid)
        ino = {b".": dir_fid.ino, b"..": d.parent}.get(name) or d.entries.get(name)
        if ino is None:
            raise b.NoEnt(name.decode(), b.Wcc(after=d.attr))
        return b.LookupResult(self._fid(ino), self._nodes[ino].attr, d.attr)

    async def access(self, cred, fid, mask):
        return mask, self._node(fid).attr

    async def readlink(self, cred, fid):
        n = self._node(fid)
        if n.attr.type != b.FileType.LNK:
            raise b.Inval("not a symlink", b.Wcc(after=n.attr))
        return n.target, n.attr

    async def read(self, cred, fid, offset, count):
        n = self._node(fid)
        if n.attr.type == b.FileType.DIR:
            raise b.IsDir("read of a directory", b.Wcc(after=n.attr))
        data = bytes(n.data[offset : offset + count])
        return b.ReadResult(data, offset + len(data) >= len(n.data), n.attr)

    async def write(self, cred, fid, offset, data, stable):
        n = self._node(fid)
        before = b.WccAttr.of(n.attr)
        if n.attr.type == b.FileType.DIR:
            raise b.IsDir("write to a directory", b.Wcc(before, n.attr))
        if len(n.data) < offset:
            n.data.extend(bytes(offset - len(n.data)))
        n.data[offset : offset + len(data)] = data
        self._touch(n, size=len(n.data), used=len(n.data), mtime_ns=self._now)
        return b.WriteResult(len(data), stable, _VERF, b.Wcc(before, n.attr))

    async def create(self, cred, dir_fid, name, how, sattr, verf):
        d = self._dir(dir_fid)
        existing = d.entries.get(name)
        if existing is not None and how != b.CreateMode.GUARDED:
            n = self._nodes[existing]
            if how == b.CreateMode.UNCHECKED or n.verf == verf:
                wcc = b.Wcc(b.WccAttr.of(d.attr), d.attr)
                return b.Created(self._fid(existing), n.attr, wcc)
        created = self._new(dir_fid, name, b.FileType.REG, 0o644, sattr)
        self._nodes[created.fid.ino].verf = verf
        return created

    async def mkdir(self, cred, dir_fid, name, sattr):
        return self._new(dir_fid, name, b.FileType.DIR, 0o755, sattr)

    async def symlink(self, cred, dir_fid, name, target, sattr):
        return self._new(dir_fid, name, b.FileType.LNK, 0o777, sattr, target=target)

    async def mknod(self, cred, dir_fid, name, ftype, sattr, rdev):
        return self._new(dir_fid, name, ftype, 0o644, sattr, rdev)

    def _child(self, d: _Node, name: bytes) -> _Node:
        ino = d.entries.get(name)
        if ino is None:
            raise b.NoEnt(name.decode(), b.Wcc(b.WccAttr.of(d.attr), d.attr))
        return self._nodes[ino]

    async def remove(self, cred, dir_fid, name):
        d = self._dir(dir_fid)
        before = b.WccAttr.of(d.attr)
        if self._child(d, name).attr.type == b.FileType.DIR:
            raise b.IsDir(name.decode(), b.Wcc(before, d.attr))
        self._unlink(d, name)
        return b.Wcc(before, d.attr)

    async def rmdir(self, cred, dir_fid, name):
        d = self._dir(dir_fid)
        before = b.WccAttr.of(d.attr)
        child = self._child(d, name)
        if child.attr.type != b.FileType.DIR:
            raise b.NotDir(name.decode(), b.Wcc(before, d.attr))
        if child.entries:
            raise b.NotEmpty(name.decode(), b.Wcc(before, d.attr))
        self._unlink(d, name)
        self._touch(d, nlink=d.attr.nlink - 1)
        return b.Wcc(before, d.attr)

    async def rename(self, cred, from_dir, from_name, to_dir, to_name):
        fd, td = self._dir(from_dir), self._dir(to_dir)
        fb, tb = b.WccAttr.of(fd.attr), b.WccAttr.of(td.attr)
        ino = self._child(fd, from_name) and fd.entries[from_name]
        if to_name in td.entries:
            self._unlink(td, to_name)
        fd.entries.pop(from_name)
        fd.cookies.pop(from_name)
        self._link(td, to_name, ino)
        return b.RenameResult(b.Wcc(fb, fd.attr), b.Wcc(tb, td.attr))

    async def link(self, cred, fid, dir_fid, name):
        n, d = self._node(fid), self._dir(dir_fid)
        before = b.WccAttr.of(d.attr)
        if name in d.entries:
            raise b.Exists(name.decode(), b.Wcc(before, d.attr))
        self._link(d, name, fid.ino)
        self._touch(n, nlink=n.attr.nlink + 1)
        return b.LinkResult(n.attr, b.Wcc(before, d.attr))

    async def readdir(self, cred, dir_fid, cookie, cookieverf, max_entries, plus):
        d = self._dir(dir_fid)
        if cookie != 0 and cookieverf != _COOKIEVERF:
            raise b.BadCookie("verifier", b.Wcc(after=d.attr))
        named = [(b".", 1, dir_fid.ino), (b"..", 2, d.parent)]
        named += [(nm, d.cookies[nm], ino) for nm, ino in d.entries.items()]
        after = [x for x in named if x[1] > cookie]
        entries = [self._entry(nm, c, ino, plus) for nm, c, ino in after[:max_entries]]
        return b.ReadDirResult(d.attr, _COOKIEVERF, entries, len(after) <= max_entries)

    def _entry(self, name: bytes, cookie: int, ino: int, plus: bool) -> b.DirEntry:
        if not plus:
            return b.DirEntry(ino, name, cookie)
        return b.DirEntry(ino, name, cookie, self._fid(ino), self._nodes[ino].attr)

    async def fsstat(self, fid):
        n = self._node(fid)
        return b.FsStat(1 << 30, 1 << 29, 1 << 29, 1000, 900, 900, 0), n.attr

    async def commit(self, cred, fid, offset, count):
        n = self._node(fid)
        return b.CommitResult(_VERF, b.Wcc(b.WccAttr.of(n.attr), n.attr))
