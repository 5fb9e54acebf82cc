"""fsops: the txn Application over the fs state machine (server/cluster/fsops.py), with the real
TxnState over MemKv and a real ChunkStore."""

from __future__ import annotations

import cbor2
import pytest

from nfs_gateway.backend import FileType
from server.cluster import fsops
from server.fs import keys
from server.fs import record_codec as codec
from server.fs import records as r
from storage.chunks import ChunkStore
from txn.ids import txn_id
from txn.kv import MemKv, Overlay
from txn.records import COMMITTED, CONFLICT, Outcome, TxnLocal, TxnPrepare
from txn.state import LocalApplied, TxnState

CS = 4096
T = [txn_id(9, i) for i in range(20)]


class Group:
    def __init__(self) -> None:
        self.kv = MemKv()
        self.app = fsops.FsApplication()
        self.state = TxnState(self.app)
        self.n = 0

    def run(self, *recs: object) -> Outcome:
        self.n += 1
        batch = Overlay(self.kv)
        res = self.state.apply(TxnLocal(T[self.n], fsops.encode_ops(recs)), batch, batch)
        batch.commit()
        assert isinstance(res, LocalApplied)
        return res.outcome

    def inode(self, ino: int) -> r.Inode | None:
        raw = self.kv.get(keys.inode_key(ino))
        return None if raw is None else codec.decode(raw)


def mkroot(g: Group) -> None:
    batch = Overlay(g.kv)
    g.state.apply(TxnLocal(txn_id(b"root", 0), fsops.root_ops(7, 1, 0o755, 0, 0)), batch, batch)
    batch.commit()


def mkfile(ino: int, name: bytes, parent: int = 1) -> tuple[object, object]:
    return (r.CreateInode(ino, 1, FileType.REG, 0o644, 0, 0, 1, 5, chunk_size=CS),
            r.LinkDirent(parent, name, ino, FileType.REG, 5))


def mkdir(ino: int, name: bytes, parent: int = 1) -> tuple[object, object]:
    return (r.CreateInode(ino, 1, FileType.DIR, 0o755, 0, 0, 2, 5, parent=parent),
            r.LinkDirent(parent, name, ino, FileType.DIR, 5))


def test_root_ops_make_inode_1_its_own_parent() -> None:
    g = Group()
    mkroot(g)
    root = g.inode(1)
    assert root is not None and root.parent == 1 and root.nlink == 2 and root.gen == 7
    assert root.ftype == FileType.DIR and root.mode == 0o755


def test_ops_round_trip_and_locks_are_the_sorted_owners() -> None:
    recs = (r.LinkDirent(9, b"a", 30, FileType.REG, 1), r.AdjustLinks(30, 1, 1),
            r.ChunkWrite(12, 2, 0, b"x", CS), r.ExpectInode(9, parent=1),
            r.UnlinkDirent(9, b"b", 1, expect_ino=4))
    ops = fsops.encode_ops(recs)
    assert fsops.decode_ops(ops) == recs
    assert fsops.FsApplication().locks_of(ops) == (9, 12, 30)


def test_check_reasons() -> None:
    g = Group()
    mkroot(g)
    assert g.run(*mkfile(10, b"f")) == COMMITTED
    assert g.run(*mkdir(11, b"d")) == COMMITTED
    assert g.run(*mkfile(12, b"g", parent=11)) == COMMITTED
    assert g.run(r.LinkDirent(1, b"f", 10, FileType.REG, 6)) == Outcome(False, fsops.EEXIST)
    assert g.run(r.UnlinkDirent(1, b"nope", 6)) == Outcome(False, fsops.ENOENT)
    assert g.run(r.UnlinkDirent(1, b"f", 6, expect_ino=99)) == Outcome(False, fsops.STALE)
    assert g.run(r.ExpectInode(11, empty=True)) == Outcome(False, fsops.ENOTEMPTY)
    assert g.run(r.ExpectInode(11, parent=5)) == Outcome(False, fsops.STALE)
    assert g.run(r.ExpectInode(10, nlink=2)) == Outcome(False, fsops.STALE)
    assert g.run(r.ExpectInode(77)) == Outcome(False, fsops.ENOENT)
    assert g.app.check(b"garbage", g.kv) == fsops.INVALID
    # A refused batch changed nothing, and a removal inside the batch empties the directory.
    assert g.inode(10) is not None and g.inode(10).nlink == 1
    assert g.run(r.UnlinkDirent(11, b"g", 7, expect_ino=12), r.AdjustLinks(12, -1, 7),
                 r.ExpectInode(11, empty=True), r.UnlinkDirent(1, b"d", 7),
                 r.AdjustLinks(11, -2, 7)) == COMMITTED
    assert g.inode(11) is None and g.inode(12) is None and g.inode(1).nlink == 2


