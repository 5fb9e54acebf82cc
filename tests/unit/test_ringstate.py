"""The state-machine side of a ring change (server/cluster/ringstate.py) on a real LevelDB and
chunk directory: which keys leave a group, the freeze, imports, the purge at install and the
rollback at abort."""

from __future__ import annotations

from pathlib import Path

import pytest

from nfs_gateway.backend import FileType
from server.cluster import ringstate
from server.cluster.nodelist import NodeInfo, NodeList
from server.fs import keys, record_codec, records
from server.fs.records import ChunkWrite, CreateInode, Inode, KeyHold, SetAttr
from storage.chunks import ChunkStore
from storage.kv import KvStore

VNODES = 64
CHUNK = 1 << 16


def nodelist(version: int, groups: list[int]) -> NodeList:
    return NodeList(version, tuple(NodeInfo(g, g, f"127.0.0.1:{7000 + g}", f"127.0.0.1:{8000 + g}")
                                   for g in groups))


def inode(ino: int, ftype: FileType = FileType.REG, size: int = 0, **kw) -> Inode:
    return Inode(ino, 1, ftype, 0o644, 0, 0, size, 1, (0, 0), 0, 0, 0, chunk_size=CHUNK, **kw)


@pytest.fixture
def group1(tmp_path: Path):
    kv = KvStore.open_sync(tmp_path / "kv")
    chunks = ChunkStore(tmp_path / "chunks")
    kv.write_sync([(b"sm.nodelist", nodelist(1, [1]).encode())], sync=False)
    yield kv, chunks
    chunks.close_sync()
    kv.close_sync()


def apply(kv: KvStore, chunks: ChunkStore, entry=None, install: NodeList | None = None,
          group: int = 1) -> ringstate.RingApply:
    step = ringstate.RingApply(kv, chunks, group, VNODES)
    if install is not None:
        step.writes[b"sm.nodelist"] = install.encode()
        step.install(install.encode())
    else:
        step.apply(entry)
    kv.write_sync(step.writes.items(), sync=False)
    return step


def fill(kv: KvStore, chunks: ChunkStore, inos: range) -> None:
    """Files with a dirent in the root, one materialized chunk 0 and one chunk 1 each, a
    dirty mark; plus the root of store 3 and a key-table row."""
    rows: list[tuple[bytes, bytes]] = [
        (keys.inode_key(1), record_codec.encode(inode(1, ftype=FileType.DIR, store=3,
                                                  etag=ringstate.ROOT_MARK))),
        (keys.bucket_key(3, b"some/key"), b"\x82\x05\x01"),
    ]
    for ino in inos:
        rows += [(keys.inode_key(ino), record_codec.encode(inode(ino, size=2 * CHUNK))),
                 (keys.dirent_key(1, f"f{ino}".encode()), b"x"),
                 (keys.dirty_key(ino), b""),
                 (keys.materialized_key(ino, 0), keys.u64(1)),
                 (keys.materialized_key(ino, 1), keys.u64(1))]
        for index in (0, 1):
            chunks.put_chunk_file_sync(ino, index, bytes([ino % 251, index]) * 100)
    rows.append((keys.INODE_COUNT, keys.u64(len(inos) + 1)))
    kv.write_sync(rows, sync=False)


def owned(kv: KvStore, ring, group: int) -> set[bytes]:
    roots = ringstate.store_roots(kv)
    return {k for _, k, _ in ringstate.leaving(kv, ring, group, roots)}


