"""What a listing means for a directory (server/cluster/bucket_listing.py): names, the
directory-wins rule, which entries a listing may touch, and attributes from metadata."""

from __future__ import annotations

import dataclasses

from nfs_gateway.backend import FileType
from server.cluster.bucket import BucketConfig
from server.cluster.bucket_listing import (
    Action,
    Listed,
    add_page,
    confirm,
    diff,
    from_bucket,
    new_attrs,
)
from server.fs.records import Dirent, Inode
from storage.objstore.base import ListPage, ObjectInfo

STORE = 2
D = Inode(ino=10, gen=3, ftype=FileType.DIR, mode=0o755, uid=0, gid=0, size=0, nlink=2,
          rdev=(0, 0), atime_ns=0, mtime_ns=0, ctime_ns=0, parent=1, store=STORE, okey=b"p/")


def obj(key: str, size: int = 1, etag: str = "e1") -> ObjectInfo:
    return ObjectInfo(key, size, etag, 5)


def file_inode(ino: int, name: bytes, etag: bytes = b"e1", **kw: object) -> Inode:
    base = dataclasses.replace(D, ino=ino, ftype=FileType.REG, mode=0o644, nlink=1, parent=0,
                               chunk_size=1 << 20, okey=b"p/" + name, etag=etag, obase=1,
                               size=1)
    return dataclasses.replace(base, **kw)


def dir_inode(ino: int, name: bytes, **kw: object) -> Inode:
    return dataclasses.replace(D, ino=ino, parent=D.ino, okey=b"p/" + name + b"/", **kw)


def test_a_page_gives_files_and_directories_and_skips_what_cannot_be_a_name() -> None:
    listed: dict[bytes, Listed] = {}
    page = ListPage((obj("p/"), obj("p/a", 3), obj("p/x"), obj("p/" + "n" * 300),
                     obj("p/caf\u00e9")), ("p/x/", "p/sub/", "p/./", "p//"), "tok")
    add_page(listed, "p/", page, 255)
    assert sorted(listed) == [b"a", "caf\u00e9".encode(), b"sub", b"x"]
    assert listed[b"a"] == Listed(b"a", b"p/a", False, 3, b"e1", 5)
    assert listed[b"x"] == Listed(b"x", b"p/x/", True)  # object x and prefix x/: the directory
    assert listed[b"sub"].is_dir and listed[b"sub"].key == b"p/sub/"
    # The other order (the prefix on an earlier page): the directory still wins.
    add_page(listed, "p/", ListPage((obj("p/sub"),), (), None), 255)
    assert listed[b"sub"].is_dir


def test_from_bucket_only_entries_of_this_store_at_their_key_with_a_version() -> None:
    f = file_inode(20, b"a")
    assert from_bucket(D, b"a", f)
    assert not from_bucket(D, b"b", f)  # renamed here: its key is another name's
    assert not from_bucket(D, b"a", dataclasses.replace(f, etag=b""))  # made through NFS
    assert not from_bucket(D, b"a", dataclasses.replace(f, inline=True))
    assert not from_bucket(D, b"a", dataclasses.replace(f, store=STORE + 1))
    assert from_bucket(D, b"s", dir_inode(21, b"s"))
    assert not from_bucket(D, b"s", dataclasses.replace(dir_inode(21, b"s"), store=0))


def test_diff_creates_changes_replaces_and_removes_only_what_the_bucket_owns() -> None:
    listed = {
        b"new": Listed(b"new", b"p/new", False, 1, b"e1"),
        b"same": Listed(b"same", b"p/same", False, 1, b"e1"),
        b"changed": Listed(b"changed", b"p/changed", False, 9, b"e2"),
        b"local": Listed(b"local", b"p/local", False, 1, b"e1"),
        b"nowdir": Listed(b"nowdir", b"p/nowdir/", True),
        b"sub": Listed(b"sub", b"p/sub/", True),
    }
    inodes = {
        1: file_inode(1, b"same"), 2: file_inode(2, b"changed"),
        3: file_inode(3, b"local", etag=b""), 4: file_inode(4, b"nowdir"),
        5: dir_inode(5, b"sub"), 6: file_inode(6, b"gone"), 7: file_inode(7, b"mine", etag=b""),
        8: dir_inode(8, b"olddir"),
    }
    names = [b"same", b"changed", b"local", b"nowdir", b"sub", b"gone", b"mine", b"olddir"]
    current = {n: Dirent(i, 10 + i, inodes[i].ftype) for i, n in enumerate(names, start=1)}
    actions = {a.name: a for a in diff(D, listed, current, inodes)}
    assert sorted(actions) == [b"changed", b"gone", b"new", b"nowdir", b"olddir"]
    assert actions[b"new"] == Action(b"new", create=listed[b"new"])
    assert actions[b"changed"].change == listed[b"changed"] and actions[b"changed"].old == inodes[2]
    assert actions[b"nowdir"].create == listed[b"nowdir"] and actions[b"nowdir"].old == inodes[4]
    assert actions[b"gone"] == Action(b"gone", old=inodes[6], old_dirent=current[b"gone"])
    assert actions[b"olddir"].old == inodes[8] and actions[b"olddir"].create is None
    # An entry whose inode could not be read is left alone (a racing change).
    assert diff(D, {}, {b"x": Dirent(99, 3, FileType.REG)}, {}) == []


