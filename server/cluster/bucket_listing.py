"""What a bucket listing means for one directory: pure helpers of gateway_bucket_load.py.

Rules:
- A directory bound to the bucket lists its prefix with delimiter "/": each object directly
  under the prefix is a file, each common prefix a directory. The marker object whose key is
  the prefix itself is the directory, not an entry. An object `x` next to a prefix `x/`: the
  directory wins. A name that cannot be an NFS name (bucket.name_ok, or longer than the
  file system's max_name_bytes) is skipped. Each skip is logged.
- An entry is *from the bucket* when its inode names the directory's store and the key its
  name has under the directory (bucket.child_key), the bucket holds its latest version
  (write-back: dver == cver), and, for anything but a directory, a version read (etag !=
  b"") and bytes not held inline. Only such entries are changed or removed by a listing;
  entries made or changed through NFS and not yet written back are never touched, and
  neither is an entry whose name the bucket has but whose inode is not from the bucket.
- Attributes of a new entry: the object's x-amz-meta-* (below) where present and valid, else
  the bucket defaults (BucketConfig). The write-back writes the same names:
    mode            decimal; the permission bits are taken (mode & 0o7777), so s3fs's full
                    st_mode works too
    uid, gid        decimal
    mtime-ns        decimal nanoseconds since the epoch (else the object's LastModified)
    symlink-target  the entry is a symbolic link to this target: the target's bytes
                    percent-encoded (urllib.parse.quote(target, safe="/")), since metadata
                    values travel as printable ASCII; the object's bytes are not used
    type            "symlink" (optional, with symlink-target); any other value: not a link
- Pure: no I/O, no clock; `now` comes in.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote_from_bytes, unquote_to_bytes

from nfs_gateway.backend import FileType
from server.cluster.bucket import BucketConfig, child_key, name_ok
from server.fs.records import Dirent, Inode
from storage.objstore.base import ListPage, ObjectInfo

log = logging.getLogger("objcache.bucket")

META_MODE = "mode"
META_UID = "uid"
META_GID = "gid"
META_MTIME_NS = "mtime-ns"
META_SYMLINK_TARGET = "symlink-target"
META_TYPE = "type"
TYPE_SYMLINK = "symlink"
MAX_ID = (1 << 32) - 1
MAX_TIME_NS = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class Listed:
    """One name of a directory as the bucket has it."""

    name: bytes
    key: bytes  # the object's key, or a directory's prefix (ending in "/")
    is_dir: bool
    size: int = 0
    etag: bytes = b""
    mtime_ns: int = 0


@dataclass(frozen=True, slots=True)
class NewAttrs:
    """What CreateInode gets for a new entry."""

    ftype: FileType
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    target: bytes = b""


@dataclass(frozen=True, slots=True)
class Action:
    """One name's change. `create` alone: make the entry; `old` alone: remove it; both:
    replace it (its kind changed); `change` with `old`: the clean file's object changed."""

    name: bytes
    create: Listed | None = None
    change: Listed | None = None
    old: Inode | None = None
    old_dirent: Dirent | None = None


def nfs_name(name: str, max_name_bytes: int) -> bytes | None:
    raw = name.encode("utf-8")
    if not name_ok(raw) or len(raw) > max_name_bytes:
        log.info("bucket: %r cannot be an NFS name; skipped", name)
        return None
    return raw


def add_page(listed: dict[bytes, Listed], prefix: str, page: ListPage,
             max_name_bytes: int) -> None:
    """The entries of one listing page, added to `listed` (module rules)."""
    for obj in page.objects:
        if obj.key == prefix or not obj.key.startswith(prefix):
            continue  # the directory's own marker
        name = nfs_name(obj.key[len(prefix):], max_name_bytes)
        if name is None:
            continue
        if name in listed:
            log.info("bucket: object %r and prefix %r/ both exist: the directory wins",
                     obj.key, obj.key)
            continue
        listed[name] = Listed(name, obj.key.encode(), False, obj.size, obj.etag.encode(),
                              obj.mtime_ns)
    for sub in page.prefixes:
        if not sub.startswith(prefix) or not sub.endswith("/"):
            continue
        name = nfs_name(sub[len(prefix):-1], max_name_bytes)
        if name is None:
            continue
        if name in listed and not listed[name].is_dir:
            log.info("bucket: object %r and prefix %r both exist: the directory wins",
                     sub[:-1], sub)
        listed[name] = Listed(name, sub.encode(), True)


def from_bucket(d: Inode, name: bytes, child: Inode) -> bool:
    """Whether `child`, named `name` in `d`, is the bucket's (module rules)."""
    if child.store != d.store or not d.store or child.dver != child.cver:
        return False
    if child.ftype == FileType.DIR:
        return child.okey == child_key(d.okey, name, True)
    return bool(child.etag) and not child.inline and child.okey == child_key(d.okey, name, False)


