"""The state machine's LevelDB key schema (server/fs/keys.py)."""

from hypothesis import given
from hypothesis import strategies as st

from server.fs import keys

u64s = st.integers(min_value=0, max_value=keys.U64_MAX)
names = st.binary(min_size=1, max_size=255)


def test_every_key_is_under_the_fs_prefix():
    for k in (keys.inode_key(1), keys.dirent_key(1, b"a"), keys.cookie_key(1, 3), keys.NEXT_INO):
        assert k.startswith(b"fs.")


def test_prefixes_are_distinct_and_none_is_a_prefix_of_another():
    ps = [keys.INODE, keys.DIRENT, keys.COOKIE, keys.META]
    for a in ps:
        for b in ps:
            assert a == b or not b.startswith(a)


@given(u64s)
def test_inode_key_round_trip(ino):
    assert keys.parse_inode_key(keys.inode_key(ino)) == ino


@given(u64s, names)
def test_dirent_key_round_trip(d, name):
    key = keys.dirent_key(d, name)
    assert keys.parse_dirent_key(key) == (d, name)
    assert key.startswith(keys.dirent_prefix(d))


@given(u64s, u64s)
def test_cookie_key_round_trip(d, c):
    key = keys.cookie_key(d, c)
    assert keys.parse_cookie_key(key) == (d, c)
    assert key.startswith(keys.cookie_prefix(d))


@given(u64s, u64s, u64s)
def test_cookie_keys_sort_numerically_within_a_directory(d, a, b):
    # Resuming READDIR after a cookie is a range scan: byte order must be cookie order.
    assert (keys.cookie_key(d, a) < keys.cookie_key(d, b)) == (a < b)


@given(u64s, u64s, names, names)
def test_one_directory_entries_are_contiguous(d1, d2, n1, n2):
    # Keys of directory d1 never interleave with another directory's.
    if d1 < d2:
        assert keys.dirent_key(d1, n1) < keys.dirent_key(d2, n2)


def test_u64_rejects_out_of_range():
    import pytest

    with pytest.raises(AssertionError):
        keys.u64(-1)
    with pytest.raises(AssertionError):
        keys.u64(1 << 64)