def test_attributes_from_metadata_else_the_bucket_defaults() -> None:
    bucket = BucketConfig(file_mode=0o640, dir_mode=0o750, uid=5, gid=6)
    f = Listed(b"f", b"p/f", False, 1, b"e", 77)
    a = new_attrs(f, {}, bucket, 1000, 4096)
    assert (a.ftype, a.mode, a.uid, a.gid, a.mtime_ns) == (FileType.REG, 0o640, 5, 6, 77)
    meta = {"mode": str(0o100600), "uid": "1000", "gid": "100", "mtime-ns": "123"}
    a = new_attrs(f, meta, bucket, 1000, 4096)
    assert (a.mode, a.uid, a.gid, a.mtime_ns) == (0o600, 1000, 100, 123)
    bad = {"mode": "rwx", "uid": "-1", "gid": str(1 << 40)}
    a = new_attrs(f, bad, bucket, 1000, 4096)
    assert (a.mode, a.uid, a.gid) == (0o640, 5, 6)
    d = new_attrs(Listed(b"d", b"p/d/", True), {}, bucket, 1000, 4096)
    assert (d.ftype, d.mode, d.mtime_ns) == (FileType.DIR, 0o750, 1000)
    link = new_attrs(f, {"symlink-target": "../a%20b/%C3%A9"}, bucket, 1000, 4096)
    assert (link.ftype, link.target, link.mode) == (FileType.LNK, "../a b/\u00e9".encode(), 0o777)
    assert new_attrs(f, {"symlink-target": "x", "type": "file"}, bucket, 0, 4096).ftype == \
        FileType.REG
    assert new_attrs(f, {"symlink-target": "x" * 10}, bucket, 0, 4).ftype == FileType.REG


def test_from_bucket_never_an_entry_changed_here_and_not_written_back() -> None:
    assert not from_bucket(D, b"a", file_inode(20, b"a", dver=2, cver=1))
    assert from_bucket(D, b"a", file_inode(20, b"a", dver=2, cver=2))


def test_confirm_takes_the_newer_word_of_a_head() -> None:
    f = file_inode(1, b"f")
    ent = Dirent(1, 5, FileType.REG)
    new = Action(b"n", create=Listed(b"n", b"p/n", False, 1, b"e1", 5))
    info = ObjectInfo("p/n", 7, "e9", 9, {"mode": "420"})
    assert confirm(new, None) is None  # deleted since the listing
    assert confirm(new, info) == Action(b"n", create=Listed(b"n", b"p/n", False, 7, b"e9", 9))
    change = Action(b"f", change=Listed(b"f", b"p/f", False, 2, b"e2"), old=f, old_dirent=ent)
    assert confirm(change, ObjectInfo("p/f", 1, "e1", 5)) is None  # the version we have
    assert confirm(change, None) == Action(b"f", old=f, old_dirent=ent)
    got = confirm(change, ObjectInfo("p/f", 3, "e3", 6))
    assert got is not None and got.change == Listed(b"f", b"p/f", False, 3, b"e3", 6)
    gone = Action(b"f", old=f, old_dirent=ent)
    assert confirm(gone, None) == gone
    assert confirm(gone, ObjectInfo("p/f", 1, "e1", 5)) is None  # written again meanwhile
    back = confirm(gone, ObjectInfo("p/f", 4, "e4", 6))
    assert back is not None and back.change == Listed(b"f", b"p/f", False, 4, b"e4", 6)
    link = dataclasses.replace(f, ftype=FileType.LNK, target=b"t")
    again = confirm(Action(b"f", old=link, old_dirent=ent), ObjectInfo("p/f", 0, "e5", 6))
    assert again is not None and again.create is not None and again.old == link
    sub = Action(b"s", create=Listed(b"s", b"p/s/", True))
    assert confirm(sub, None) == sub