def test_a_prepared_txn_locks_its_inodes_against_local_ones() -> None:
    g = Group()
    mkroot(g)
    g.run(*mkfile(10, b"f"))
    batch = Overlay(g.kv)
    ops = fsops.encode_ops([r.AdjustLinks(10, 1, 9)])
    g.state.apply(TxnPrepare(T[15], 2, (1,), (10,), ops), batch, batch)
    batch.commit()
    assert g.run(r.SetAttr(10, 9, mode=0o600)) == Outcome(False, CONFLICT)
    assert g.run(r.SetAttr(1, 9, mode=0o700)) == COMMITTED  # other inodes are free


def test_data_effects_in_order_and_performed_on_a_chunk_store(tmp_path) -> None:
    g = Group()
    mkroot(g)
    g.run(*mkfile(10, b"f"))
    assert g.app.take_effects() == []
    g.run(r.ChunkWrite(10, 0, 100, b"abc", CS), r.ChunkWrite(10, 1, 0, b"xyz", CS),
          r.WriteMeta(10, CS + 3, 8))
    g.run(r.SetAttr(10, 9, size=CS + 1))
    effects = g.app.take_effects()
    assert [type(e).__name__ for e in effects] == ["WriteEffect", "WriteEffect", "TrimEffect"]
    assert g.app.take_effects() == []
    chunks = ChunkStore(tmp_path)
    fsops.perform_effects_sync(effects, chunks)
    fsops.perform_effects_sync(effects, chunks)  # a replay after a crash: same result
    assert chunks.pread_sync(10, CS, 100, 3) == b"abc"
    assert chunks.pread_sync(10, CS, CS, 3) == b"x\0\0"
    g.run(r.UnlinkDirent(1, b"f", 10), r.AdjustLinks(10, -1, 10))
    fsops.perform_effects_sync(g.app.take_effects(), chunks)
    assert chunks.stored_inodes_sync() == []


def test_chunk_records_at_a_chunk_group_and_uninline_to_chunk_zero(tmp_path) -> None:
    g = Group()
    mkroot(g)
    g.run(r.ChunkWrite(40, 3, 10, b"far", CS))  # a chunk group holds no inode 40
    g.run(r.ChunkTrim(40, CS, 3 * CS + 11))
    g.run(r.ChunkDelete(41))
    chunks = ChunkStore(tmp_path)
    fsops.perform_effects_sync(g.app.take_effects(), chunks)
    assert chunks.pread_sync(40, CS, 3 * CS + 10, 3) == b"f\0\0"
    g.run(*mkfile(10, b"f"))
    g.run(r.WriteInline(10, 0, b"small", 3))
    g.run(r.UnInline(10, to_chunk=True), r.ChunkWrite(10, 0, 5, b"!", CS), r.WriteMeta(10, 6, 4))
    fsops.perform_effects_sync(g.app.take_effects(), chunks)
    assert chunks.pread_sync(10, CS, 0, 6) == b"small!"
    inode = g.inode(10)
    assert inode is not None and not inode.inline and inode.size == 6
    assert g.kv.get(keys.inline_key(10)) is None


def test_chunk_write_past_its_chunk_is_refused() -> None:
    g = Group()
    assert g.run(r.ChunkWrite(10, 0, CS - 1, b"ab", CS)) == Outcome(False, fsops.STALE)


@pytest.mark.parametrize("rec", [
    r.ChunkWrite(1, 2, 3, b"d", 4096), r.ChunkTrim(1, 4096, 5), r.ChunkDelete(3),
    r.ExpectInode(4, 5, 1, 2, 3, True), r.UnlinkDirent(1, b"a", 2, 9), r.UnInline(3, True),
])
def test_new_records_round_trip(rec: object) -> None:
    assert codec.decode(codec.encode(rec)) == rec