def diff(d: Inode, listed: Mapping[bytes, Listed], current: Mapping[bytes, Dirent],
         inodes: Mapping[int, Inode | None]) -> list[Action]:
    """What makes the directory's entries match the listing, in name order."""
    out: list[Action] = []
    for name in sorted(set(listed) | set(current)):
        lst, ent = listed.get(name), current.get(name)
        if ent is None:
            assert lst is not None
            out.append(Action(name, create=lst))
            continue
        child = inodes.get(ent.ino)
        if child is None or not from_bucket(d, name, child):
            continue  # made here, or racing with a change: left alone
        if lst is None:
            out.append(Action(name, old=child, old_dirent=ent))
        elif lst.is_dir != (child.ftype == FileType.DIR):
            out.append(Action(name, create=lst, old=child, old_dirent=ent))
        elif lst.is_dir or lst.etag == child.etag:
            continue
        elif child.ftype == FileType.REG:
            out.append(Action(name, change=lst, old=child, old_dirent=ent))
        else:  # a symbolic link whose object changed: made again from its metadata
            out.append(Action(name, create=lst, old=child, old_dirent=ent))
    return out


def confirm(a: Action, info: ObjectInfo | None) -> Action | None:
    """`a` after a HEAD of its key made after the listing (`info`, None: no such object),
    which is the newer word. Directories are not HEADed for this (their marker's metadata
    only); nothing to do any more: None."""
    lst, old = a.create, a.old
    if lst is not None and lst.is_dir:
        return a
    if lst is not None and (old is None or old.ftype == FileType.DIR):
        # A new file, or a directory replaced by one: made as the HEAD has it.
        return None if info is None else dataclasses.replace(a, create=_newer(lst, info))
    assert old is not None  # a file changed, a link changed (made again), a file gone
    if info is None:
        return Action(a.name, old=old, old_dirent=a.old_dirent)  # gone
    if info.etag.encode() == old.etag:
        return None  # the version we have (the listing was older)
    now = _newer(Listed(a.name, old.okey, False), info)
    if old.ftype == FileType.REG:
        return Action(a.name, change=now, old=old, old_dirent=a.old_dirent)
    return Action(a.name, create=now, old=old, old_dirent=a.old_dirent)  # a link: made again


def _newer(lst: Listed, info: ObjectInfo) -> Listed:
    return Listed(lst.name, lst.key, False, info.size, info.etag.encode(), info.mtime_ns)


def new_attrs(lst: Listed, meta: Mapping[str, str], bucket: BucketConfig, now: int,
              max_symlink_bytes: int) -> NewAttrs:
    """The attributes of a new entry from its object's metadata (module rules)."""
    default_mode = bucket.dir_mode if lst.is_dir else bucket.file_mode
    mode = _number(meta, META_MODE, default_mode, (1 << 32) - 1) & 0o7777
    uid = _number(meta, META_UID, bucket.uid, MAX_ID)
    gid = _number(meta, META_GID, bucket.gid, MAX_ID)
    mtime = _number(meta, META_MTIME_NS, lst.mtime_ns or now, MAX_TIME_NS)
    if lst.is_dir:
        return NewAttrs(FileType.DIR, mode, uid, gid, mtime)
    target = _symlink_target(meta, max_symlink_bytes)
    if target:
        mode = _number(meta, META_MODE, 0o777, (1 << 32) - 1) & 0o7777
        return NewAttrs(FileType.LNK, mode, uid, gid, mtime, target)
    return NewAttrs(FileType.REG, mode, uid, gid, mtime)


def _number(meta: Mapping[str, str], name: str, default: int, limit: int) -> int:
    raw = meta.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        log.info("bucket: x-amz-meta-%s %r is not a decimal number; ignored", name, raw)
        return default
    if not 0 <= value <= limit:
        log.info("bucket: x-amz-meta-%s %r is out of range; ignored", name, raw)
        return default
    return value


def _symlink_target(meta: Mapping[str, str], max_symlink_bytes: int) -> bytes:
    raw = meta.get(META_SYMLINK_TARGET)
    if raw is None or meta.get(META_TYPE, TYPE_SYMLINK) != TYPE_SYMLINK:
        return b""
    target = unquote_to_bytes(raw)
    if not target or len(target) > max_symlink_bytes or b"\0" in target:
        log.info("bucket: x-amz-meta-%s %r is not a usable target; a regular file instead",
                 META_SYMLINK_TARGET, raw)
        return b""
    return target


def metadata_of(inode: Inode) -> dict[str, str]:
    """The x-amz-meta-* attributes written with an inode's object (this module reads them back)."""
    meta = {META_MODE: str(inode.mode), META_UID: str(inode.uid), META_GID: str(inode.gid),
            META_MTIME_NS: str(inode.mtime_ns)}
    if inode.ftype == FileType.LNK:
        meta[META_TYPE] = TYPE_SYMLINK
        meta[META_SYMLINK_TARGET] = quote_from_bytes(inode.target, safe="/")
    elif inode.ftype not in (FileType.REG, FileType.DIR):
        meta[META_TYPE] = inode.ftype.name.lower()
    return meta
