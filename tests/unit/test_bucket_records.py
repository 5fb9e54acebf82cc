"""The bucket records of the fs state machine (server/cluster/bucket.py rules): origins,
listings, materialized chunks, and what truncates and deletes do to them."""

from __future__ import annotations

import cbor2
import pytest

from nfs_gateway.backend import FileType
from server.cluster import fsops
from server.cluster.bucket import backed_len, is_backed
from server.fs import keys
from server.fs import record_codec as codec
from server.fs import records as r
from server.fs.changes import KEYBUSY
from server.fs.keytable import KEY_CLAIMED, KEY_DELETE, KEY_HELD, KEY_LIVE, key_prefixes
from storage.chunks import ChunkStore
from tests.unit.test_cluster_fsops import CS, Group, mkdir, mkfile, mkroot
from txn.records import COMMITTED, Outcome


def loaded(g: Group, ino: int = 10, size: int = 3 * CS + 100) -> r.Inode:
    g.run(*mkfile(ino, b"obj"), r.SetOrigin(ino, 7, b"a/obj", b"e1", size, 123))
    inode = g.inode(ino)
    assert inode is not None
    return inode


def marked(g: Group, ino: int, index: int) -> bool:
    return keys.materialized_key(ino, index) in dict(g.kv.scan(keys.materialized_prefix(ino), 99))


def test_set_origin_binds_a_file_to_its_object() -> None:
    g = Group()
    mkroot(g)
    inode = loaded(g)
    assert (inode.store, inode.okey, inode.etag) == (7, b"a/obj", b"e1")
    assert inode.size == inode.obase == 3 * CS + 100 and inode.mtime_ns == 123
    assert is_backed(inode, 3) and not is_backed(inode, 4)
    assert backed_len(inode.obase, CS, 3) == 100 and backed_len(inode.obase, CS, 4) == 0


def test_set_origin_of_a_directory_and_its_listing_time() -> None:
    g = Group()
    mkroot(g)
    g.run(*mkdir(20, b"d"), r.SetOrigin(20, 7, b"d/"), r.SetListed(20, 99))
    d = g.inode(20)
    assert d is not None and (d.okey, d.listed_ns, d.size) == (b"d/", 99, 0)
    assert g.run(r.SetListed(10, 1)) == Outcome(False, fsops.ENOENT)


def test_truncate_lowers_obase_and_growing_again_keeps_it() -> None:
    g = Group()
    mkroot(g)
    loaded(g)
    g.run(r.SetAttr(10, 9, size=CS + 5))
    g.run(r.SetAttr(10, 9, size=5 * CS))
    inode = g.inode(10)
    assert inode is not None and inode.obase == CS + 5 and inode.size == 5 * CS
    assert is_backed(inode, 1) and not is_backed(inode, 2)


