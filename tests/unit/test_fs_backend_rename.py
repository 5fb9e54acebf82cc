"""LocalBackend RENAME (RFC 1813 §3.3.14) and READDIR / READDIRPLUS (§3.3.16, §3.3.17)."""

from __future__ import annotations

import fs_helpers
import pytest
from fs_helpers import ALICE, BOB, ROOT, get, mkfile, names, put

from nfs_gateway.backend import (
    Access,
    BadCookie,
    FileType,
    Inval,
    IsDir,
    NoEnt,
    NotDir,
    NotEmpty,
    SetAttrs,
    Stale,
)

fs, root, home = fs_helpers.fs, fs_helpers.root, fs_helpers.home  # fixtures


async def mkdir(fs, d, name, cred=ROOT):
    return (await fs.mkdir(cred, d, name, SetAttrs(mode=0o755))).fid


# -- rename -----------------------------------------------------------------------------------


async def test_rename_within_a_directory(fs, home):
    f = await mkfile(fs, home, b"a")
    before = await fs.getattr(f)
    res = await fs.rename(ROOT, home, b"a", home, b"b")
    assert res.from_dir_wcc.after.fileid == home.ino
    assert (await fs.lookup(ROOT, home, b"b")).fid == f
    with pytest.raises(NoEnt):
        await fs.lookup(ROOT, home, b"a")
    assert (await fs.getattr(f)).ctime_ns >= before.ctime_ns


async def test_rename_onto_itself_is_a_no_op(fs, home):
    f = await mkfile(fs, home, b"a")
    res = await fs.rename(ROOT, home, b"a", home, b"a")
    assert res.from_dir_wcc.before.mtime_ns == res.from_dir_wcc.after.mtime_ns
    assert (await fs.lookup(ROOT, home, b"a")).fid == f


async def test_rename_between_links_of_one_file_does_nothing(fs, home):
    f = await mkfile(fs, home, b"a")
    await fs.link(ROOT, f, home, b"b")
    await fs.rename(ROOT, home, b"a", home, b"b")  # POSIX: both names stay
    assert sorted(await names(fs, home))[2:] == [b"a", b"b"]
    assert (await fs.getattr(f)).nlink == 2


async def test_rename_onto_an_existing_file_replaces_it(fs, home):
    a = await mkfile(fs, home, b"a")
    b = await mkfile(fs, home, b"b")
    await put(fs, a, 0, b"from a")
    await put(fs, b, 0, b"from b")
    await fs.rename(ROOT, home, b"a", home, b"b")
    assert (await fs.lookup(ROOT, home, b"b")).fid == a
    assert await get(fs, a) == b"from a"
    with pytest.raises(Stale):  # the replaced file lost its only link
        await fs.getattr(b)
    assert not fs._chunks.ino_dir(b.ino).exists()


async def test_replaced_file_with_other_links_survives(fs, home):
    a = await mkfile(fs, home, b"a")
    b = await mkfile(fs, home, b"b")
    await fs.link(ROOT, b, home, b"b2")
    await fs.rename(ROOT, home, b"a", home, b"b")
    assert (await fs.getattr(b)).nlink == 1
    assert (await fs.lookup(ROOT, home, b"b2")).fid == b
    assert (await fs.lookup(ROOT, home, b"b")).fid == a


async def test_rename_directory_across_parents(fs, root, home):
    src = await mkdir(fs, home, b"src")
    dst = await mkdir(fs, root, b"dst")
    moved = await mkdir(fs, src, b"d")
    await mkfile(fs, moved, b"inside")
    n_src, n_dst = (await fs.getattr(src)).nlink, (await fs.getattr(dst)).nlink
    await fs.rename(ROOT, src, b"d", dst, b"e")
    assert (await fs.lookup(ROOT, moved, b"..")).fid == dst  # `..` follows the move
    assert (await fs.getattr(src)).nlink == n_src - 1
    assert (await fs.getattr(dst)).nlink == n_dst + 1
    assert await names(fs, moved) == [b".", b"..", b"inside"]


async def test_rename_directory_onto_empty_directory(fs, home):
    a = await mkdir(fs, home, b"a")
    b = await mkdir(fs, home, b"b")
    n = (await fs.getattr(home)).nlink
    await fs.rename(ROOT, home, b"a", home, b"b")
    assert (await fs.lookup(ROOT, home, b"b")).fid == a
    with pytest.raises(Stale):
        await fs.getattr(b)
    assert (await fs.getattr(home)).nlink == n - 1


