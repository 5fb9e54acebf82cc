"""The state machine (server/fs/state.py) on its own, and namespace invariants (server/fs/fsck.py)
after random operation sequences through LocalBackend."""

from __future__ import annotations

import pytest
from fs_helpers import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfs_gateway.backend import CreateMode, FileType, FsError, SetAttrs, StableHow
from server.fs import fsck, keys
from server.fs.backend import LocalBackend
from server.fs.changes import FIRST_COOKIE, Changes, StateError
from server.fs.keys import decode_u64
from server.fs.record_codec import decode
from server.fs.records import (
    AdjustLinks,
    CreateInode,
    Dirent,
    Inode,
    LinkDirent,
    Multi,
    SetAttr,
    UnlinkDirent,
    WriteMeta,
)
from server.fs.state import apply


class DictView:
    """A View over a plain dict of LevelDB items, applying batches like LevelDB would."""

    def __init__(self) -> None:
        self.items: dict[bytes, bytes] = {}

    def inode(self, ino: int) -> Inode | None:
        raw = self.items.get(keys.inode_key(ino))
        return None if raw is None else decode(raw)

    def dirent(self, dir_ino: int, name: bytes) -> Dirent | None:
        raw = self.items.get(keys.dirent_key(dir_ino, name))
        return None if raw is None else decode(raw)

    def meta_int(self, key: bytes) -> int:
        return decode_u64(self.items.get(key))

    def run(self, record: object, index: int) -> Changes:
        changes = Changes()
        apply(record, self, changes, index)
        for k, v in changes.batch():
            if v is None:
                self.items.pop(k, None)
            else:
                self.items[k] = v
        return changes


def root_record() -> CreateInode:
    return CreateInode(1, 9, FileType.DIR, 0o755, 0, 0, 2, 100, parent=1)


def create(ino: int, name: bytes, ftype=FileType.REG, parent=1, t=200) -> Multi:
    nlink = 2 if ftype == FileType.DIR else 1
    p = parent if ftype == FileType.DIR else 0
    return Multi(
        (
            CreateInode(ino, 1, ftype, 0o644, 5, 6, nlink, t, parent=p, chunk_size=4096),
            LinkDirent(parent, name, ino, ftype, t),
        )
    )


def test_create_link_unlink_and_the_applied_index():
    v = DictView()
    v.run(root_record(), 1)
    v.run(create(2, b"a"), 2)
    v.run(create(3, b"d", FileType.DIR), 3)
    root = v.inode(1)
    assert root.nlink == 3 and root.next_cookie == FIRST_COOKIE + 2 and root.mtime_ns == 200
    assert v.dirent(1, b"a") == Dirent(2, FIRST_COOKIE, FileType.REG)
    assert v.meta_int(keys.APPLIED_INDEX) == 3 and v.meta_int(keys.NEXT_INO) == 4
    assert v.meta_int(keys.INODE_COUNT) == 3
    c = v.run(Multi((UnlinkDirent(1, b"a", 300), AdjustLinks(2, -1, 300))), 4)
    assert c.delete_data == {2: 0} and v.inode(2) is None and c.inodes[2] is None
    assert v.inode(1).next_cookie == FIRST_COOKIE + 2  # cookies are never reused
    assert fsck.check(v.items.items()) == []


def test_apply_is_deterministic():
    recs = [root_record(), create(2, b"a"), WriteMeta(2, 10, 500), SetAttr(2, 600, size=4)]
    a, b = DictView(), DictView()
    for i, r in enumerate(recs, 1):
        a.run(r, i)
        b.run(r, i)
    assert a.items == b.items


def test_sizes_and_data_effects():
    v = DictView()
    v.run(root_record(), 1)
    v.run(create(2, b"a"), 2)
    v.run(WriteMeta(2, 100, 300, clear_suid=False), 3)
    v.run(WriteMeta(2, 50, 301), 4)  # a write below EOF never shrinks the file
    assert v.inode(2).size == 100 and v.inode(2).mtime_ns == 301
    c = v.run(SetAttr(2, 400, size=10), 5)
    assert c.trim_data == {2: (4096, 10)}
    c = v.run(SetAttr(2, 401, size=1000), 6)
    assert c.trim_data == {2: (4096, 10)}  # growing cuts at the old size: stale bytes go
    assert v.inode(2).size == 1000 and v.inode(2).ctime_ns == 401


@pytest.mark.parametrize(
    "record",
    [
        LinkDirent(1, b"a", 2, FileType.REG, 1),  # name exists
        UnlinkDirent(1, b"missing", 1),
        LinkDirent(2, b"x", 2, FileType.REG, 1),  # 2 is not a directory
        AdjustLinks(2, -2, 1),  # below zero
        AdjustLinks(99, 1, 1),  # no such inode
        SetAttr(1, 1, size=0),  # size of a directory
        CreateInode(2, 1, FileType.REG, 0, 0, 0, 1, 1),  # exists
    ],
)
def test_records_that_do_not_fit_are_state_errors(record):
    v = DictView()
    v.run(root_record(), 1)
    v.run(create(2, b"a"), 2)
    with pytest.raises(StateError):
        v.run(record, 3)


