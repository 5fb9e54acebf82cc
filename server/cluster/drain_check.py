"""What a drain must find in the bucket before the nodes may exit (drain.py). Pure.

Rules:
- Given every inode of the cluster and each store's key table (server/fs/state.py), decide
  which objects the bucket must hold — the key, size and ETag of each — and what already
  stands in the way of exiting. The HEADs are drain.py's.
- An inode the cluster changed (dver > 0) must be clean (cver == dver: write-back confirmed
  that version, flush.py) and sit at its path: its recorded key (okey) is the key its path
  gives now. Its object then has the inode's ETag and size (a file's bytes; 0 for a
  directory's marker, a symlink, a device node). An inode never changed (dver == 0) is the
  bucket's own: nothing of it lives only in the cluster.
- An inode outside every store (store 0) would be lost, except the directories on the way
  from the root down to each store's root (the exports recreate them at start).
- A key table entry that is not live (claimed, to delete, held by a moved inode) is an
  upload or a delete the bucket has not seen.
- An unnamed inode (removed while still referenced) has no key: nothing to hold.
- Checking an object: its size and ETag as the state records them. A directory holding many
  expected objects is listed (one request per 1 000 keys, the same size and ETag a HEAD
  gives); whatever a listing does not confirm is HEADed, and the HEAD decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nfs_gateway.backend import FileType
from server.cluster.bucket import key_below
from server.fs.keytable import KEY_CLAIMED, KEY_DELETE, KEY_HELD, KEY_LIVE
from server.fs.records import Inode

MAX_DEPTH = 256
LIST_MIN = 8  # expected objects in one directory from which listing it beats HEADs
PENDING = {KEY_CLAIMED: "an upload to it was not confirmed",
           KEY_DELETE: "it is still to be deleted from the bucket",
           KEY_HELD: "a moved file or directory still holds it"}


@dataclass(frozen=True, slots=True)
class Expected:
    store: int
    ino: int
    key: bytes
    size: int
    etag: str


@dataclass(frozen=True, slots=True)
class Problem:
    store: int
    ino: int  # 0: a key table entry of no inode
    key: bytes | None  # None: the inode has no path in its store
    why: str


def expected_objects(inodes: Mapping[int, Inode], roots: Mapping[int, int],
                     tables: Mapping[int, Mapping[bytes, tuple[int, int]]],
                     why_dirty: Mapping[int, str] | None = None
                     ) -> tuple[list[Expected], list[Problem]]:
    """The objects to HEAD and the problems found without the bucket (module rules).
    `roots`: store -> its root inode; `tables`: store -> key -> (ino, state); `why_dirty`:
    ino -> the error that kept it dirty (write-back's), if known."""
    why_dirty = why_dirty or {}
    keys: dict[int, bytes | None] = {root: b"" for root in roots.values()}
    stores_of_roots = set(roots.values())
    above = _above_roots(inodes, roots)
    expected: list[Expected] = []
    problems: list[Problem] = []
    for ino, inode in sorted(inodes.items()):
        if inode.store not in roots:
            if ino not in above:
                problems.append(Problem(inode.store, ino, None, "in no bucket: it would be lost"))
            continue
        if inode.dver == 0 or ino in stores_of_roots:
            continue
        key = key_of(inode, inodes, roots[inode.store], keys)
        if inode.dver != inode.cver:
            why = why_dirty.get(ino, "not written back (still dirty)")
            problems.append(Problem(inode.store, ino, key, why))
        elif key is None:
            continue
        elif inode.okey != key:
            problems.append(Problem(inode.store, ino, key, f"the bucket holds it at "
                                    f"{inode.okey.decode(errors='replace')!r}"))
        else:
            size = inode.size if inode.ftype == FileType.REG else 0
            expected.append(Expected(inode.store, ino, key, size, inode.etag.decode()))
    told = {(pr.store, pr.ino) for pr in problems}
    for store, table in sorted(tables.items()):
        for key, (ino, state) in sorted(table.items()):
            if state == KEY_CLAIMED and (store, ino) in told:
                continue  # its inode's problem says why the upload did not finish
            if state != KEY_LIVE:
                problems.append(Problem(store, ino, key, PENDING.get(state, f"state {state}")))
    return expected, problems


def key_of(inode: Inode, inodes: Mapping[int, Inode], root: int,
           keys: dict[int, bytes | None]) -> bytes | None:
    """The inode's key under its store's root, from its ancestors (flush.py's rule: a
    directory's key ends in "/"); None without a path there. `keys` memoizes directories."""
    chain: list[Inode] = []
    cur = inode
    for _ in range(MAX_DEPTH):
        if cur.ino in keys and cur is not inode:
            prefix = keys[cur.ino]
            break
        if cur.ino == root:
            prefix = b""
            break
        parent = inodes.get(cur.parent)
        if not cur.pname or cur.parent in (0, cur.ino) or parent is None:
            prefix = None
            break
        chain.append(cur)
        cur = parent
    else:
        prefix = None
    if prefix is None:
        keys.update(dict.fromkeys((node.ino for node in chain), None))
        return None
    return key_below(prefix, chain, keys)


def _above_roots(inodes: Mapping[int, Inode], roots: Mapping[int, int]) -> set[int]:
    """The directories from the file system's root down to each store's root."""
    out: set[int] = set()
    for root in roots.values():
        cur = inodes.get(root)
        for _ in range(MAX_DEPTH):
            if cur is None or cur.ino in out:
                break
            out.add(cur.ino)
            if cur.parent in (0, cur.ino):
                break
            cur = inodes.get(cur.parent)
    return out


def listings(expected: list[Expected]) -> list[tuple[int, bytes]]:
    """The (store, directory prefix) worth listing: those holding LIST_MIN expected objects."""
    count: dict[tuple[int, bytes], int] = {}
    for e in expected:
        where = (e.store, parent_prefix(e.key))
        count[where] = count.get(where, 0) + 1
    return sorted(w for w, n in count.items() if n >= LIST_MIN)


def parent_prefix(key: bytes) -> bytes:
    """The prefix a delimiter listing shows `key` under ("a/b" and "a/b/": "a/")."""
    head, sep, _ = key.rstrip(b"/").rpartition(b"/")
    return head + sep


def is_marker(e: Expected, inode: Inode) -> bool:
    """Whether the expected object is a directory's marker (drain.py writes a lost one
    again)."""
    return inode.ftype == FileType.DIR and e.size == 0 and e.key.endswith(b"/")


def mismatch(e: Expected, size: int | None, etag: str) -> str | None:
    """Why the object found (size None: none) is not the one expected; None when it is."""
    if size is None:
        return "missing from the bucket"
    if size != e.size:
        return f"the bucket's object has {size} bytes, the file {e.size}"
    if etag != e.etag:
        return f"the bucket's object has ETag {etag}, the cluster wrote {e.etag}"
    return None