def test_records_without_new_fields_keep_their_encoding() -> None:
    assert codec.encode(r.UnlinkDirent(1, b"a", 2)) == codec.encode(r.UnlinkDirent(1, b"a", 2, 0))
    longer = codec.encode(r.UnlinkDirent(1, b"a", 2, 5))
    assert len(longer) > len(codec.encode(r.UnlinkDirent(1, b"a", 2)))


def test_a_key_hold_planned_before_a_write_back_mark_is_refused() -> None:
    # Regression (fault campaign, tests/faults/FINDINGS.md 5): a RENAME read the file while
    # its object was at "d/f1" and committed after the write-back had marked it clean at
    # "c/f5" (and released "d/f1"): its KeyHold held "d/f1" for good, and a file made at
    # that name later was never written back. The plan now expects the object key it read.
    g = Group()
    mkroot(g)
    assert g.run(*mkfile(10, b"f1")) == COMMITTED
    assert g.run(r.SetClean(10, g.inode(10).dver, b"d/f1", b"e1", 0)) == COMMITTED
    read_then = g.inode(10).okey
    assert g.run(r.SetName(10, 1, b"f5", 6)) == COMMITTED  # the first rename (dver moves)
    assert g.run(r.SetClean(10, g.inode(10).dver, b"c/f5", b"e2", 0)) == COMMITTED
    stale = (r.SetName(10, 1, b"f6", 7), r.ExpectInode(10, okey=read_then, has_okey=True),
             r.KeyHold(1, read_then, 10))
    assert g.run(*stale) == Outcome(False, fsops.STALE)
    assert g.kv.get(keys.bucket_key(1, b"d/f1")) is None  # nothing held at the old name
    fresh = (r.SetName(10, 1, b"f6", 7), r.ExpectInode(10, okey=b"c/f5", has_okey=True),
             r.KeyHold(1, b"c/f5", 10))
    assert g.run(*fresh) == COMMITTED
    assert g.kv.get(keys.bucket_key(1, b"c/f5")) is not None
    # A file never written back has no object key: b"" is what is expected then.
    assert g.run(*mkfile(11, b"g")) == COMMITTED
    assert g.run(r.ExpectInode(11, okey=b"", has_okey=True)) == COMMITTED


def test_expect_inode_keeps_its_earlier_encoding_without_an_object_key() -> None:
    # Records already in logs decode as before, and one without the new fields encodes as
    # before (transaction ids are derived from encoded records).
    old = r.ExpectInode(9, parent=1)
    assert len(cbor2.loads(codec.encode(old))[2]) == 6
    new = r.ExpectInode(9, okey=b"k", has_okey=True)
    assert codec.decode(codec.encode(new)) == new and codec.decode(codec.encode(old)) == old


def version(g: Group, key: bytes) -> int:
    raw = g.kv.get(key)
    return 0 if raw is None else int.from_bytes(raw, "big")


def test_a_delayed_unpin_never_matches_bytes_written_after_a_truncate() -> None:
    # Regression (fault campaign, tests/faults/FINDINGS.md 6): write-back read chunk 0 at
    # version 1 and uploaded it; before its Unpin applied, the file was truncated to 0 (the
    # mark goes) and written again, which counted from 1 again. The late Unpin(version 1)
    # then made the new bytes a clean copy of the old object, and eviction dropped them: an
    # acknowledged write read back as zeros. Versions now never repeat in a group.
    g = Group()
    mkroot(g)
    assert g.run(*mkfile(10, b"f")) == COMMITTED
    mark = keys.materialized_key(10, 0)
    assert g.run(r.ChunkWrite(10, 0, 0, b"old bytes", CS)) == COMMITTED
    uploaded = version(g, mark)
    assert uploaded >= 1
    assert g.run(r.ChunkTrim(10, CS, 0)) == COMMITTED  # O_TRUNC
    assert not version(g, mark)
    assert g.run(r.ChunkWrite(10, 0, 0, b"new bytes", CS)) == COMMITTED
    assert version(g, mark) != uploaded
    assert g.run(r.Unpin(10, 0, uploaded, b"etag-of-old")) == COMMITTED
    assert version(g, mark), "the new bytes must stay pinned"
    # The same after an unpin that did apply: the next write gets a version never used.
    now = version(g, mark)
    assert g.run(r.Unpin(10, 0, now, b"etag-new")) == COMMITTED
    assert not version(g, mark)
    assert g.run(r.ChunkWrite(10, 0, 0, b"newer", CS)) == COMMITTED
    assert version(g, mark) not in (uploaded, now)
    assert g.run(r.Unpin(10, 0, uploaded, b"etag-of-old")) == COMMITTED
    assert version(g, mark)


