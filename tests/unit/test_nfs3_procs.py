"""The NFS version 3 handlers driven through the program table (RFC 1813 §3.3), against the real
single-node backend (server/fs LocalBackend on a temporary directory).

Every reply also goes through the server encoder and the client decoder, so what the tests check
is what a client would read off the wire.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nfs_gateway import backend as b
from nfs_gateway.exports import Export, ExportTable
from nfs_gateway.nfs3 import types as t
from nfs_gateway.nfs3.client_codec import CLIENT_CODECS
from nfs_gateway.nfs3.codec_res import encode_readdir
from nfs_gateway.nfs3.const import FSF3_CANSETTIME, FSF3_LINK, FSF3_SYMLINK, Proc, Stat
from nfs_gateway.nfs3.fhandle import decode_fhandle, encode_fhandle
from nfs_gateway.nfs3.program import Nfs3Config, handle_maker, make_nfs3_program
from nfs_gateway.program import AUTH_SYS, NOT_READY, CallContext
from nfs_gateway.xdr import Packer, Unpacker
from server.fs.backend import LocalBackend

CLIENT = ("127.0.0.1", 800)
ROOT = b.Cred(0, 0)
S = b.SetAttrs()
CONFIG = Nfs3Config(rtmax=4096, wtmax=8192)
RW, RO, LIMITED, OTHER = 1, 2, 3, 4


def _exports() -> ExportTable:
    ten = (ipaddress.ip_network("10.0.0.0/8"),)
    return ExportTable(
        [
            Export("/", RW, root_squash=False),
            Export("/ro", RO, read_only=True, root_squash=False),
            Export("/limited", LIMITED, clients=ten, root_squash=False),
            Export("/other", OTHER, root_squash=False),
        ]
    )


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[b.Backend]:
    async with LocalBackend(tmp_path / "fs") as be:
        yield be


FAST_PATH_CHANGES = {Proc.WRITE}  # their fast path does the call (a small unstable WRITE)


class Client:
    """Calls handlers as the RPC layer would, and reads replies as a client would."""

    def __init__(self, backend: b.Backend, exports: ExportTable) -> None:
        self.backend = backend
        self.exports = exports
        self.procs = make_nfs3_program(backend, exports, CONFIG).procedures[3]
        self.handle_of = handle_maker(backend)
        self.fast_answers = 0

    async def call(self, proc: Proc, args: Any, client: tuple[str, int] = CLIENT) -> Any:
        """The decoded reply. A procedure with a synchronous twin (the fast path) must give
        byte for byte the same reply whenever it answers; one whose fast path changes state
        (WRITE) is not run twice: its fast answer is the reply."""
        p = self.procs[proc]
        ctx = CallContext(client, AUTH_SYS, ROOT, 1)
        fast = NOT_READY if p.handle_nowait is None else p.handle_nowait(ctx, args)
        if fast is not NOT_READY and proc in FAST_PATH_CHANGES:
            self.fast_answers += 1
            res = fast
        else:
            res = await p.handle(ctx, args)
        packer = Packer()
        p.encode(packer, res)
        wire = packer.get_bytes()
        if fast is not NOT_READY and proc not in FAST_PATH_CHANGES:
            fast_packer = Packer()
            p.encode(fast_packer, fast)
            assert fast_packer.get_bytes() == wire, f"{proc.name}: fast path differs"
            self.fast_answers += 1
        u = Unpacker(wire)
        decoded = CLIENT_CODECS[proc][1](u)
        u.done()
        return decoded

    async def root(self, export_id: int = RW) -> bytes:
        export = self.exports.by_id(export_id)
        assert export is not None
        return self.handle_of(export, await self.backend.export_root(export.path))

    async def create(self, d: bytes, name: bytes, how=b.CreateMode.GUARDED, **kw: Any) -> Any:
        return await self.call(Proc.CREATE, t.CreateArgs(t.DirOpArgs(d, name), how, **kw))

    async def mkdir(self, d: bytes, name: bytes) -> Any:
        return await self.call(Proc.MKDIR, t.MkdirArgs(t.DirOpArgs(d, name), S))

    async def write(self, fh: bytes, offset: int, data: bytes, stable=b.StableHow.FILE_SYNC):
        return await self.call(Proc.WRITE, t.WriteArgs(fh, offset, len(data), stable, data))


@pytest.fixture
async def nfs(backend: b.Backend) -> Client:
    root = await backend.export_root("/")
    for name in (b"ro", b"limited", b"other"):
        await backend.mkdir(ROOT, root, name, b.SetAttrs(mode=0o777))
    return Client(backend, _exports())


# --- handles and exports (§2.3.3, exports(5)) -----------------------------------------------


async def test_null_and_getattr(nfs: Client) -> None:
    assert await nfs.call(Proc.NULL, None) is None
    r = await nfs.call(Proc.GETATTR, t.FhArgs(await nfs.root()))
    assert r.status == Stat.OK and r.attr.type == b.FileType.DIR


async def test_malformed_handle_is_badhandle(nfs: Client) -> None:
    r = await nfs.call(Proc.GETATTR, t.FhArgs(b"\x09" * 20))
    assert r.status == Stat.BADHANDLE


async def test_unknown_export_or_fsid_is_stale(nfs: Client) -> None:
    _, fsid, fid = decode_fhandle(await nfs.root())
    for fh in (encode_fhandle(99, fsid, fid), encode_fhandle(RW, fsid + 1, fid)):
        assert (await nfs.call(Proc.GETATTR, t.FhArgs(fh))).status == Stat.STALE


async def test_refused_client_is_acces(nfs: Client) -> None:
    fh = await nfs.root(LIMITED)
    assert (await nfs.call(Proc.GETATTR, t.FhArgs(fh))).status == Stat.ACCES
    assert (await nfs.call(Proc.GETATTR, t.FhArgs(fh), ("10.1.2.3", 700))).status == Stat.OK


async def test_read_only_export_refuses_changes_with_rofs(nfs: Client) -> None:
    ro = await nfs.root(RO)
    assert (await nfs.create(ro, b"f")).status == Stat.ROFS
    assert (await nfs.mkdir(ro, b"d")).status == Stat.ROFS
    assert (await nfs.call(Proc.REMOVE, t.DirOpArgs(ro, b"x"))).status == Stat.ROFS
    sattr = t.SetattrArgs(ro, b.SetAttrs(mode=0o700), None)
    assert (await nfs.call(Proc.SETATTR, sattr)).status == Stat.ROFS
    # The same file through a writable export can be written; through the read-only one not.
    f = (await nfs.create(await nfs.root(), b"shared")).fh
    _, _, fid = decode_fhandle(f)
    ro_f = encode_fhandle(RO, nfs.backend.fsid, fid)
    assert (await nfs.write(ro_f, 0, b"x")).status == Stat.ROFS
    r = await nfs.call(Proc.ACCESS, t.AccessArgs(ro, 0x3F))
    assert r.status == Stat.OK and r.access & 0x1C == 0  # no MODIFY, EXTEND, DELETE


# --- attributes (§3.3.1-§3.3.5) -----------------------------------------------------------------


async def test_setattr_guard_not_sync(nfs: Client) -> None:
    f = (await nfs.create(await nfs.root(), b"g")).fh
    attr = (await nfs.call(Proc.GETATTR, t.FhArgs(f))).attr
    stale = t.SetattrArgs(f, b.SetAttrs(mode=0o600), attr.ctime_ns + 1)
    r = await nfs.call(Proc.SETATTR, stale)
    assert r.status == Stat.NOT_SYNC
    r = await nfs.call(Proc.SETATTR, t.SetattrArgs(f, b.SetAttrs(mode=0o600), attr.ctime_ns))
    assert r.status == Stat.OK and r.wcc.after.mode & 0o7777 == 0o600
    assert r.wcc.before is None or r.wcc.before.ctime_ns == attr.ctime_ns


async def test_setattr_size_truncates(nfs: Client) -> None:
    f = (await nfs.create(await nfs.root(), b"t")).fh
    await nfs.write(f, 0, b"hello world")
    r = await nfs.call(Proc.SETATTR, t.SetattrArgs(f, b.SetAttrs(size=5), None))
    assert r.status == Stat.OK and r.wcc.after.size == 5
    r = await nfs.call(Proc.READ, t.ReadArgs(f, 0, 100))
    assert bytes(r.data) == b"hello" and r.eof


async def test_lookup(nfs: Client) -> None:
    root = await nfs.root()
    f = (await nfs.create(root, b"a")).fh
    r = await nfs.call(Proc.LOOKUP, t.DirOpArgs(root, b"a"))
    assert r.status == Stat.OK and r.fh == f and r.obj_attr.type == b.FileType.REG
    r = await nfs.call(Proc.LOOKUP, t.DirOpArgs(root, b"missing"))
    assert r.status == Stat.NOENT
    assert r.dir_attr is not None and r.dir_attr.type == b.FileType.DIR  # failure arm too
    r = await nfs.call(Proc.LOOKUP, t.DirOpArgs(root, b"n" * 256))
    assert r.status == Stat.NAMETOOLONG
    r = await nfs.call(Proc.LOOKUP, t.DirOpArgs(f, b"x"))
    assert r.status == Stat.NOTDIR


async def test_lookup_dotdot_stays_in_export(nfs: Client) -> None:
    other = await nfs.root(OTHER)
    r = await nfs.call(Proc.LOOKUP, t.DirOpArgs(other, b".."))
    assert r.status == Stat.OK and r.fh == other
    sub = (await nfs.mkdir(other, b"sub")).fh
    r = await nfs.call(Proc.LOOKUP, t.DirOpArgs(sub, b".."))
    assert r.status == Stat.OK and r.fh == other


async def test_access(nfs: Client) -> None:
    r = await nfs.call(Proc.ACCESS, t.AccessArgs(await nfs.root(), b.ACCESS_READ))
    assert r.status == Stat.OK and r.access == b.ACCESS_READ and r.obj_attr is not None


async def test_readlink(nfs: Client) -> None:
    root = await nfs.root()
    r = await nfs.call(Proc.SYMLINK, t.SymlinkArgs(t.DirOpArgs(root, b"l"), S, b"../target"))
    assert r.status == Stat.OK and r.obj_attr.type == b.FileType.LNK
    got = await nfs.call(Proc.READLINK, t.FhArgs(r.fh))
    assert got.status == Stat.OK and got.target == b"../target"
    f = (await nfs.create(root, b"notlink")).fh
    assert (await nfs.call(Proc.READLINK, t.FhArgs(f))).status == Stat.INVAL
    long = t.SymlinkArgs(t.DirOpArgs(root, b"l2"), S, b"x" * 1025)
    assert (await nfs.call(Proc.SYMLINK, long)).status == Stat.NAMETOOLONG


# --- data (§3.3.6, §3.3.7, §3.3.21) --------------------------------------------------------------


async def test_write_read_commit(nfs: Client) -> None:
    f = (await nfs.create(await nfs.root(), b"data")).fh
    w = await nfs.write(f, 0, b"abcdef", b.StableHow.UNSTABLE)
    assert w.status == Stat.OK and w.count == 6 and len(w.verf) == 8
    assert w.committed >= b.StableHow.UNSTABLE and w.wcc.after.size == 6
    w2 = await nfs.write(f, 6, b"gh", b.StableHow.FILE_SYNC)
    assert w2.committed == b.StableHow.FILE_SYNC
    c = await nfs.call(Proc.COMMIT, t.CommitArgs(f, 0, 0))
    assert c.status == Stat.OK and c.verf == w.verf
    r = await nfs.call(Proc.READ, t.ReadArgs(f, 2, 100))
    assert r.status == Stat.OK and bytes(r.data) == b"cdefgh" and r.count == 6 and r.eof
    r = await nfs.call(Proc.READ, t.ReadArgs(f, 0, 3))
    assert bytes(r.data) == b"abc" and not r.eof


async def test_read_and_write_capped_at_rtmax_wtmax(nfs: Client) -> None:
    f = (await nfs.create(await nfs.root(), b"big")).fh
    w = await nfs.write(f, 0, bytes(range(256)) * 40)  # 10240 bytes > wtmax 8192
    assert w.status == Stat.OK and w.count == CONFIG.wtmax
    r = await nfs.call(Proc.READ, t.ReadArgs(f, 0, 1 << 20))
    assert r.count == CONFIG.rtmax and not r.eof


async def test_write_shorter_data_than_count_is_inval(nfs: Client) -> None:
    f = (await nfs.create(await nfs.root(), b"short")).fh
    r = await nfs.call(Proc.WRITE, t.WriteArgs(f, 0, 10, b.StableHow.UNSTABLE, b"abc"))
    assert r.status == Stat.INVAL


async def test_read_of_directory_is_isdir(nfs: Client) -> None:
    r = await nfs.call(Proc.READ, t.ReadArgs(await nfs.root(), 0, 10))
    assert r.status == Stat.ISDIR


# --- namespace (§3.3.8-§3.3.15) ------------------------------------------------------------------


async def test_create_guarded_exists_and_unchecked(nfs: Client) -> None:
    root = await nfs.root()
    first = await nfs.create(root, b"c")
    assert first.status == Stat.OK and first.fh and first.dir_wcc.after is not None
    again = await nfs.create(root, b"c")
    assert again.status == Stat.EXIST
    r = await nfs.create(root, b"c", b.CreateMode.UNCHECKED)
    assert r.status == Stat.OK and r.fh == first.fh


async def test_create_exclusive_retry_with_same_verifier_succeeds(nfs: Client) -> None:
    root = await nfs.root()
    r1 = await nfs.create(root, b"x", b.CreateMode.EXCLUSIVE, verf=b"12345678")
    assert r1.status == Stat.OK
    r2 = await nfs.create(root, b"x", b.CreateMode.EXCLUSIVE, verf=b"12345678")
    assert r2.status == Stat.OK and r2.fh == r1.fh
    r3 = await nfs.create(root, b"x", b.CreateMode.EXCLUSIVE, verf=b"87654321")
    assert r3.status == Stat.EXIST


async def test_mkdir_and_mknod(nfs: Client) -> None:
    root = await nfs.root()
    d = await nfs.mkdir(root, b"dir")
    assert d.status == Stat.OK and d.obj_attr.type == b.FileType.DIR
    assert (await nfs.mkdir(root, b"dir")).status == Stat.EXIST
    fifo = t.MknodArgs(t.DirOpArgs(root, b"fifo"), b.FileType.FIFO, S)
    r = await nfs.call(Proc.MKNOD, fifo)
    assert r.status == Stat.OK and r.obj_attr.type == b.FileType.FIFO
    chr_ = t.MknodArgs(t.DirOpArgs(root, b"tty"), b.FileType.CHR, S, (4, 64))
    r = await nfs.call(Proc.MKNOD, chr_)
    assert r.status == Stat.OK and r.obj_attr.rdev == (4, 64)
    for ftype in (b.FileType.REG, b.FileType.DIR, b.FileType.LNK):
        r = await nfs.call(Proc.MKNOD, t.MknodArgs(t.DirOpArgs(root, b"bad"), ftype))
        assert r.status == Stat.BADTYPE


async def test_remove_makes_handle_stale(nfs: Client) -> None:
    root = await nfs.root()
    f = (await nfs.create(root, b"gone")).fh
    r = await nfs.call(Proc.REMOVE, t.DirOpArgs(root, b"gone"))
    assert r.status == Stat.OK and r.wcc.after is not None
    assert (await nfs.call(Proc.GETATTR, t.FhArgs(f))).status == Stat.STALE
    assert (await nfs.write(f, 0, b"x")).status == Stat.STALE
    assert (await nfs.call(Proc.REMOVE, t.DirOpArgs(root, b"gone"))).status == Stat.NOENT


async def test_remove_rmdir_type_errors_and_notempty(nfs: Client) -> None:
    root = await nfs.root()
    d = (await nfs.mkdir(root, b"d")).fh
    await nfs.create(d, b"inside")
    await nfs.create(root, b"file")
    assert (await nfs.call(Proc.REMOVE, t.DirOpArgs(root, b"d"))).status == Stat.ISDIR
    assert (await nfs.call(Proc.RMDIR, t.DirOpArgs(root, b"file"))).status == Stat.NOTDIR
    r = await nfs.call(Proc.RMDIR, t.DirOpArgs(root, b"d"))
    assert r.status == Stat.NOTEMPTY
    await nfs.call(Proc.REMOVE, t.DirOpArgs(d, b"inside"))
    assert (await nfs.call(Proc.RMDIR, t.DirOpArgs(root, b"d"))).status == Stat.OK


async def test_rename_and_xdev(nfs: Client) -> None:
    root = await nfs.root()
    f = (await nfs.create(root, b"old")).fh
    d = (await nfs.mkdir(root, b"to")).fh
    args = t.RenameArgs(t.DirOpArgs(root, b"old"), t.DirOpArgs(d, b"new"))
    r = await nfs.call(Proc.RENAME, args)
    assert r.status == Stat.OK and r.from_wcc.after is not None and r.to_wcc.after is not None
    got = await nfs.call(Proc.LOOKUP, t.DirOpArgs(d, b"new"))
    assert got.status == Stat.OK and got.fh == f
    other = await nfs.root(OTHER)
    xdev = t.RenameArgs(t.DirOpArgs(d, b"new"), t.DirOpArgs(other, b"n"))
    assert (await nfs.call(Proc.RENAME, xdev)).status == Stat.XDEV


async def test_link(nfs: Client) -> None:
    root = await nfs.root()
    f = (await nfs.create(root, b"orig")).fh
    r = await nfs.call(Proc.LINK, t.LinkArgs(f, t.DirOpArgs(root, b"alias")))
    assert r.status == Stat.OK and r.attr.nlink == 2
    r = await nfs.call(Proc.LINK, t.LinkArgs(f, t.DirOpArgs(root, b"alias")))
    assert r.status == Stat.EXIST


# --- directories (§3.3.16, §3.3.17) --------------------------------------------------------------


async def _fill(nfs: Client, n: int) -> tuple[bytes, set[bytes]]:
    d = (await nfs.mkdir(await nfs.root(), b"many")).fh
    names = {b"file-%03d" % i for i in range(n)}
    for name in sorted(names):
        assert (await nfs.create(d, name)).status == Stat.OK
    return d, names | {b".", b".."}


async def _page(nfs: Client, d: bytes, cookie: int, verf: bytes, count: int) -> t.ReaddirRes:
    return await nfs.call(Proc.READDIR, t.ReaddirArgs(d, cookie, verf, count))


async def test_readdir_pages_with_stable_cookies(nfs: Client) -> None:
    d, names = await _fill(nfs, 30)
    seen: list[t.Entry3] = []
    cookie, verf, eof, calls = 0, bytes(8), False, 0
    while not eof:
        r = await _page(nfs, d, cookie, verf, 300)
        assert r.status == Stat.OK and r.entries
        seen += r.entries
        cookie, verf, eof = r.entries[-1].cookie, r.cookieverf, r.eof
        calls += 1
    assert calls > 3 and {e.name for e in seen} == names and len(seen) == len(names)
    # Stable cookies: resuming from any entry's cookie continues right after it.
    middle = seen[10]
    r = await _page(nfs, d, middle.cookie, verf, 300)
    assert r.entries[0] == seen[11]


async def test_readdir_keeps_to_count_exactly(nfs: Client) -> None:
    d, _ = await _fill(nfs, 30)
    for count in (150, 200, 333, 1000):
        r = await _page(nfs, d, 0, bytes(8), count)
        p = Packer()
        encode_readdir(p, r)
        assert len(p.get_bytes()) <= count


async def test_readdir_too_small(nfs: Client) -> None:
    d, _ = await _fill(nfs, 3)
    r = await _page(nfs, d, 0, bytes(8), 110)  # the fixed part alone is 108 bytes
    assert r.status == Stat.TOOSMALL
    r = await _page(nfs, d, 0, bytes(8), 50)
    assert r.status == Stat.TOOSMALL


async def test_readdirplus_pages_with_handles(nfs: Client) -> None:
    d, names = await _fill(nfs, 12)
    seen: list[t.EntryPlus3] = []
    cookie, verf, eof = 0, bytes(8), False
    while not eof:
        args = t.ReaddirplusArgs(d, cookie, verf, 200, 1000)
        r = await nfs.call(Proc.READDIRPLUS, args)
        assert r.status == Stat.OK and r.entries
        seen += r.entries
        cookie, verf, eof = r.entries[-1].cookie, r.cookieverf, r.eof
    assert {e.name for e in seen} == names
    for e in seen:
        if e.name not in (b".", b".."):
            got = await nfs.call(Proc.GETATTR, t.FhArgs(e.fh))
            assert got.status == Stat.OK and got.attr.fileid == e.attr.fileid == e.fileid
    small = t.ReaddirplusArgs(d, 0, bytes(8), 10, 1000)  # dircount below one entry
    assert (await nfs.call(Proc.READDIRPLUS, small)).status == Stat.TOOSMALL


async def test_readdirplus_dotdot_at_export_root(nfs: Client) -> None:
    other = await nfs.root(OTHER)
    r = await nfs.call(Proc.READDIRPLUS, t.ReaddirplusArgs(other, 0, bytes(8), 4096, 8192))
    dotdot = [e for e in r.entries if e.name == b".."]
    assert dotdot and dotdot[0].fh in (None, other)


# --- file system (§3.3.18-§3.3.20) ---------------------------------------------------------------


async def test_fsstat_fsinfo_pathconf(nfs: Client) -> None:
    root = await nfs.root()
    r = await nfs.call(Proc.FSSTAT, t.FhArgs(root))
    assert r.status == Stat.OK and r.stat.tbytes >= r.stat.fbytes >= r.stat.abytes
    r = await nfs.call(Proc.FSINFO, t.FhArgs(root))
    assert r.status == Stat.OK and r.info.rtmax == CONFIG.rtmax and r.info.wtmax == CONFIG.wtmax
    assert r.info.time_delta_ns == 1 and r.info.dtpref == 64 * 1024
    props = FSF3_LINK | FSF3_SYMLINK | FSF3_CANSETTIME
    assert r.info.properties & props == props
    r = await nfs.call(Proc.PATHCONF, t.FhArgs(root))
    assert r.status == Stat.OK and r.conf.name_max == 255 and r.conf.no_trunc
    assert not r.conf.case_insensitive and r.conf.case_preserving


def test_default_config_advertises_one_mib() -> None:
    c = Nfs3Config()
    assert c.rtmax == c.wtmax == c.rtpref == c.wtpref == 1 << 20


async def test_non_idempotent_procedures_are_marked(backend: b.Backend) -> None:
    procs = make_nfs3_program(backend, _exports()).procedures[3]
    changing = {Proc.CREATE, Proc.MKDIR, Proc.SYMLINK, Proc.MKNOD, Proc.REMOVE, Proc.RMDIR}
    changing |= {Proc.RENAME, Proc.LINK}
    assert {Proc(n) for n, p in procs.items() if not p.idempotent} == changing
    assert len(procs) == 22


async def test_udp_caps_read_and_fsinfo(nfs: Client) -> None:
    config = Nfs3Config(udp_xfer_max=1024)
    procs = make_nfs3_program(nfs.backend, nfs.exports, config).procedures[3]
    f = (await nfs.create(await nfs.root(), b"udp")).fh
    await nfs.write(f, 0, bytes(3000))
    ctx = CallContext(CLIENT, AUTH_SYS, ROOT, 1, "udp")
    r = await procs[Proc.READ].handle(ctx, t.ReadArgs(f, 0, 3000))
    assert r.status == Stat.OK and r.count == 1024
    r = await procs[Proc.FSINFO].handle(ctx, t.FhArgs(f))
    assert r.info.rtmax == r.info.wtmax == r.info.rtpref == r.info.wtpref == 1024


class _WithoutFastPath:
    """The Backend protocol only: what a backend without the *_nowait methods looks like."""

    def __init__(self, inner: LocalBackend) -> None:
        self._inner = inner
        self.fsid = inner.fsid

    def __getattr__(self, name: str) -> Any:
        if name.endswith("_nowait"):
            raise AttributeError(name)
        return getattr(self._inner, name)


async def test_fast_path_is_used_for_cached_metadata_and_pages(backend):
    c = Client(backend, _exports())
    root = await c.root()
    made = await c.create(root, b"f")
    fh = made.fh
    await c.call(Proc.WRITE, t.WriteArgs(fh, 0, 5, b.StableHow.FILE_SYNC, memoryview(b"hello")))
    before = c.fast_answers
    await c.call(Proc.GETATTR, t.FhArgs(fh))
    await c.call(Proc.LOOKUP, t.DirOpArgs(root, b"f"))
    await c.call(Proc.LOOKUP, t.DirOpArgs(root, b"missing"))
    await c.call(Proc.LOOKUP, t.DirOpArgs(root, b".."))  # learns the export's root: async
    await c.call(Proc.LOOKUP, t.DirOpArgs(root, b".."))
    await c.call(Proc.ACCESS, t.AccessArgs(fh, 0x3F))
    res = await c.call(Proc.READ, t.ReadArgs(fh, 0, 100))
    assert bytes(res.data) == b"hello"
    assert c.fast_answers - before == 6
    # A small UNSTABLE WRITE is done from memory too; a FILE_SYNC one needs its fsync.
    await c.call(Proc.WRITE, t.WriteArgs(fh, 5, 1, b.StableHow.UNSTABLE, memoryview(b"!")))
    await c.call(Proc.WRITE, t.WriteArgs(fh, 6, 1, b.StableHow.FILE_SYNC, memoryview(b"?")))
    assert c.fast_answers - before == 7
    res = await c.call(Proc.READ, t.ReadArgs(fh, 0, 100))
    assert bytes(res.data) == b"hello!?"


async def test_a_backend_without_the_fast_path_still_serves(backend):
    c = Client(_WithoutFastPath(backend), _exports())  # type: ignore[arg-type]
    assert c.procs[Proc.GETATTR].handle_nowait is None
    assert c.procs[Proc.READ].handle_nowait is None
    root = await c.root()
    made = await c.create(root, b"f")
    res = await c.call(Proc.GETATTR, t.FhArgs(made.fh))
    assert res.status == Stat.OK
    assert c.fast_answers == 0
