"""Write-back lanes (server/cluster/flush_batch.py): which files go in a lane, how lanes are cut,
and the PutObjects messages on the wire."""

from __future__ import annotations

from types import SimpleNamespace

from nfs_gateway.backend import FileType
from server.cluster import protocol as p
from server.cluster.flush import Flusher
from server.cluster.flush_batch import LANE_BYTES, LANE_FILES, lane_fits
from server.cluster.ring import Ring
from server.fs.records import Inode
from server.rpc import codec

CHUNK = 16 << 20


def inode(ino: int, size: int = 1000, **kw: object) -> Inode:
    fields: dict = dict(ino=ino, gen=1, ftype=FileType.REG, mode=0o644, uid=0, gid=0,
                        size=size, nlink=1, rdev=(0, 0), atime_ns=0, mtime_ns=0, ctime_ns=0,
                        chunk_size=CHUNK, store=1, pname=b"f", dver=2, cver=1, cdirty=True)
    fields.update(kw)
    return Inode(**fields)


def flusher(groups: tuple[int, ...] = (1, 2, 3)) -> Flusher:
    # _lanes reads only the ring of the backend: a namespace with one is enough here.
    return Flusher(SimpleNamespace(ring=Ring(groups, 1)))  # type: ignore[arg-type]


def test_a_lane_takes_only_what_one_put_object_would_upload() -> None:
    assert lane_fits(inode(1))
    assert lane_fits(inode(1, size=CHUNK))
    assert lane_fits(inode(1, size=100, inline=True))
    assert not lane_fits(inode(1, size=CHUNK + 1))  # multipart
    assert not lane_fits(inode(1, ftype=FileType.DIR))  # a marker
    assert not lane_fits(inode(1, ftype=FileType.LNK))
    # Unchanged bytes of a bucket object: copied inside the store, never read.
    assert not lane_fits(inode(1, cdirty=False, okey=b"a", etag=b"e"))
    assert lane_fits(inode(1, cdirty=True, okey=b"a", etag=b"e"))


def test_lanes_hold_files_of_one_group_within_their_bounds() -> None:
    f = flusher()
    items = [(inode(i), f"k{i}".encode()) for i in range(1, 200)]
    items.append((inode(500, ftype=FileType.DIR), b"d/"))
    items.append((inode(501, size=CHUNK + 1), b"big"))
    alone, lanes = f._lanes(items)
    assert [key for _, key in alone] == [b"d/", b"big"]
    laned = [key for _, files in lanes for _, key in files]
    assert sorted(laned) == sorted(key for _, key in items[:199])  # each file once
    for group, files in lanes:
        assert 1 <= len(files) <= LANE_FILES
        assert all(f.b.ring.group_of_inode(i.ino) == group for i, _ in files)
    assert {g for g, _ in lanes} == {1, 2, 3}
    # Lanes are cut full: per group, at most one lane is not.
    for g in (1, 2, 3):
        assert sum(len(files) < LANE_FILES for group, files in lanes if group == g) <= 1


def test_lanes_are_cut_by_bytes_too() -> None:
    f = flusher(groups=(1,))
    size = LANE_BYTES // 3
    items = [(inode(i, size=size), f"k{i}".encode()) for i in range(1, 8)]
    _, lanes = f._lanes(items)
    assert [len(files) for _, files in lanes] == [3, 3, 1]
    assert all(sum(i.size for i, _ in files) <= LANE_BYTES for _, files in lanes)


def test_put_objects_messages_round_trip() -> None:
    put = p.PutObject(0, 7, 3, 1, b"a/b", (("mode", "33188"), ("uid", "0")))
    req = p.PutObjects(5, (put, put))
    assert codec.decode(codec.encode(req)) == req
    reply = p.PutObjectsReply((p.PutReply(True, "e1", 10, 2), p.PutReply(False, "", 0)),
                              (("", ""), (p.STORE_FAILED, "PUT 'a/b': AccessDenied")))
    assert codec.decode(codec.encode(reply)) == reply
