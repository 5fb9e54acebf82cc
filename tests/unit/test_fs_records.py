"""Records and stored values through the one on-disk CBOR codec (server/fs/record_codec.py)."""

import dataclasses

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nfs_gateway.backend import FileType
from server.fs import record_codec as codec
from server.fs import records as r

u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
i64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
names = st.binary(min_size=1, max_size=255)
ftypes = st.sampled_from(list(FileType))
opt = st.none() | u64
rdevs = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))

inodes = st.builds(
    r.Inode,
    ino=u64,
    gen=u64,
    ftype=ftypes,
    mode=st.integers(0, 0o7777),
    uid=u64,
    gid=u64,
    size=u64,
    nlink=u64,
    rdev=rdevs,
    atime_ns=i64,
    mtime_ns=i64,
    ctime_ns=i64,
    target=st.binary(max_size=64),
    parent=u64,
    verf=st.binary(max_size=8),
    next_cookie=u64,
    chunk_size=u64,
    inline=st.booleans(),
)
leaf_records = st.one_of(
    st.builds(
        r.CreateInode,
        ino=u64,
        gen=u64,
        ftype=ftypes,
        mode=st.integers(0, 0o7777),
        uid=u64,
        gid=u64,
        nlink=u64,
        time_ns=i64,
        rdev=rdevs,
        target=st.binary(max_size=64),
        parent=u64,
        verf=st.binary(max_size=8),
        chunk_size=u64,
        size=u64,
    ),
    st.builds(r.LinkDirent, dir_ino=u64, name=names, ino=u64, ftype=ftypes, time_ns=i64),
    st.builds(r.UnlinkDirent, dir_ino=u64, name=names, time_ns=i64),
    st.builds(r.AdjustLinks, ino=u64, delta=st.integers(-2, 1), time_ns=i64),
    st.builds(r.SetParent, ino=u64, parent=u64, time_ns=i64),
    st.builds(
        r.SetAttr,
        ino=u64,
        ctime_ns=i64,
        mode=opt,
        uid=opt,
        gid=opt,
        size=opt,
        atime_ns=st.none() | i64,
        mtime_ns=st.none() | i64,
    ),
    st.builds(r.WriteMeta, ino=u64, end=u64, time_ns=i64, clear_suid=st.booleans()),
    st.builds(
        r.WriteInline,
        ino=u64,
        offset=u64,
        data=st.binary(max_size=64),
        time_ns=i64,
        clear_suid=st.booleans(),
    ),
    st.builds(r.UnInline, ino=u64),
)
records = st.recursive(
    leaf_records,
    lambda inner: st.builds(r.Multi, st.lists(inner, max_size=4).map(tuple)),
    max_leaves=8,
)
values = st.one_of(
    inodes,
    st.builds(r.Dirent, ino=u64, cookie=u64, ftype=ftypes),
    st.builds(r.CookieEntry, name=names, ino=u64, ftype=ftypes),
)


@given(records)
def test_every_record_round_trips(rec):
    data = codec.encode(rec)
    assert codec.decode(data) == rec
    assert codec.encode(codec.decode(data)) == data  # deterministic bytes


@given(values)
def test_stored_values_round_trip(v):
    assert codec.decode(codec.encode(v)) == v


def test_decoded_enums_and_tuples_have_their_types():
    inode = codec.decode(
        codec.encode(r.Inode(5, 1, FileType.CHR, 0o600, 0, 0, 0, 1, (4, 7), 1, 2, 3)))
    assert inode.ftype is FileType.CHR
    assert inode.rdev == (4, 7) and isinstance(inode.rdev, tuple)


def test_unknown_version_is_refused():
    data = cbor2.dumps([codec.VERSION + 1, 16, []])
    with pytest.raises(codec.UnknownVersion):
        codec.decode(data)


def test_unknown_tag_is_refused():
    with pytest.raises(codec.UnknownType):
        codec.decode(cbor2.dumps([codec.VERSION, 999, []]))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xff",
        cbor2.dumps({"a": 1}),
        cbor2.dumps([codec.VERSION, 18]),
        cbor2.dumps([codec.VERSION, 18, [1, b"x"]]),  # UnlinkDirent: 3 fields
        cbor2.dumps([codec.VERSION, 18, [1, "text-not-bytes", 5]]),
        cbor2.dumps([codec.VERSION, 19, [1, True, 5]]),  # bool is not an int here
        cbor2.dumps([codec.VERSION, 17, [1, b"n", 2, 99, 5]]),  # no FileType 99
        cbor2.dumps([codec.VERSION, 23, [5]]),  # Multi of a non-list
    ],
)
def test_garbage_is_a_typed_error(data):
    with pytest.raises(codec.RecordError):
        codec.decode(data)


def test_tags_are_stable():
    # The on-disk format: a renumbering would misread every existing database.
    assert codec.encode(r.UnlinkDirent(1, b"a", 2)) == cbor2.dumps([1, 18, [1, b"a", 2]])


def test_an_older_encoding_without_trailing_defaults_decodes():
    # Evolution rule: fields are added at the end with defaults (Inode.inline came later).
    full = r.Inode(5, 1, FileType.REG, 0o644, 0, 0, 3, 1, (0, 0), 1, 2, 3, b"", 0, b"", 0, 4096)
    wire = cbor2.loads(codec.encode(full))
    del wire[2][-1]  # as written before `inline` existed
    assert codec.decode(cbor2.dumps(wire)) == full
    del wire[2][5:]  # but the fields without defaults must be there
    with pytest.raises(codec.CorruptRecord):
        codec.decode(cbor2.dumps(wire))


@given(inodes, u64, i64, st.booleans())
def test_replace_inode_is_dataclasses_replace(inode: r.Inode, nlink: int, t: int, inline: bool):
    changes = {"nlink": nlink, "ctime_ns": t, "inline": inline}
    new = r.replace_inode(inode, **changes)
    assert new == dataclasses.replace(inode, **changes) and type(new) is r.Inode
    assert r.replace_inode(inode) == inode and r.replace_inode(inode) is not inode
    with pytest.raises(AttributeError):
        r.replace_inode(inode, no_such_field=1)