def test_removing_the_last_link_drops_the_chunk_marks_too() -> None:
    # Found with the fault campaign (tests/faults/FINDINGS.md 7): a file's last unlink
    # deleted its chunk files in its own group but left their materialized marks, one key
    # per chunk ever written, for good (352 of 381 marks after a 60 s campaign).
    g = Group()
    mkroot(g)
    assert g.run(*mkfile(10, b"f")) == COMMITTED
    assert g.run(r.ChunkWrite(10, 0, 0, b"a" * CS, CS), r.ChunkWrite(10, 1, 0, b"b", CS)
                 ) == COMMITTED
    assert version(g, keys.materialized_key(10, 0)) and version(
        g, keys.materialized_key(10, 1))
    assert g.run(r.UnlinkDirent(1, b"f", 5, expect_ino=10), r.AdjustLinks(10, -1, 5)
                 ) == COMMITTED
    assert g.inode(10) is None
    assert g.kv.scan(keys.materialized_prefix(10), 10) == []


def test_fsck_reports_chunk_marks_of_inodes_that_do_not_exist() -> None:
    from server.cluster import fsck
    from server.cluster.nodelist import NodeInfo, NodeList

    g = Group()
    mkroot(g)
    assert g.run(*mkfile(10, b"f")) == COMMITTED
    assert g.run(r.ChunkWrite(10, 0, 0, b"a", CS)) == COMMITTED
    nodes = NodeList(1, (NodeInfo(1, 1, "127.0.0.1:1", "127.0.0.1:2"),))
    assert fsck.check({1: g.kv.scan(b"fs.", 1000)}, nodes, 8) == []
    g.kv.put(keys.materialized_key(77, 3), keys.u64(5))  # what the leak left behind
    assert fsck.check({1: g.kv.scan(b"fs.", 1000)}, nodes, 8) == [
        "chunk marks of 1 inodes that do not exist (first: [77])"]


def test_a_truncate_in_the_inodes_own_group_drops_and_bumps_marks_like_a_chunk_trim() -> None:
    # Found with the fault campaign (tests/faults/FINDINGS.md 7): SETATTR's size in the
    # inode's group trimmed the chunk files but left the marks of the chunks past the new
    # size (and a file truncated to 0 and written inline again kept them for good), and the
    # chunk the new size falls in kept its version, so a write-back's Unpin of the bytes
    # before the truncate still matched it.
    g = Group()
    mkroot(g)
    assert g.run(*mkfile(10, b"f")) == COMMITTED
    assert g.run(r.ChunkWrite(10, 0, 0, b"a" * CS, CS), r.ChunkWrite(10, 1, 0, b"b" * CS, CS),
                 r.WriteMeta(10, 2 * CS, 5)) == COMMITTED
    before = version(g, keys.materialized_key(10, 0))
    assert g.run(r.SetAttr(10, 6, size=100)) == COMMITTED
    assert not version(g, keys.materialized_key(10, 1))
    assert version(g, keys.materialized_key(10, 0)) not in (0, before)
    assert g.run(r.SetAttr(10, 7, size=0)) == COMMITTED
    assert g.kv.scan(keys.materialized_prefix(10), 10) == []


