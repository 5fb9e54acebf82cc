"""What a drain must find in the bucket (server/cluster/drain_check.py), the write fence
(server/cluster/fence.py) and when a drain's write-back counts as stalled (drain.py)."""

from __future__ import annotations

import dataclasses

import pytest
import trio
import trio.testing

from nfs_gateway.backend import FileType, Jukebox
from server.cluster import drain
from server.cluster.drain import Drains
from server.cluster.drain_check import (
    LIST_MIN,
    Expected,
    Problem,
    expected_objects,
    is_marker,
    key_of,
    listings,
    mismatch,
    parent_prefix,
)
from server.cluster.fence import WriteFence, fenced
from server.cluster.flush import RoundResult
from server.fs.keytable import KEY_CLAIMED, KEY_DELETE, KEY_HELD, KEY_LIVE
from server.fs.records import Inode

S = 7  # a store id


def ino(n: int, parent: int, name: bytes, ftype: FileType = FileType.REG, *, store: int = S,
        dver: int = 1, cver: int = 1, okey: bytes | None = None, etag: bytes = b"e",
        size: int = 10) -> Inode:
    return Inode(ino=n, gen=1, ftype=ftype, mode=0o644, uid=0, gid=0, size=size, nlink=1,
                 rdev=(0, 0), atime_ns=0, mtime_ns=0, ctime_ns=0, parent=parent, pname=name,
                 store=store, okey=name if okey is None else okey, etag=etag, dver=dver,
                 cver=cver)


ROOT = ino(1, 1, b"", FileType.DIR, dver=0, cver=0, okey=b"", etag=b"")


def tree(*inodes: Inode) -> dict[int, Inode]:
    return {i.ino: i for i in (ROOT, *inodes)}


def test_a_clean_tree_is_a_list_of_objects_to_head() -> None:
    d = ino(2, 1, b"d", FileType.DIR, okey=b"d/", etag=b"m", size=4096)
    f = ino(3, 2, b"f", okey=b"d/f", etag=b"abc", size=123)
    link = ino(4, 2, b"l", FileType.LNK, okey=b"d/l", etag=b"m", size=9)
    cold = ino(5, 2, b"cold", dver=0, cver=0, okey=b"d/cold")  # the bucket's own
    objects, problems = expected_objects(tree(d, f, link, cold), {S: 1}, {S: {}})
    assert problems == []
    assert objects == [Expected(S, 2, b"d/", 0, "m"), Expected(S, 3, b"d/f", 123, "abc"),
                       Expected(S, 4, b"d/l", 0, "m")]


def test_what_stands_in_the_way_of_exiting_is_listed_with_why() -> None:
    d = ino(2, 1, b"d", FileType.DIR, okey=b"d/")
    dirty = ino(3, 2, b"dirty", dver=3, cver=2, okey=b"d/dirty")
    unknown = ino(4, 1, b"new", dver=1, cver=0, okey=b"")
    moved = ino(5, 2, b"moved", okey=b"old")  # clean, yet recorded at another key
    outside = ino(6, 1, b"x", store=0)
    unnamed = ino(7, 0, b"", okey=b"")  # removed while referenced: nothing to hold
    tables = {S: {b"d/dirty": (3, KEY_CLAIMED), b"gone": (9, KEY_DELETE),
                  b"held/": (10, KEY_HELD), b"d/": (2, KEY_LIVE), b"odd": (11, KEY_CLAIMED)}}
    objects, problems = expected_objects(
        tree(d, dirty, unknown, moved, outside, unnamed), {S: 1}, tables,
        {3: "StoreUnavailable: SlowDown"})
    assert objects == [Expected(S, 2, b"d/", 0, "e")]
    assert problems == [
        Problem(S, 3, b"d/dirty", "StoreUnavailable: SlowDown"),
        Problem(S, 4, b"new", "not written back (still dirty)"),
        Problem(S, 5, b"d/moved", "the bucket holds it at 'old'"),
        Problem(0, 6, None, "in no bucket: it would be lost"),
        Problem(S, 9, b"gone", "it is still to be deleted from the bucket"),
        Problem(S, 10, b"held/", "a moved file or directory still holds it"),
        Problem(S, 11, b"odd", "an upload to it was not confirmed"),
    ]


def test_directories_above_a_store_root_are_not_lost() -> None:
    top = ino(2, 1, b"exports", FileType.DIR, store=0)
    root = ino(3, 2, b"data", FileType.DIR, okey=b"")
    f = ino(4, 3, b"f", okey=b"f")
    bare = dataclasses.replace(ROOT, store=0)
    inodes = {1: bare, 2: top, 3: root, 4: f}
    objects, problems = expected_objects(inodes, {S: 3}, {S: {}})
    assert problems == [] and objects == [Expected(S, 4, b"f", 10, "e")]
    _, nothing = expected_objects(inodes, {}, {})
    assert {p.ino for p in nothing} == {1, 2, 3, 4}  # no bucket at all: everything is lost