def test_a_join_freezes_what_moves_and_the_install_keeps_only_what_stays(group1):
    kv, chunks = group1
    fill(kv, chunks, range(100, 160))
    new = nodelist(2, [1, 2])
    ring = new.ring(VNODES)
    moving = owned(kv, ring, 1)
    assert moving  # with 60 files, some keys move to group 2, and not all
    assert len(moving) < 60 * 5

    apply(kv, chunks, ringstate.encode_prepare(new.encode(), b"id-1"))
    freeze = ringstate.load_freeze(kv, VNODES)
    assert freeze is not None and freeze.change_id == b"id-1" and not freeze.exported
    mover = next(i for i in range(100, 160) if ring.group_of_inode(i) == 2)
    assert not freeze.frozen and not freeze.blocks((SetAttr(mover, 0, mode=0o600),))
    apply(kv, chunks, ringstate.encode_freeze(b"id-1"))  # after the pre-copy
    freeze = ringstate.load_freeze(kv, VNODES)
    assert freeze is not None and freeze.frozen
    stayer = next(i for i in range(100, 160) if ring.group_of_inode(i) == 1 and all(
        ring.group_of_chunk(i, x) == 1 for x in (0, 1)))
    assert mover in freeze.inos and stayer not in freeze.inos
    assert freeze.blocks((SetAttr(mover, 0, mode=0o600),))
    assert not freeze.blocks((SetAttr(stayer, 0, mode=0o600),))
    # A new inode that the new ring places elsewhere may not be made here meanwhile.
    new_ino = next(i for i in range(10_000, 20_000) if ring.group_of_inode(i) == 2)
    assert freeze.blocks((CreateInode(new_ino, 1, FileType.REG, 0o644, 0, 0, 1, 0),))
    assert freeze.blocks((ChunkWrite(mover, 0, 0, b"x", CHUNK),))
    # The store's root moved or not: its key table follows it.
    assert freeze.blocks((KeyHold(3, b"k", 5),)) == (ring.group_of_inode(1) == 2)

    # A second prepare (another attempt) while one is pending changes nothing.
    apply(kv, chunks, ringstate.encode_prepare(nodelist(2, [1, 3]).encode(), b"id-2"))
    assert ringstate.load_freeze(kv, VNODES).change_id == b"id-1"
    apply(kv, chunks, ringstate.encode_exported(b"id-2"))  # not this attempt's: ignored
    assert not ringstate.load_freeze(kv, VNODES).exported
    apply(kv, chunks, ringstate.encode_exported(b"id-1"))
    assert ringstate.load_freeze(kv, VNODES).hides(mover)

    apply(kv, chunks, install=new)
    assert ringstate.load_freeze(kv, VNODES) is None
    left = {k for k, _ in kv.iterate_sync(prefix=b"fs.")}
    assert not (left & moving)
    assert kv.get_sync(keys.inode_key(stayer)) is not None
    assert kv.get_sync(keys.inode_key(mover)) is None
    assert not chunks.chunk_path(mover, 0).exists()  # its materialized chunk went with it
    assert chunks.chunk_path(stayer, 0).exists()
    stayed = sum(1 for i in [1, *range(100, 160)] if ring.group_of_inode(i) == 1)
    assert int.from_bytes(kv.get_sync(keys.INODE_COUNT), "big") == stayed


def test_imports_are_kept_at_install_and_dropped_at_abort(tmp_path: Path):
    kv = KvStore.open_sync(tmp_path / "kv")
    chunks = ChunkStore(tmp_path / "chunks")
    try:  # group 2 is joining: it has no NodeList yet
        new = nodelist(2, [1, 2])
        ring = new.ring(VNODES)
        ino = next(i for i in range(100, 1000) if ring.group_of_inode(i) == 2)
        items = [(keys.inode_key(ino), record_codec.encode(inode(ino, size=10))),
                 (keys.materialized_key(ino, 0), keys.u64(1))]
        for change_id, end in ((b"a", "abort"), (b"b", "install")):
            apply(kv, chunks, ringstate.encode_prepare(new.encode(), change_id), group=2)
            apply(kv, chunks, ringstate.encode_import(b"other", items, []), group=2)
            assert kv.get_sync(keys.inode_key(ino)) is None  # another attempt's import
            apply(kv, chunks, ringstate.encode_import(change_id, items, [(ino, 0, b"bytes")]),
                  group=2)
            assert kv.get_sync(keys.inode_key(ino)) is not None
            assert chunks.chunk_path(ino, 0).read_bytes() == b"bytes"
            if end == "abort":
                apply(kv, chunks, ringstate.encode_abort(change_id), group=2)
                assert kv.get_sync(keys.inode_key(ino)) is None  # a joiner owns nothing yet
                assert not chunks.chunk_path(ino, 0).exists()
            else:
                apply(kv, chunks, install=new, group=2)
                assert kv.get_sync(keys.inode_key(ino)) is not None
                assert chunks.chunk_path(ino, 0).read_bytes() == b"bytes"
                assert int.from_bytes(kv.get_sync(keys.INODE_COUNT), "big") == 1
            assert ringstate.load_freeze(kv, VNODES) is None
    finally:
        chunks.close_sync()
        kv.close_sync()


