"""queries.answer: the group's read handlers over the applied state (server/cluster/queries.py),
with the real FsApplication/TxnState over MemKv and a real ChunkStore."""

from __future__ import annotations

import pytest

from nfs_gateway.backend import FileType
from server.cluster import fsops, queries
from server.cluster import protocol as p
from server.fs import record_codec as codec
from server.fs import records as r
from server.rpc.frames import RemoteError
from storage.chunks import ChunkStore
from txn.ids import txn_id
from txn.kv import MemKv, Overlay
from txn.records import TxnLocal, TxnPrepare
from txn.state import TxnState

CS = 4096


class Store:
    def __init__(self, tmp_path) -> None:
        self.kv = MemKv()
        self.app = fsops.FsApplication()
        self.state = TxnState(self.app)
        self.chunks = ChunkStore(tmp_path)
        self.n = 0
        self.run(r.CreateInode(1, 3, FileType.DIR, 0o755, 0, 0, 2, 1, parent=1))

    def run(self, *recs: object) -> None:
        self.n += 1
        self.apply(TxnLocal(txn_id(1, self.n), fsops.encode_ops(recs)))

    def apply(self, record: object) -> None:
        batch = Overlay(self.kv)
        self.state.apply(record, batch, batch)
        fsops.perform_effects_sync(self.app.take_effects(), self.chunks)
        batch.commit()

    def ask(self, request: object) -> object:
        return queries.answer(request, self.kv, self.chunks, 1)


def file_recs(ino: int, name: bytes, size: int = 0) -> list[object]:
    return [r.CreateInode(ino, 1, FileType.REG, 0o644, 0, 0, 1, 5, chunk_size=CS, size=size),
            r.LinkDirent(1, name, ino, FileType.REG, 5)]


def test_get_inodes_and_lookup(tmp_path) -> None:
    s = Store(tmp_path)
    s.run(*file_recs(10, b"a"), r.LinkDirent(1, b"far", 99, FileType.REG, 5))
    got = s.ask(p.GetInodes(0, (10, 1, 55)))
    assert [codec.decode(x).ino if x else None for x in got.inodes] == [10, 1, None]
    look = s.ask(p.Lookup(0, 1, b"a"))
    assert codec.decode(look.dir).ino == 1 and codec.decode(look.dirent).ino == 10
    assert codec.decode(look.child).ino == 10
    far = s.ask(p.Lookup(0, 1, b"far"))  # the child lives in another group
    assert codec.decode(far.dirent).ino == 99 and far.child == b""
    assert s.ask(p.Lookup(0, 1, b"none")) == p.LookupReply(look.dir, b"", b"")
    assert s.ask(p.Lookup(0, 77, b"a")) == p.LookupReply(b"", b"", b"")


class Ranged:
    """A view with the range scan the LevelDB view offers."""

    def __init__(self, kv: MemKv) -> None:
        self.kv_ = kv
        self.get = kv.get
        self.scan = kv.scan

    def scan_from(self, prefix: bytes, start: bytes, limit: int):
        return [(k, v) for k, v in self.kv_.scan(prefix, 1 << 20) if k >= start][:limit]


@pytest.mark.parametrize("ranged", [False, True])
def test_read_dir_pages_resume_after_a_cookie(tmp_path, ranged: bool) -> None:
    s = Store(tmp_path)
    for i in range(5):
        s.run(*file_recs(10 + i, b"f%d" % i))
    s.run(r.UnlinkDirent(1, b"f1", 6), r.AdjustLinks(11, -1, 6))
    view = Ranged(s.kv) if ranged else s.kv
    first = queries.answer(p.ReadDir(0, 1, 0, 2), view, s.chunks, 1)
    assert [e[1] for e in first.entries] == [b"f0", b"f2"] and not first.eof
    rest = queries.answer(p.ReadDir(0, 1, first.entries[-1][0], 10), view, s.chunks, 1)
    assert [e[1] for e in rest.entries] == [b"f3", b"f4"] and rest.eof
    assert rest.entries[0][2:] == (13, int(FileType.REG))
    assert s.ask(p.ReadDir(0, 42, 0, 10)) == p.ReadDirReply(b"", (), True)


def test_read_head_inline_and_chunk_zero_clipped_to_the_size(tmp_path) -> None:
    s = Store(tmp_path)
    s.run(*file_recs(10, b"small"), r.WriteInline(10, 0, b"hello", 5))
    s.run(r.SetAttr(10, 6, size=8))  # grown: the tail reads as zeros
    head = s.ask(p.ReadHead(0, 10, 3, 100))
    assert codec.decode(head.inode).size == 8 and head.data == b"lo\0\0\0"
    s.run(*file_recs(20, b"big"), r.ChunkWrite(20, 0, 0, b"x" * CS, CS),
          r.WriteMeta(20, CS + 10, 7))
    head = s.ask(p.ReadHead(0, 20, CS - 2, 100))
    assert head.data == b"xx"  # the rest lives at chunk 1's group
    assert s.ask(p.ReadHead(0, 20, CS + 1, 5)).data == b""
    assert s.ask(p.ReadHead(0, 99, 0, 5)) == p.ReadHeadReply(b"", data=b"")


def test_read_chunk_holes_read_as_zeros(tmp_path) -> None:
    s = Store(tmp_path)
    s.run(r.ChunkWrite(30, 2, 5, b"abc", CS))
    assert s.ask(p.ReadChunk(0, 30, 2, 4, 6)).data == b"\0abc\0\0"
    assert s.ask(p.ReadChunk(0, 30, 3, 0, 4)).data == bytes(4)


def test_fs_stat_counts_this_groups_inodes(tmp_path) -> None:
    s = Store(tmp_path)
    s.run(*file_recs(10, b"a"))
    st = s.ask(p.FsStatRequest(0))
    assert st.inodes == 2 and st.total_bytes >= st.free_bytes > 0


def test_reads_of_an_inode_a_prepared_txn_holds_are_refused(tmp_path) -> None:
    s = Store(tmp_path)
    s.run(*file_recs(10, b"a"))
    ops = fsops.encode_ops([r.SetAttr(10, 9, mode=0o600)])
    s.apply(TxnPrepare(txn_id(5, 5), 2, (1,), (10,), ops))
    for req in (p.GetInodes(0, (10,)), p.Lookup(0, 1, b"a"), p.ReadHead(0, 10, 0, 1),
                p.ReadChunk(0, 10, 1, 0, 1)):
        with pytest.raises(RemoteError) as e:
            s.ask(req)
        assert e.value.code == p.UNAVAILABLE
    assert s.ask(p.GetInodes(0, (1,))).inodes[0]  # others are served