def test_keys_follow_the_names_up_to_the_store_root() -> None:
    a = ino(2, 1, b"a b", FileType.DIR)
    b = ino(3, 2, "\u00e9".encode(), FileType.DIR)
    f = ino(4, 3, b"f")
    orphan = ino(5, 99, b"lost")  # its directory is not in the state
    inodes = tree(a, b, f, orphan)
    memo: dict[int, bytes | None] = {1: b""}
    assert key_of(f, inodes, 1, memo) == "a b/\u00e9/f".encode()
    assert memo[3] == "a b/\u00e9/".encode()
    assert key_of(b, inodes, 1, memo) == "a b/\u00e9/".encode()
    assert key_of(orphan, inodes, 1, memo) is None
    assert key_of(ROOT, inodes, 1, {}) == b""


def test_directories_with_many_objects_are_listed_the_rest_headed() -> None:
    many = [Expected(S, 10 + i, b"d/f%d" % i, 1, "e") for i in range(LIST_MIN)]
    few = [Expected(S, 1, b"x", 1, "e"), Expected(S, 2, b"d/", 0, "e"),
           Expected(S, 3, b"e/g", 1, "e")]
    assert listings(many + few) == [(S, b"d/")]
    assert [parent_prefix(k) for k in (b"x", b"d/", b"d/f", b"a/b/")] == [b"", b"", b"d/", b"a/"]
    e = Expected(S, 1, b"x", 5, "abc")
    assert mismatch(e, 5, "abc") is None
    assert mismatch(e, None, "") == "missing from the bucket"
    assert mismatch(e, 4, "abc") == "the bucket's object has 4 bytes, the file 5"
    assert mismatch(e, 5, "abd") == "the bucket's object has ETag abd, the cluster wrote abc"
    # A marker present only implicitly (SeaweedFS's ETag for it) is a mismatch, which the
    # drain repairs for directories' markers only.
    empty = "d41d8cd98f00b204e9800998ecf8427e"
    marker = Expected(S, 2, b"d/", 0, empty)
    assert mismatch(marker, 0, empty + "-0") is not None
    assert is_marker(marker, ino(2, 1, b"d", FileType.DIR))
    assert not is_marker(marker, ino(2, 1, b"d", FileType.REG))
    assert not is_marker(Expected(S, 3, b"link", 0, empty), ino(3, 1, b"link", FileType.LNK))


# -- the fence ---------------------------------------------------------------------------------


class _Backend:
    def __init__(self) -> None:
        self.fence = WriteFence()
        self.gate = trio.Event()

    @fenced
    async def write(self) -> str:
        await self.gate.wait()
        return "written"


async def test_a_fence_refuses_changes_until_lifted_or_lapsed() -> None:
    f = WriteFence()
    assert not f.closed(0.0)
    f.hold(1, until=10.0)
    f.hold(2, until=20.0)
    with pytest.raises(Jukebox), f.passing(5.0):
        pass
    f.release(1)
    assert f.closed(15.0)  # drain 2 still holds it
    assert not f.closed(20.0)  # its lease lapsed: a dead coordinator does not fence forever
    f.close_for_good()
    assert f.closed(1e9)


async def test_the_fence_waits_for_changes_that_passed_before_it() -> None:
    b = _Backend()
    idle = False

    async def wait() -> None:
        nonlocal idle
        await b.fence.wait_idle()
        idle = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(b.write)
        await trio.testing.wait_all_tasks_blocked()
        assert b.fence.in_flight == 1
        b.fence.hold(1, until=trio.current_time() + 60)
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        assert not idle
        with pytest.raises(Jukebox):  # a new change is refused meanwhile
            await b.write()
        b.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert idle and b.fence.in_flight == 0


class _StuckFlusher:
    """Every write-back round leaves one file dirty, failed with `refused` (flush.RoundResult)."""

    def __init__(self, refused: bool) -> None:
        self.refused, self.rounds = refused, 0

    async def round(self, store: int, *, force: bool, res: RoundResult) -> None:
        self.rounds += 1
        res.dirty_left = 1
        res.failed[7] = (b"k", "a reason", self.refused)

    def uploading(self, store: int) -> bool:
        return False


@pytest.mark.parametrize("refused", [True, False])
async def test_a_drain_reports_a_refusal_at_once_and_waits_out_other_stalls(
        refused, autojump_clock):
    # FINDINGS.md 16: a round that met only a group catching up (not the store's refusal)
    # is no verdict: the drain retries for STALL_WAIT_S; the store's refusals are final.
    drains = object.__new__(Drains)
    drains.flusher = _StuckFlusher(refused)
    job = drain._Job(drain_id=1)
    start = trio.current_time()
    await drains._flush_store(job, store=1)
    waited = trio.current_time() - start
    if refused:
        assert drains.flusher.rounds == drain.STALLED_ROUNDS
        assert waited < 1.0
    else:
        assert waited >= drain.STALL_WAIT_S
        assert drains.flusher.rounds > drain.STALL_WAIT_S / drain.ROUND_PAUSE_S / 2
    assert job.why_dirty == {7: "a reason"}