def test_a_write_to_a_backed_chunk_needs_it_materialized(tmp_path) -> None:
    g = Group()
    mkroot(g)
    loaded(g)
    g.app.take_effects()
    write = r.ChunkWrite(10, 1, 10, b"new", CS)
    assert g.run(r.ExpectChunk(10, 1), write) == Outcome(False, fsops.UNMATERIALIZED)
    base = bytes(range(256)) * (CS // 256)
    assert g.run(r.MaterializeChunk(10, 1, CS, base), write) == COMMITTED
    assert marked(g, 10, 1)
    # A second materialize (a racing writer's stale base) does not overwrite the write.
    assert g.run(r.MaterializeChunk(10, 1, CS, bytes(CS)), r.ExpectChunk(10, 1)) == COMMITTED
    chunks = ChunkStore(tmp_path)
    fsops.perform_effects_sync(g.app.take_effects(), chunks)
    got = chunks.pread_sync(10, CS, CS, CS)
    assert got[:10] == base[:10] and got[10:13] == b"new" and got[13:] == base[13:]


def test_a_short_base_is_padded_with_zeros(tmp_path) -> None:
    g = Group()
    mkroot(g)
    loaded(g)
    g.app.take_effects()
    chunks = ChunkStore(tmp_path)
    chunks.put_chunk_file_sync(10, 3, b"x" * CS)  # a stale clean copy of another version
    assert g.run(r.MaterializeChunk(10, 3, CS, b"y" * 100)) == COMMITTED
    fsops.perform_effects_sync(g.app.take_effects(), chunks)
    assert chunks.pread_sync(10, CS, 3 * CS, CS) == b"y" * 100 + bytes(CS - 100)


@pytest.mark.parametrize("keep,left", [(0, []), (CS, [0]), (CS + 1, [0, 1]), (2 * CS, [0, 1])])
def test_trim_unmarks_the_chunks_it_removes(keep: int, left: list[int]) -> None:
    g = Group()
    mkroot(g)
    loaded(g)
    g.run(r.MaterializeChunk(10, 0, CS, b"a"), r.MaterializeChunk(10, 1, CS, b"b"))
    g.run(r.ChunkTrim(10, CS, keep))
    assert [i for i in range(4) if marked(g, 10, i)] == left


def test_delete_and_a_new_version_unmark_everything() -> None:
    g = Group()
    mkroot(g)
    loaded(g)
    g.run(r.MaterializeChunk(10, 2, CS, b"a"))
    g.run(r.SetOrigin(10, 7, b"a/obj", b"e2", 50, 124))  # the object changed in the bucket
    assert not marked(g, 10, 2)
    inode = g.inode(10)
    assert inode is not None and (inode.etag, inode.size, inode.obase) == (b"e2", 50, 50)
    effects = g.app.take_effects()
    assert any(type(e).__name__ == "TrimEffect" and e.keep == 0 for e in effects)
    g.run(r.MaterializeChunk(10, 0, CS, b"a"), r.ChunkDelete(10))  # same batch: unmarked too
    assert not marked(g, 10, 0)


@pytest.mark.parametrize("rec", [
    r.SetOrigin(1, 2, b"k", b"e", 5, 6), r.SetOrigin(1, 2, b"k/"), r.SetListed(3, 4),
    r.MaterializeChunk(1, 2, 3, b"abc"), r.ExpectChunk(1, 2),
])
def test_bucket_records_round_trip(rec: object) -> None:
    assert codec.decode(codec.encode(rec)) == rec


def test_inodes_without_a_bucket_keep_their_encoding() -> None:
    plain = r.Inode(1, 2, r.FileType.REG, 0o644, 0, 0, 0, 1, (0, 0), 1, 1, 1)
    bound = r.Inode(1, 2, r.FileType.REG, 0o644, 0, 0, 0, 1, (0, 0), 1, 1, 1, store=3)
    assert len(codec.encode(plain)) < len(codec.encode(bound))
    assert codec.decode(codec.encode(bound)) == bound and codec.decode(codec.encode(plain)) == plain


# -- write-back: versions, the dirty index, the key table ------- ------------------------------


def dirty(g: Group) -> list[int]:
    return [int.from_bytes(k[4:], "big") for k, _ in g.kv.scan(keys.DIRTY, 99)]


def test_a_file_made_in_a_bound_directory_is_dirty_until_set_clean() -> None:
    g = Group()
    mkroot(g)
    g.run(r.CreateInode(10, 1, FileType.REG, 0o644, 0, 0, 1, 5, parent=1, chunk_size=CS,
                        pname=b"f", store=7), r.LinkDirent(1, b"f", 10, FileType.REG, 5))
    inode = g.inode(10)
    assert inode is not None and (inode.dver, inode.cver, inode.cdirty) == (1, 0, True)
    assert (inode.parent, inode.pname) == (1, b"f") and dirty(g) == [10]
    g.run(r.WriteInline(10, 0, b"hi", 6))
    assert g.run(r.SetClean(10, 1, b"f", b"e1", 2)) == Outcome(False, fsops.STALE)  # v2 now
    assert g.run(r.SetClean(10, 2, b"f", b"e1", 2)) == COMMITTED
    inode = g.inode(10)
    assert inode is not None and (inode.cver, inode.cdirty, inode.okey, inode.obase) == (
        2, False, b"f", 2)
    assert dirty(g) == []
    g.run(r.SetName(10, 1, b"g", 7))  # a rename: dirty again, content still clean
    inode = g.inode(10)
    assert inode is not None and inode.pname == b"g" and not inode.cdirty and dirty(g) == [10]
    g.run(r.SetAttr(10, 8, mode=0o600))
    assert g.inode(10).cdirty is False  # attributes only: a copy of the object will do
    g.run(r.SetAttr(10, 8, size=1))
    assert g.inode(10).cdirty is True


def test_loaded_inodes_are_clean_and_files_outside_buckets_are_never_indexed() -> None:
    g = Group()
    mkroot(g)
    loaded(g)
    g.run(*mkfile(11, b"plain"))
    g.run(r.WriteInline(11, 0, b"x", 6))
    assert dirty(g) == []


def key_state(g: Group, key: bytes) -> list[int] | None:
    raw = g.kv.get(keys.bucket_key(7, key))
    return None if raw is None else cbor2.loads(raw)


def test_the_key_table_serializes_writers_of_one_key() -> None:
    g = Group()
    assert g.run(r.KeyClaim(7, b"x", 10)) == COMMITTED
    assert key_state(g, b"x") == [10, KEY_CLAIMED]
    assert g.run(r.KeyClaim(7, b"x", 11)) == Outcome(False, KEYBUSY)
    assert g.run(r.KeyLive(7, b"x", 11)) == Outcome(False, fsops.STALE)
    assert g.run(r.KeyLive(7, b"x", 10)) == COMMITTED
    assert g.run(r.KeyClaim(7, b"x", 10)) == COMMITTED and key_state(g, b"x") == [10, KEY_LIVE]
    g.run(r.KeyRelease(7, b"x", 11))  # not 11's: nothing happens
    assert key_state(g, b"x") == [10, KEY_LIVE]
    g.run(r.KeyRelease(7, b"x", 10))
    assert key_state(g, b"x") == [10, KEY_DELETE]
    # A path made again before the delete ran: the new inode takes the key over.
    assert g.run(r.KeyClaim(7, b"x", 12)) == COMMITTED and key_state(g, b"x") == [12,
                                                                                 KEY_CLAIMED]
    g.run(r.KeyGone(7, b"x", 10))  # the old delete finishing late removes nothing
    assert key_state(g, b"x") == [12, KEY_CLAIMED]
    g.run(r.KeyRelease(7, b"x", 12, delete=False))
    assert key_state(g, b"x") is None


S = 10**9


def test_a_round_holds_its_key_until_it_lets_go_or_its_lease_runs_out() -> None:
    """FINDINGS.md 11: two write-back rounds of one inode (a leader change) both wrote its
    key; a claim now belongs to one round, for a lease (wall clock in the records)."""
    g = Group()
    assert g.run(r.KeyClaim(7, b"x", 10, -1, 111, 100 * S, 40 * S)) == COMMITTED
    assert key_state(g, b"x") == [10, KEY_CLAIMED, 111, 100 * S]
    # Another round of the same inode (another node) is kept off while the lease runs.
    assert g.run(r.KeyClaim(7, b"x", 10, -1, 222, 150 * S, 90 * S)) == Outcome(False, KEYBUSY)
    assert g.run(r.KeyClaim(7, b"x", 10)) == Outcome(False, KEYBUSY)  # a claim of no round
    # The holder renews (ino 0: only a renewal); the lease only grows.
    assert g.run(r.KeyClaim(7, b"x", 0, -1, 111, 130 * S, 70 * S)) == COMMITTED
    assert g.run(r.KeyClaim(7, b"x", 0, -1, 111, 120 * S, 60 * S)) == COMMITTED
    assert key_state(g, b"x") == [10, KEY_CLAIMED, 111, 130 * S]
    assert g.run(r.KeyClaim(7, b"x", 10, -1, 222, 189 * S, 129 * S)) == Outcome(False, KEYBUSY)
    # A round that does not hold the key can neither renew it nor mark it live.
    assert g.run(r.KeyClaim(7, b"x", 0, -1, 222, 190 * S, 130 * S)) == Outcome(False, KEYBUSY)
    assert g.run(r.KeyLive(7, b"x", 10, 222)) == Outcome(False, fsops.STALE)
    # Past the lease, another round takes the key over; the first one's KeyLive is refused
    # (its SetClean, in the same transaction, with it) and its KeyUnclaim does nothing.
    assert g.run(r.KeyClaim(7, b"x", 10, -1, 222, 191 * S, 131 * S)) == COMMITTED
    assert g.run(r.KeyLive(7, b"x", 10, 111)) == Outcome(False, fsops.STALE)
    g.run(r.KeyUnclaim(7, b"x", 111))
    assert key_state(g, b"x") == [10, KEY_CLAIMED, 222, 191 * S]
    # The holder's KeyLive ends its hold; the next round claims at once.
    assert g.run(r.KeyLive(7, b"x", 10, 222)) == COMMITTED
    assert key_state(g, b"x") == [10, KEY_LIVE]
    assert g.run(r.KeyClaim(7, b"x", 10, -1, 333, 200 * S, 140 * S)) == COMMITTED
    assert key_state(g, b"x") == [10, KEY_LIVE, 333, 200 * S]
    # A removal while a round holds the key keeps the hold: the delete waits for it.
    g.run(r.KeyRelease(7, b"x", 10))
    assert key_state(g, b"x") == [10, KEY_DELETE, 333, 200 * S]
    assert g.run(r.KeyClaim(7, b"x", 12, -1, 444, 210 * S, 150 * S)) == Outcome(False, KEYBUSY)
    assert g.run(r.KeyUnclaim(7, b"x", 333)) == COMMITTED
    assert key_state(g, b"x") == [10, KEY_DELETE]
    assert g.run(r.KeyClaim(7, b"x", 12, -1, 444, 210 * S, 150 * S)) == COMMITTED
    assert key_state(g, b"x") == [12, KEY_CLAIMED, 444, 210 * S]


def test_holds_keep_others_off_a_key_and_every_key_under_a_prefix() -> None:
    g = Group()
    assert g.run(r.KeyHold(7, b"a/", 20)) == COMMITTED  # directory 20 moved away from a/
    assert key_state(g, b"a/") == [20, KEY_HELD]
    assert g.run(r.KeyClaim(7, b"a/x", 11)) == Outcome(False, KEYBUSY)
    assert g.run(r.KeyClaim(7, b"a/b/y", 11)) == Outcome(False, KEYBUSY)
    assert g.run(r.KeyClaim(7, b"ab", 11)) == COMMITTED  # not under the prefix
    assert g.run(r.KeyHold(7, b"ab", 12)) == COMMITTED and key_state(g, b"ab") == [11,
                                                                                   KEY_CLAIMED]
    # A directory's own marker (live) does not keep others off the keys under it.
    assert g.run(r.KeyClaim(7, b"m/", 30), r.KeyLive(7, b"m/", 30)) == COMMITTED
    assert g.run(r.KeyClaim(7, b"m/x", 31)) == COMMITTED
    g.run(r.KeyRelease(7, b"a/", 20))  # the move was written back: the old prefix goes
    assert g.run(r.KeyClaim(7, b"a/x", 11)) == COMMITTED
    assert key_prefixes(b"a/b/c") == [b"a/", b"a/b/"] and key_prefixes(b"a/b/") == [b"a/"]
    assert key_prefixes(b"top") == []


def test_key_locks_never_collide_with_inode_locks() -> None:
    lock = fsops.key_lock(7, b"a/b")
    assert lock >= 1 << 63 and lock < 1 << 64 and lock != fsops.key_lock(7, b"a/c")
    assert fsops.FsApplication().locks_of(fsops.encode_ops([r.KeyClaim(7, b"a/b", 1)])) == (
        lock,)