def test_fsck_finds_broken_link_counts():
    v = DictView()
    v.run(root_record(), 1)
    v.run(create(2, b"a"), 2)
    v.run(AdjustLinks(2, 1, 5), 3)  # a link count without a name
    assert any("nlink 2, 1 entries" in p for p in fsck.check(v.items.items()))


# -- random operations through the backend keep the invariants ------------------------------

NAMES = [b"a", b"b", b"c"]
op = st.tuples(
    st.sampled_from(
        ["create", "mkdir", "link", "remove", "rmdir", "rename", "symlink", "write", "truncate"]
    ),
    st.integers(0, 3),  # directory slot
    st.sampled_from(NAMES),
    st.integers(0, 3),  # second directory slot
    st.sampled_from(NAMES),
)


async def run_op(fs: LocalBackend, dirs: list, o) -> None:
    kind, d1, n1, d2, n2 = o
    a, b = dirs[d1 % len(dirs)], dirs[d2 % len(dirs)]
    if kind == "create":
        await fs.create(ROOT, a, n1, CreateMode.UNCHECKED, SetAttrs(mode=0o644), None)
    elif kind == "mkdir":
        dirs.append((await fs.mkdir(ROOT, a, n1, SetAttrs())).fid)
    elif kind == "symlink":
        await fs.symlink(ROOT, a, n1, b"t", SetAttrs())
    elif kind == "link":
        await fs.link(ROOT, (await fs.lookup(ROOT, a, n1)).fid, b, n2)
    elif kind in ("write", "truncate"):
        f = (await fs.lookup(ROOT, a, n1)).fid
        offset = [0, 100, 20_000, 70_000][d2]
        if kind == "truncate":
            await fs.setattr(ROOT, f, SetAttrs(size=offset), None)
        else:
            data = b"w" * (10 if n2 == b"a" else 30_000)
            await fs.write(ROOT, f, offset, memoryview(data), StableHow.UNSTABLE)
            assert (await fs.getattr(f)).size >= offset + len(data)
    elif kind == "remove":
        await fs.remove(ROOT, a, n1)
    elif kind == "rmdir":
        await fs.rmdir(ROOT, a, n1)
    else:
        await fs.rename(ROOT, a, n1, b, n2)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(op, min_size=5, max_size=60))
def test_random_namespace_operations_keep_the_invariants(tmp_path_factory, ops):
    import trio

    path = tmp_path_factory.mktemp("fsck")

    async def main():
        async with LocalBackend(path) as fs:
            dirs = [await fs.export_root("/")]
            for o in ops:
                try:
                    await run_op(fs, dirs, o)
                except FsError:
                    pass  # refused operations must leave no trace either
            await fs._flush(sync=False)  # pending WRITE sizes into LevelDB, as close() does
            items = await fs.kv.iterate(prefix=b"fs.", limit=100_000)
            stored = fs._chunks.stored_inodes_sync()
        assert fsck.check(items) == []
        inodes = {i.ino: i for i in (decode(v) for k, v in items if k.startswith(keys.INODE))}
        for ino in stored:  # chunk files only for chunked files with bytes
            assert ino in inodes and not inodes[ino].inline and inodes[ino].size > 0

    trio.run(main)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_concurrent_random_operations_keep_the_invariants(tmp_path, seed):
    """Tasks race on one small namespace: locks must neither deadlock nor let a change slip
    between its checks and its commit."""
    import random

    import trio

    rng = random.Random(seed)
    kinds = ["create", "mkdir", "link", "remove", "rmdir", "rename", "write", "truncate"]
    async with LocalBackend(tmp_path, chunk_size=64 << 10) as fs:
        dirs = [await fs.export_root("/")]

        async def worker(ops):
            for o in ops:
                try:
                    await run_op(fs, dirs, o)
                except FsError:
                    pass

        plans = [
            [
                (
                    rng.choice(kinds),
                    rng.randrange(4),
                    rng.choice(NAMES),
                    rng.randrange(4),
                    rng.choice(NAMES),
                )
                for _ in range(60)
            ]
            for _ in range(6)
        ]
        with trio.fail_after(60):
            async with trio.open_nursery() as n:
                for plan in plans:
                    n.start_soon(worker, plan)
        await fs._flush(sync=False)
        items = await fs.kv.iterate(prefix=b"fs.", limit=100_000)
    assert fsck.check(items) == [], f"seed {seed}"