def test_a_group_that_leaves_keeps_nothing(group1):
    kv, chunks = group1
    fill(kv, chunks, range(100, 110))
    kv.write_sync([(b"sm.nodelist", nodelist(2, [1, 2]).encode())], sync=False)
    apply(kv, chunks, install=nodelist(3, [2]))
    assert kv.iterate_sync(prefix=keys.INODE) == []
    assert kv.iterate_sync(prefix=keys.BUCKET_KEY) == []
    assert not chunks.chunk_path(100, 1).exists()


def test_the_guard_refuses_records_the_ring_places_elsewhere() -> None:
    ring = nodelist(2, [1, 2]).ring(VNODES)
    guard = ringstate.Guard(ring, 1, None)
    here = next(i for i in range(100, 1000) if ring.group_of_inode(i) == 1)
    there = next(i for i in range(100, 1000) if ring.group_of_inode(i) == 2)
    assert guard((SetAttr(here, 0, mode=0o600),)) is None
    assert guard((SetAttr(there, 0, mode=0o600),)) == ringstate.MISPLACED
    far = next(x for x in range(1, 100) if ring.group_of_chunk(here, x) == 2)
    assert guard((ChunkWrite(here, far, 0, b"x", CHUNK),)) == ringstate.MISPLACED
    assert guard((records.Multi((ChunkWrite(here, 0, 0, b"x", CHUNK),)),)) is None
    assert guard((KeyHold(3, b"k", there),)) is None  # placed by its store's root
    assert guard((records.ChunkTrim(there, CHUNK, 0),)) is None  # goes to every chunk group


def test_pre_copied_bytes_are_kept_when_an_import_claims_them_and_dropped_otherwise(
        tmp_path: Path):
    kv = KvStore.open_sync(tmp_path / "kv")
    chunks = ChunkStore(tmp_path / "chunks")
    try:  # group 2 is joining
        new = nodelist(2, [1, 2])
        ring = new.ring(VNODES)
        a, b = [i for i in range(100, 1000) if ring.group_of_inode(i) == 2][:2]
        for change_id, end in ((b"x", "abort"), (b"y", "install")):
            apply(kv, chunks, ringstate.encode_prepare(new.encode(), change_id), group=2)
            apply(kv, chunks, ringstate.encode_stage(change_id, [(a, 0, 3, b"A" * 10),
                                                                 (b, 0, 1, b"B" * 10)]), group=2)
            assert chunks.chunk_path(a, 0).read_bytes() == b"A" * 10
            # The final pass brings a's mark without its bytes (staged at that version); b was
            # deleted at the source meanwhile, so nothing claims its bytes.
            apply(kv, chunks, ringstate.encode_import(change_id, [
                (keys.inode_key(a), record_codec.encode(inode(a, size=10))),
                (keys.materialized_key(a, 0), keys.u64(3))], []), group=2)
            if end == "abort":
                apply(kv, chunks, ringstate.encode_abort(change_id), group=2)
                assert not chunks.chunk_path(a, 0).exists()
            else:
                apply(kv, chunks, install=new, group=2)
                assert chunks.chunk_path(a, 0).read_bytes() == b"A" * 10
            assert not chunks.chunk_path(b, 0).exists()
            assert kv.iterate_sync(prefix=ringstate.STAGED) == []
    finally:
        chunks.close_sync()
        kv.close_sync()