def test_a_write_based_on_an_object_version_the_file_left_is_refused() -> None:
    # Regression (fault campaign, tests/faults/FINDINGS.md 9): a gateway whose memory of
    # materialized chunks was lost (its node restarted) read chunk 0's base while the chunk
    # was materialized past the file's obase (bytes written after a truncate) and got only
    # obase bytes. Before its WRITE applied, write-back marked the file clean (obase = the new
    # object's size) and unpinned the chunk, so the MaterializeChunk applied: the bytes past
    # the old obase read back as zeros. The WRITE now expects the version it read at.
    g = Group()
    mkroot(g)
    assert g.run(*mkfile(10, b"f")) == COMMITTED
    assert g.run(r.ChunkWrite(10, 0, 0, b"a" * 100, CS), r.WriteMeta(10, 100, 5)) == COMMITTED
    assert g.run(r.SetClean(10, g.inode(10).dver, b"f", b"etag-1", 100)) == COMMITTED
    assert g.run(r.SetAttr(10, 6, size=40)) == COMMITTED  # obase 40
    assert g.run(r.ChunkWrite(10, 0, 40, b"b" * 60, CS), r.WriteMeta(10, 100, 7)) == COMMITTED
    read_at = g.inode(10)
    assert (read_at.etag, read_at.obase) == (b"etag-1", 40)
    base = b"a" * 40  # what the gateway read: the chunk clipped at obase
    # Write-back uploads the 100 bytes, marks the file clean, unpins the chunk.
    assert g.run(r.SetClean(10, read_at.dver, b"f", b"etag-2", 100)) == COMMITTED
    assert g.run(r.Unpin(10, 0, version(g, keys.materialized_key(10, 0)), b"etag-2")
                 ) == COMMITTED
    assert g.run(r.ExpectInode(10, etag=read_at.etag, obase=read_at.obase),
                 r.MaterializeChunk(10, 0, CS, base), r.ChunkWrite(10, 0, 20, b"c", CS),
                 r.WriteMeta(10, 21, 8)) != COMMITTED
    assert g.inode(10).obase == 100 and not version(g, keys.materialized_key(10, 0))
    # Read again at the version the file has now, the same WRITE commits.
    now = g.inode(10)
    assert g.run(r.ExpectInode(10, etag=now.etag, obase=now.obase),
                 r.MaterializeChunk(10, 0, CS, b"a" * 40 + b"b" * 60),
                 r.ChunkWrite(10, 0, 20, b"c", CS), r.WriteMeta(10, 21, 8)) == COMMITTED


def test_a_write_planned_before_the_file_was_marked_clean_is_refused() -> None:
    # Regression (fault campaign, tests/faults/FINDINGS.md 13): a WRITE planned while the
    # file had no object (its chunk 0 the file's own bytes: no base needed) applied after
    # write-back had marked the file clean and unpinned the chunk, which was then only a clean
    # copy of the object; a full cache disk evicted that copy on a replica, and the write
    # kept zeros where the object's bytes were. A chunk WRITE now expects the object version
    # (none) it was planned at.
    g = Group()
    mkroot(g)
    assert g.run(*mkfile(10, b"f")) == COMMITTED
    assert g.run(r.ChunkWrite(10, 0, 0, b"a" * 100, CS), r.WriteMeta(10, 100, 5)) == COMMITTED
    read_at = g.inode(10)
    assert read_at.etag == b""
    assert g.run(r.SetClean(10, read_at.dver, b"f", b"etag-1", 100)) == COMMITTED
    assert g.run(r.Unpin(10, 0, version(g, keys.materialized_key(10, 0)), b"etag-1")
                 ) == COMMITTED
    assert not version(g, keys.materialized_key(10, 0))  # a clean copy: evictable
    planned = (r.ChunkWrite(10, 0, 50, b"c" * 100, CS), r.WriteMeta(10, 150, 8))
    assert g.run(r.ExpectInode(10, etag=read_at.etag, obase=read_at.obase, has_etag=True),
                 *planned) != COMMITTED
    assert g.inode(10).size == 100 and not version(g, keys.materialized_key(10, 0))
    # Unchecked, as before the fix, the write applied onto the evictable copy.
    assert g.run(*planned) == COMMITTED


def test_a_write_back_claim_for_a_version_the_inode_left_is_refused() -> None:
    # Regression (fault campaign, tests/faults/FINDINGS.md 10): a leader stalled mid-round
    # by its full cache disk went on, after a newer round had written the file's truncated
    # version, to claim the key and write the version it had read (its size over the bytes
    # truncated since): the bucket held zeros that the file later took back as its own.
    g = Group()
    mkroot(g)
    assert g.run(*mkfile(10, b"f")) == COMMITTED
    assert g.run(r.ChunkWrite(10, 0, 0, b"a" * 100, CS), r.WriteMeta(10, 100, 5)) == COMMITTED
    read = g.inode(10).dver  # what the stalled round read
    assert g.run(r.SetAttr(10, 6, size=40)) == COMMITTED
    assert g.run(r.KeyClaim(1, b"f", 10, read)) != COMMITTED
    assert g.run(r.KeyClaim(1, b"f", 10, g.inode(10).dver)) == COMMITTED
    assert g.run(r.KeyClaim(1, b"f", 10)) == COMMITTED  # unchecked, as before
