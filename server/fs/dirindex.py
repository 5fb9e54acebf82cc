"""Names of directories known in full, so that a miss is an answer and not a LevelDB read.

Why: NFS clients LOOKUP every name before they CREATE it, and a LOOKUP of a name that does not
exist would otherwise cost a LevelDB read in a worker thread. A directory created by this process
starts empty and sees every later change (they all pass through MetaStore._publish), so the
set of its names stays exact. Bounded: past `max_names` in total, the least recently used
directories are forgotten (their lookups go to LevelDB again). Directories from before a
restart are not known in full.
"""

from __future__ import annotations

from collections import OrderedDict


class CompleteDirs:
    def __init__(self, max_names: int) -> None:
        self.max_names = max_names
        self._dirs: OrderedDict[int, set[bytes]] = OrderedDict()
        self._names = 0

    def knows(self, dir_ino: int) -> bool:
        return dir_ino in self._dirs

    def has(self, dir_ino: int, name: bytes) -> bool | None:
        """True/False if the directory is known in full, None if it is not."""
        names = self._dirs.get(dir_ino)
        if names is None:
            return None
        self._dirs.move_to_end(dir_ino)
        return name in names

    def is_empty(self, dir_ino: int) -> bool | None:
        names = self._dirs.get(dir_ino)
        return None if names is None else not names

    def created(self, dir_ino: int) -> None:
        """A new, empty directory."""
        self._dirs[dir_ino] = set()
        self._trim()

    def removed(self, dir_ino: int) -> None:
        names = self._dirs.pop(dir_ino, None)
        if names is not None:
            self._names -= len(names)

    def linked(self, dir_ino: int, name: bytes) -> None:
        names = self._dirs.get(dir_ino)
        if names is not None and name not in names:
            names.add(name)
            self._names += 1
            self._trim()

    def unlinked(self, dir_ino: int, name: bytes) -> None:
        names = self._dirs.get(dir_ino)
        if names is not None and name in names:
            names.discard(name)
            self._names -= 1

    def clear(self) -> None:
        self._dirs.clear()
        self._names = 0

    def _trim(self) -> None:
        while self._names > self.max_names and self._dirs:
            _, names = self._dirs.popitem(last=False)
            self._names -= len(names)
