"""File-system helpers of the localdir adapter (localdir.py has the rules): key checks,
stamps and stable etags, directory scans in key order, and small blocking I/O helpers.
Everything here blocks: call it from a worker thread."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from storage.objstore.base import AccessDenied, InvalidKey, StoreError, StoreUnavailable

T = TypeVar("T")

ADMIN = ".objcache"  # ROOT/.objcache: ours, never listed
COPY_BLOCK = 1 << 20


def check_key(key: str) -> None:
    """InvalidKey unless `key` can be a path under ROOT (module rules)."""
    body = key[:-1] if key.endswith("/") else key
    parts = body.split("/")
    bad = (not body or "\0" in key or parts[0] == ADMIN
           or any(p in ("", ".", "..") or len(p.encode("utf-8", "replace")) > 255 for p in parts))
    if bad:
        raise InvalidKey(f"{key!r}: not a key a local directory can hold")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey(f"{key!r}: not valid UTF-8") from None


def stable_etag(st: os.stat_result) -> str:
    """The etag of a file we did not write: changes when it is replaced or modified."""
    return hashlib.blake2b(repr(stamp(st)).encode(), digest_size=16).hexdigest()


def stamp(st: os.stat_result) -> tuple[int, int, int]:
    """What a record belongs to. A directory's mtime and size change with its entries."""
    if stat.S_ISDIR(st.st_mode):
        return st.st_ino, 0, 0
    return st.st_ino, st.st_mtime_ns, st.st_size


def mapped(op: str, key: str, fn: Callable[..., tuple[T, int]], *args: Any) -> tuple[T, int]:
    """Run `fn` in a worker thread; OS errors become StoreErrors naming the op and key."""
    try:
        return fn(*args)
    except StoreError:
        raise
    except (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as e:
        cls = AccessDenied if isinstance(e, PermissionError) else InvalidKey
        raise cls(f"{op} {key!r}: {e.strerror}: {e.filename}") from e
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise InvalidKey(f"{op} {key!r}: name too long") from e
        raise StoreUnavailable(f"{op} {key!r}: {e}") from e


def entries(path: Path, dir_key: str, name_prefix: str) -> list[tuple[str, os.DirEntry[str]]]:
    """The entries of a directory as (key, entry) in key order; a directory's key ends in "/"."""
    out = []
    try:
        it = os.scandir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
    with it:
        for entry in it:
            name = entry.name
            if not name.startswith(name_prefix) or (not dir_key and name == ADMIN):
                continue
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                continue  # not UTF-8: cannot be a key
            if entry.is_dir(follow_symlinks=False):
                out.append((dir_key + name + "/", entry))
            elif entry.is_file():
                out.append((dir_key + name, entry))
    out.sort(key=lambda item: item[0])
    return out


def group(
    items: Iterator[tuple[str, os.stat_result | None]], prefix: str, delimiter: str
) -> Iterator[tuple[str, os.stat_result | None]]:
    """S3's delimiter rule on a flat listing: keys with the delimiter after the prefix roll up
    into one common prefix (they are adjacent in key order)."""
    last = None
    for key, st in items:
        i = key.find(delimiter, len(prefix)) if delimiter else -1
        if i < 0:
            yield key, st
            continue
        common = key[: i + len(delimiter)]
        if common != last:
            last = common
            yield common, None


def remove(path: Path, marker: bool) -> None:
    if marker:
        os.rmdir(path)  # ENOTEMPTY: reported; a directory with objects keeps its marker
    elif path.is_dir():
        return  # "a" when only "a/" exists: no such object
    else:
        os.unlink(path)


def pread(fd: int, start: int, end: int) -> bytes:
    chunks = []
    while start < end:
        chunk = os.pread(fd, end - start, start)
        if not chunk:
            break
        chunks.append(chunk)
        start += len(chunk)
    return b"".join(chunks)


def blocks(fd: int, size: int) -> Iterator[bytes]:
    for start in range(0, size, COPY_BLOCK):
        yield pread(fd, start, min(size, start + COPY_BLOCK))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Fd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)


def scan(
    root: Path, prefix: str, *, descend: bool, token: str | None
) -> Iterator[tuple[str, os.stat_result | None]]:
    """Keys starting with `prefix` in key order: (key, stat) for objects; with descend
    False, a subdirectory is (its prefix, None)."""
    dir_key, _, name_prefix = prefix.rpartition("/")
    dir_key = dir_key + "/" if dir_key else ""
    try:
        if dir_key:
            check_key(dir_key)
        base = root / dir_key if dir_key else root
        st = os.stat(base)
    except (InvalidKey, FileNotFoundError, NotADirectoryError):
        return
    if not stat.S_ISDIR(st.st_mode):
        return
    if dir_key and not name_prefix:
        yield dir_key, st  # the directory's own marker
    yield from _walk(base, dir_key, name_prefix, descend, token)

def _walk(
    path: Path, dir_key: str, name_prefix: str, descend: bool, token: str | None
) -> Iterator[tuple[str, os.stat_result | None]]:
    for key, entry in entries(path, dir_key, name_prefix):
        if key.endswith("/"):
            # Skip a whole subtree that the token is past.
            if token is not None and key < token and not token.startswith(key):
                continue
            if not descend:
                yield key, None
                continue
            yield key, entry.stat()
            yield from _walk(Path(entry.path), key, "", descend, token)
        else:
            with contextlib.suppress(FileNotFoundError):  # removed since the scan
                yield key, entry.stat()
