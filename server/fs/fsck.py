"""Namespace invariants of the state machine, checked over a full scan. Pure.

Used by tests (and later by the simulation's checkers, TESTING.md tier 3). The rules it checks:
- every directory entry points at a live inode of the type the entry records;
- the cookie index and the entries agree one to one, and every cookie is below its
  directory's next cookie;
- a non-directory's nlink is the number of entries naming it; a directory has exactly one entry
  (the root none), its `..` is that entry's directory, and its nlink is 2 + its subdirectories;
- inline bytes belong to a live inline file and are no longer than its size;
- the persisted counters hold: next inode id above every inode, inode count equal to the inodes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from nfs_gateway.backend import FileType
from server.fs import keys
from server.fs.keys import decode_u64
from server.fs.record_codec import decode
from server.fs.records import CookieEntry, Dirent, Inode

ROOT_INO = 1


def check(items: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """Problems found in the (key, value) pairs of the `fs.` key space; [] when consistent."""
    inodes: dict[int, Inode] = {}
    dirents: dict[tuple[int, bytes], Dirent] = {}
    cookies: dict[tuple[int, int], CookieEntry] = {}
    meta: dict[bytes, int] = {}
    blobs: dict[int, int] = {}
    for key, value in items:
        if key.startswith(keys.INODE):
            inodes[keys.parse_inode_key(key)] = decode(value)
        elif key.startswith(keys.DIRENT):
            dirents[keys.parse_dirent_key(key)] = decode(value)
        elif key.startswith(keys.COOKIE):
            cookies[keys.parse_cookie_key(key)] = decode(value)
        elif key.startswith(keys.INLINE):
            blobs[int.from_bytes(key[len(keys.INLINE) :], "big")] = len(value)
        elif key in (keys.NEXT_INO, keys.INODE_COUNT):
            meta[key] = decode_u64(value)
    problems = _check_entries(inodes, dirents, cookies)
    problems += _check_links(inodes, dirents)
    for ino, n in blobs.items():
        inode = inodes.get(ino)
        # Worded alike in every scan of a changing state (server/cluster/fsck.py compares them).
        if inode is None:
            problems.append(f"inline bytes of inode {ino}: there is no such inode")
        elif not inode.inline:
            problems.append(f"inline bytes of inode {ino}: it is not inline")
        elif n > inode.size:
            problems.append(f"inline bytes of inode {ino}: they exceed its size")
    if inodes and meta.get(keys.NEXT_INO, 0) <= max(inodes):
        problems.append(f"next inode id {meta.get(keys.NEXT_INO)} <= inode {max(inodes)}")
    if meta.get(keys.INODE_COUNT, 0) != len(inodes):
        problems.append(f"inode count {meta.get(keys.INODE_COUNT)} != {len(inodes)} inodes")
    return problems


def _check_entries(
    inodes: dict[int, Inode],
    dirents: dict[tuple[int, bytes], Dirent],
    cookies: dict[tuple[int, int], CookieEntry],
) -> list[str]:
    problems = []
    for (d, name), ent in dirents.items():
        parent, child = inodes.get(d), inodes.get(ent.ino)
        if parent is None or parent.ftype != FileType.DIR:
            problems.append(f"entry {name!r} in {d}, which is not a live directory")
        elif ent.cookie >= parent.next_cookie:
            problems.append(f"entry {name!r} in {d} has cookie {ent.cookie} >= next cookie")
        if child is None:
            problems.append(f"entry {name!r} in {d} points at missing inode {ent.ino}")
        elif child.ftype != ent.ftype:
            problems.append(f"entry {name!r} in {d} says {ent.ftype.name}, inode is not")
        back = cookies.get((d, ent.cookie))
        if back is None or back.name != name or back.ino != ent.ino:
            problems.append(f"entry {name!r} in {d}: cookie index disagrees ({back})")
    if len(cookies) != len(dirents):
        problems.append(f"the cookie index has {len(cookies) - len(dirents):+d} rows more "
                        "than there are entries")
    return problems


def _check_links(inodes: dict[int, Inode], dirents: dict[tuple[int, bytes], Dirent]) -> list[str]:
    problems = []
    names = Counter(ent.ino for ent in dirents.values())
    subdirs = Counter(d for (d, _), ent in dirents.items() if ent.ftype == FileType.DIR)
    holder = {ent.ino: d for (d, _), ent in dirents.items() if ent.ftype == FileType.DIR}
    for ino, inode in inodes.items():
        if inode.ftype == FileType.DIR:
            want_names = 0 if ino == ROOT_INO else 1
            want_parent = ROOT_INO if ino == ROOT_INO else holder.get(ino)
            if names[ino] != want_names:
                problems.append(f"directory {ino} has {names[ino]} entries naming it")
            if inode.parent != want_parent:
                problems.append(f"directory {ino}: `..` is {inode.parent}, not {want_parent}")
            if inode.nlink != 2 + subdirs[ino]:
                problems.append(f"directory {ino}: nlink {inode.nlink}, {subdirs[ino]} subdirs")
        elif inode.nlink != names[ino] or inode.nlink == 0:
            problems.append(f"inode {ino}: nlink {inode.nlink}, {names[ino]} entries")
    return problems