async def test_rename_type_and_emptiness_errors(fs, home):
    d = await mkdir(fs, home, b"d")
    full = await mkdir(fs, home, b"full")
    await mkfile(fs, full, b"x")
    await mkfile(fs, home, b"f")
    with pytest.raises(NotDir):
        await fs.rename(ROOT, home, b"d", home, b"f")
    with pytest.raises(IsDir):
        await fs.rename(ROOT, home, b"f", home, b"d")
    with pytest.raises(NotEmpty):
        await fs.rename(ROOT, home, b"d", home, b"full")
    with pytest.raises(NoEnt):
        await fs.rename(ROOT, home, b"missing", home, b"x")
    for bad in (b".", b".."):
        with pytest.raises(Inval):
            await fs.rename(ROOT, home, bad, home, b"x")
        with pytest.raises(Inval):
            await fs.rename(ROOT, home, b"f", home, bad)
    with pytest.raises(NotDir):
        await fs.rename(ROOT, home, b"f", (await fs.lookup(ROOT, home, b"f")).fid, b"x")
    assert (await fs.getattr(d)).type == FileType.DIR


async def test_directory_cannot_move_under_itself(fs, home):
    a = await mkdir(fs, home, b"a")
    b = await mkdir(fs, a, b"b")
    c = await mkdir(fs, b, b"c")
    with pytest.raises(Inval):
        await fs.rename(ROOT, home, b"a", c, b"a")
    with pytest.raises(Inval):
        await fs.rename(ROOT, home, b"a", a, b"self")
    await fs.rename(ROOT, b, b"c", home, b"c")  # moving up is fine
    assert (await fs.lookup(ROOT, c, b"..")).fid == home


async def test_rename_needs_write_permission_on_both_directories(fs, root, home):
    await mkfile(fs, home, b"f", ALICE)
    other = await mkdir(fs, root, b"other")  # root's, 0755
    with pytest.raises(Access):
        await fs.rename(ALICE, home, b"f", other, b"f")
    with pytest.raises(Access):
        await fs.rename(BOB, home, b"f", home, b"g")


# -- readdir ----------------------------------------------------------------------------------


async def test_readdir_pages_with_stable_cookies(fs, home):
    for i in range(25):
        await mkfile(fs, home, b"f%02d" % i)
    res = await fs.readdir(ROOT, home, 0, bytes(8), 10, False)
    assert [e.name for e in res.entries][:2] == [b".", b".."] and not res.eof
    assert [e.cookie for e in res.entries] == sorted(e.cookie for e in res.entries)
    last = res.entries[-1]
    # Entries before and at the cookie vanish; the page after it is unaffected.
    for e in res.entries[2:]:
        await fs.remove(ROOT, home, e.name)
    nxt = await fs.readdir(ROOT, home, last.cookie, res.cookieverf, 100, False)
    assert [e.name for e in nxt.entries] == [b"f%02d" % i for i in range(8, 25)] and nxt.eof
    assert all(e.cookie > last.cookie for e in nxt.entries)


async def test_readdir_plus_carries_handles_and_attributes(fs, root, home):
    f = await mkfile(fs, home, b"f")
    await put(fs, f, 0, b"12345")
    res = await fs.readdir(ROOT, home, 0, bytes(8), 100, True)
    by = {e.name: e for e in res.entries}
    assert by[b"."].fid == home and by[b".."].fid == root
    assert by[b"f"].fid == f and by[b"f"].attr.size == 5
    assert res.dir_attr.fileid == home.ino and res.eof
    plain = await fs.readdir(ROOT, home, 0, bytes(8), 100, False)
    assert {e.name: e.fileid for e in plain.entries}[b".."] == root.ino


async def test_readdir_cookie_verifier_and_bad_cookies(fs, root, home):
    await mkfile(fs, home, b"a")
    res = await fs.readdir(ROOT, home, 0, bytes(8), 2, False)
    cookie = res.entries[-1].cookie
    await fs.readdir(ROOT, home, cookie, res.cookieverf, 10, False)
    await fs.readdir(ROOT, home, cookie, bytes(8), 10, False)  # zeros: client lost its verf
    with pytest.raises(BadCookie):
        await fs.readdir(ROOT, home, cookie, b"\x01" * 8, 10, False)
    with pytest.raises(BadCookie):
        await fs.readdir(ROOT, home, 10**9, res.cookieverf, 10, False)  # never handed out
    f = await mkfile(fs, home, b"f")
    with pytest.raises(NotDir):
        await fs.readdir(ROOT, f, 0, bytes(8), 10, False)
    private = (await fs.mkdir(ROOT, root, b"p", SetAttrs(mode=0o700))).fid
    with pytest.raises(Access):
        await fs.readdir(ALICE, private, 0, bytes(8), 10, False)


async def test_readdir_max_entries_one(fs, home):
    await mkfile(fs, home, b"a")
    seen, cookie, verf = [], 0, bytes(8)
    while True:
        res = await fs.readdir(ROOT, home, cookie, verf, 1, False)
        assert len(res.entries) <= 1
        seen += [e.name for e in res.entries]
        if res.eof:
            break
        cookie, verf = res.entries[-1].cookie, res.cookieverf
    assert seen == [b".", b"..", b"a"]
