"""Write-back's key table (keys.bucket_key): which inode a bucket key is for, in which state,
and which write-back round holds it (server/cluster/flush_claim.py). The records that change
it are applied here, for server/fs/state.py.

An entry is cbor [ino, state] or [ino, state, round, until_ns]: the write-back round that holds
the key (KeyClaim) and the wall-clock end of its lease.
"""

from __future__ import annotations

import cbor2

from server.fs import keys
from server.fs.changes import KEYBUSY, Changes, StateError, View
from server.fs.records import KeyClaim, KeyGone, KeyHold, KeyLive, KeyRelease, KeyUnclaim

# The states of an entry.
KEY_CLAIMED = 0  # being written for the inode (not confirmed yet)
KEY_LIVE = 1  # holds the inode's confirmed version
KEY_DELETE = 2  # to be deleted (the inode moved away or is gone)
KEY_HELD = 3  # the inode moved away from it (RENAME): its object, and for a directory's
# prefix every key under it, stays until the write-back moved them


def _entry(view: View, changes: Changes, store: int, key: bytes) -> list[int] | None:
    raw = changes.raw(view, keys.bucket_key(store, key))
    return None if raw is None else cbor2.loads(raw)


def _put(changes: Changes, store: int, key: bytes, ino: int, state: int,
         hold: tuple[int, int] = (0, 0)) -> None:
    """Write an entry; `hold` ((round, until_ns), as key_hold gives it) keeps a round's hold
    on the key (round 0: none)."""
    entry = [ino, state, *hold] if hold[0] else [ino, state]
    changes.put_raw(keys.bucket_key(store, key), cbor2.dumps(entry))


def key_hold(entry: list[int] | None) -> tuple[int, int]:
    """(round, until_ns) of the round holding an entry's key; (0, 0) when none does."""
    return (entry[2], entry[3]) if entry is not None and len(entry) >= 4 else (0, 0)


def key_claim(r: KeyClaim, view: View, changes: Changes) -> None:
    e = _entry(view, changes, r.store, r.key)
    held_by, until = key_hold(e)
    if r.round and held_by == r.round:  # the holder renews its lease
        assert e is not None
        _put(changes, r.store, r.key, e[0], e[1], (r.round, max(until, r.until_ns)))
        return
    if not r.ino:
        raise StateError(f"bucket key {r.key!r}: write-back round {r.round} does not hold it "
                         "any more", KEYBUSY)
    if held_by and until > r.now_ns:
        raise StateError(f"bucket key {r.key!r} is being written by another write-back round "
                         f"(its lease has {(until - r.now_ns) / 1e9:.1f} s left)", KEYBUSY)
    inode = changes.inode(view, r.ino) if r.dver >= 0 else None
    if inode is not None and inode.dver != r.dver:  # only when the inode lives here
        raise StateError(f"inode {r.ino}: version {inode.dver}, write-back read {r.dver}")
    # A key to be deleted is taken over: the new object replaces the old one.
    if e is not None and e[0] != r.ino and e[1] != KEY_DELETE:
        raise StateError(f"bucket key {r.key!r} is held by inode {e[0]}", KEYBUSY)
    # A moved directory holds its old prefix, with every key under it.
    for prefix in key_prefixes(r.key):
        pe = _entry(view, changes, r.store, prefix)
        if pe is not None and pe[0] != r.ino and pe[1] == KEY_HELD:
            raise StateError(f"bucket prefix {prefix!r} is held by inode {pe[0]}", KEYBUSY)
    state = KEY_LIVE if e is not None and e[0] == r.ino and e[1] == KEY_LIVE else KEY_CLAIMED
    _put(changes, r.store, r.key, r.ino, state, (r.round, r.until_ns))


def key_prefixes(key: bytes) -> list[bytes]:
    """The directory prefixes above `key`: b"a/b/c" -> [b"a/", b"a/b/"]."""
    parts = key.rstrip(b"/").split(b"/")[:-1]
    return [b"/".join(parts[:i]) + b"/" for i in range(1, len(parts) + 1)]


def key_hold_record(r: KeyHold, view: View, changes: Changes) -> None:
    e = _entry(view, changes, r.store, r.key)
    if e is None or e[0] == r.ino:
        _put(changes, r.store, r.key, r.ino, KEY_HELD, key_hold(e))


def key_live(r: KeyLive, view: View, changes: Changes) -> None:
    e = _entry(view, changes, r.store, r.key)
    if e is None or e[0] != r.ino:
        raise StateError(f"bucket key {r.key!r} is not claimed by inode {r.ino}")
    if r.round and key_hold(e)[0] != r.round:
        raise StateError(f"bucket key {r.key!r}: write-back round {r.round} lost its claim")
    _put(changes, r.store, r.key, r.ino, KEY_LIVE)


def key_unclaim(r: KeyUnclaim, view: View, changes: Changes) -> None:
    e = _entry(view, changes, r.store, r.key)
    if e is not None and key_hold(e)[0] == r.round:
        _put(changes, r.store, r.key, e[0], e[1])


def key_release(r: KeyRelease, view: View, changes: Changes) -> None:
    e = _entry(view, changes, r.store, r.key)
    if e is not None and e[0] != r.ino:
        return  # another inode's now: not ours to delete
    if r.delete:  # a round writing the key still holds it: deleted after it let go
        _put(changes, r.store, r.key, r.ino, KEY_DELETE, key_hold(e))
    else:
        changes.put_raw(keys.bucket_key(r.store, r.key), None)


def key_gone(r: KeyGone, view: View, changes: Changes) -> None:
    e = _entry(view, changes, r.store, r.key)
    if e is not None and e[0] == r.ino and e[1] == KEY_DELETE:
        changes.put_raw(keys.bucket_key(r.store, r.key), None)
