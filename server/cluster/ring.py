"""Placement: which Raft group owns an inode's metadata and each of its chunks.

Rules:
- The ring is uhashring's HashRing over the group ids, `vnodes` points per group (its default,
  non-ketama algorithm: a group's points are md5("<group>-<i>") for i < vnodes; a key belongs to
  the first point strictly above md5(str(key)), wrapping around). md5 makes it identical in
  every process, whatever PYTHONHASHSEED is.
- Keys: inode n is str(n); chunk i > 0 of inode n is "n/i". Chunk 0 is placed with its inode
  (small files need one group); a directory's entries live with the directory's inode.
- Lookups run on every NFS operation, so the ring is built once (by uhashring) into a sorted
  point table and answered with one md5 and one bisect; tests check the table answers exactly
  what HashRing.get_node does. (Measured here: 1.2 us a lookup, HashRing.get_node 1.4 us;
  building a 5-group ring 0.5 ms.)
- A Ring is immutable; a new NodeList version means a new Ring. So an inode's group can be
  remembered: the same inodes (a directory and its new entries) are looked up several times
  per operation, on every node they touch (in a 3-group create run, key_hash and _owner were
  ~3.5 % of a node's samples). The memo is a dict of at most INODE_MEMO entries, emptied
  when full (cheaper than an LRU's bookkeeping for a lookup this cheap).
"""

from __future__ import annotations

from bisect import bisect
from collections.abc import Iterable
from hashlib import md5

from uhashring import HashRing

MAX_VNODES = 4096  # a limit on the point table: groups * vnodes points
INODE_MEMO = 1 << 16  # inode -> group answers a Ring remembers (module rules)


def key_hash(key: str) -> int:
    """uhashring's default hash of a key (MetaRing.hashi): md5 as a 128-bit integer."""
    return int.from_bytes(md5(key.encode()).digest(), "big")


class Ring:
    """Consistent-hash placement over groups; `version` is the NodeList version it came from."""

    __slots__ = ("_inode_groups", "_owners", "_points", "groups", "version", "vnodes")

    def __init__(self, groups: Iterable[int], version: int, vnodes: int = 64):
        ids = tuple(sorted(set(groups)))
        assert ids, "a ring needs at least one group"
        assert all(isinstance(g, int) and g >= 1 for g in ids), f"group ids are >= 1: {ids}"
        assert 1 <= vnodes <= MAX_VNODES, f"vnodes {vnodes} outside [1, {MAX_VNODES}]"
        self.groups: tuple[int, ...] = ids
        self.version = version
        self.vnodes = vnodes
        points = hash_ring(ids, vnodes).get_points()  # sorted (position, group)
        self._points: tuple[int, ...] = tuple(p for p, _ in points)
        self._owners: tuple[int, ...] = tuple(g for _, g in points)
        self._inode_groups: dict[int, int] = {}

    def _owner(self, key: str) -> int:
        i = bisect(self._points, key_hash(key))
        return self._owners[i if i < len(self._points) else 0]

    def group_of_inode(self, ino: int) -> int:
        """The group holding inode `ino`'s metadata, chunk 0 and (for a directory) entries."""
        memo = self._inode_groups
        group = memo.get(ino)
        if group is None:
            if len(memo) >= INODE_MEMO:
                memo.clear()
            group = memo[ino] = self._owner(str(ino))
        return group

    def group_of_chunk(self, ino: int, index: int) -> int:
        """The group holding chunk `index` of inode `ino`."""
        if index == 0:
            return self.group_of_inode(ino)
        return self._owner(f"{ino}/{index}")

    def __repr__(self) -> str:
        return f"Ring(groups={self.groups}, version={self.version}, vnodes={self.vnodes})"


def hash_ring(groups: Iterable[int], vnodes: int) -> HashRing:
    """The uhashring definition of the ring (Ring answers exactly as its get_node does)."""
    return HashRing(nodes=sorted(groups), vnodes=vnodes)
