"""A local directory as an object store: objects are ordinary files at their key path.

Rules:
- Object "a/b" is the file ROOT/a/b, so a user can drop files in and see them served. Every
  directory is a marker object ("a/", size 0, the etag of no bytes): the model of a bucket
  whose prefixes all have markers. A marker cannot hold bytes, an object cannot sit where a
  directory is or under a file ("a" exists, put "a/b"): both are InvalidKey.
- ROOT/.objcache/ is ours (temp files, multipart uploads, sidecars) and never listed; keys
  starting with ".objcache/" are InvalidKey. So are keys with empty, "." or ".." components.
- ETags: a file we wrote has the md5 hex of its bytes (S3's "<md5 of part md5s>-N" after a
  multipart upload); its etag and metadata are kept, with the (st_ino, st_mtime_ns, st_size) they
  belong to, as JSON in the xattr `user.objcache` when the file system has user xattrs, else in a
  sidecar ROOT/.objcache/meta/<sha256 of the key>.json. A file whose stamp does not match (a user
  put it there or changed it) has the etag blake2b(ino, mtime_ns, size): stable while it stays.
- Writes go to a temp file that is fsynced and renamed into place, then the directory is
  fsynced: a reader sees the old object or the new one, and a put is durable once it returns.
  get_range reads through one open descriptor, so an If-Match check and the bytes agree.
- Listings are emulated by directory scans, in UTF-8 byte order like S3 (for valid UTF-8 that
  is code point order, Python's str order); names that are not UTF-8 are skipped. The page
  token is the last key or prefix returned.
- Blocking calls run in worker threads under one CapacityLimiter (localfs.py holds the
  blocking helpers).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import trio

from storage.objstore import localfs
from storage.objstore.base import (
    NO_METADATA,
    AccessDenied,
    InvalidKey,
    ListPage,
    NoSuchKey,
    ObjectInfo,
    Observe,
    PreconditionFailed,
    StoreError,
    StoreUnavailable,
    check_metadata,
    check_part_number,
    check_range,
)

T = TypeVar("T")

ADMIN = localfs.ADMIN
XATTR = "user.objcache"
EMPTY_MD5 = hashlib.md5(b"").hexdigest()
MIN_PART_BYTES = 5 << 20  # like S3: every part but the last
COPY_BLOCK = localfs.COPY_BLOCK
TMP_MAX_AGE_S = 3600  # temp files older than this are a crash's leftovers

_KINDS: dict[type[StoreError], str] = {
    NoSuchKey: "not_found", PreconditionFailed: "precondition", AccessDenied: "denied",
    InvalidKey: "invalid", StoreUnavailable: "server",
}


class LocalDirStore:
    """A directory as an ObjectStore (module rules)."""

    def __init__(
        self, root: str | os.PathLike[str], *, create: bool = True, observe: Observe | None = None,
        max_threads: int = 8, use_xattrs: bool | None = None,
    ) -> None:
        self.root = Path(root).absolute()
        self.url = f"file://{self.root}"
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        if not self.root.is_dir():
            raise StoreError(f"{self.url}: not a directory")
        self._admin = self.root / ADMIN
        for sub in ("tmp", "uploads", "meta"):
            (self._admin / sub).mkdir(parents=True, exist_ok=True)
        self._clean_tmp()
        self.xattrs = self._probe_xattrs() if use_xattrs is None else use_xattrs
        self._observe = observe
        self._limiter = trio.CapacityLimiter(max_threads)

    def __repr__(self) -> str:
        return f"LocalDirStore({self.url!r})"

    async def _run(self, op: str, fn: Callable[..., tuple[T, int]], *args: Any) -> T:
        t0 = time.perf_counter()
        try:
            value, nbytes = await trio.to_thread.run_sync(
                localfs.mapped, op, args[0] if args else "", fn, *args, limiter=self._limiter)
        except StoreError as e:
            if self._observe is not None:
                self._observe(op, time.perf_counter() - t0, 0, _KINDS.get(type(e), "invalid"))
            raise
        if self._observe is not None:
            self._observe(op, time.perf_counter() - t0, nbytes, None)
        return value

    # -- the protocol ---------------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo | None:
        return await self._run("head", self._head, key)

    async def list_page(
        self, prefix: str, *, delimiter: str = "/", token: str | None = None, max_keys: int = 1000
    ) -> ListPage:
        assert 1 <= max_keys <= 1000, max_keys
        return await self._run("list", self._list, prefix, delimiter, token, max_keys)

    async def get_range(
        self, key: str, start: int, end: int, *, if_match: str | None = None
    ) -> bytes:
        check_range(start, end)
        return await self._run("get", self._get_range, key, start, end, if_match)

    async def put(
        self, key: str, data: bytes, *, metadata: Mapping[str, str] = NO_METADATA
    ) -> str:
        return await self._run("put", self._put, key, data, check_metadata(metadata))

    async def create_multipart(
        self, key: str, *, metadata: Mapping[str, str] = NO_METADATA
    ) -> str:
        meta = check_metadata(metadata)
        return await self._run("create_multipart", self._create_multipart, key, meta)

    async def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> str:
        check_part_number(part_number)
        return await self._run("upload_part", self._upload_part, key, upload_id, part_number,
                               lambda: data)

    async def upload_part_copy(
        self, key: str, upload_id: str, part_number: int, src_key: str, start: int, end: int,
        *, if_match: str | None = None,
    ) -> str:
        check_part_number(part_number)
        assert 0 <= start < end, (start, end)

        def read() -> bytes:
            data, _ = self._get_range(src_key, start, end, if_match)
            if len(data) < end - start:
                raise StoreError(f"upload_part_copy {src_key!r}: range [{start}, {end}) is "
                                 "past the end of the object")
            return data

        return await self._run("upload_part_copy", self._upload_part, key, upload_id,
                               part_number, read)

    async def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> str:
        assert parts, "a multipart upload needs at least one part"
        return await self._run("complete_multipart", self._complete, key, upload_id, parts)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await self._run("abort_multipart", self._abort, key, upload_id)

    async def list_multipart(self, prefix: str = "") -> list[tuple[str, str, int]]:
        return await self._run("list_multipart", self._list_multipart, prefix)

    async def copy(
        self, src_key: str, dst_key: str, *, metadata: Mapping[str, str] | None = None,
        if_match: str | None = None,
    ) -> str:
        meta = None if metadata is None else check_metadata(metadata)
        return await self._run("copy", self._copy, src_key, dst_key, meta, if_match)

    async def delete_many(self, keys: Sequence[str]) -> dict[str, str]:
        return await self._run("delete_many", self._delete_many, list(keys))

    async def aclose(self) -> None:
        pass

    # -- paths, records, etags ------------------------------------------------------------

    def _path(self, key: str) -> tuple[Path, bool]:
        """The path of `key` and whether it is a directory marker; InvalidKey if it has none."""
        localfs.check_key(key)
        marker = key.endswith("/")
        return self.root / (key[:-1] if marker else key), marker

    def _info(self, key: str, st: os.stat_result, fd: int | None = None) -> ObjectInfo:
        if stat.S_ISDIR(st.st_mode):
            meta = self._record(key, st, fd).get("meta", {}) if key else {}
            return ObjectInfo(key, 0, EMPTY_MD5, st.st_mtime_ns, meta)
        rec = self._record(key, st, fd)
        etag = rec.get("etag") or localfs.stable_etag(st)
        return ObjectInfo(key, st.st_size, etag, st.st_mtime_ns, rec.get("meta", {}))

    def _record(self, key: str, st: os.stat_result, fd: int | None) -> dict[str, Any]:
        """Our etag and metadata for `key`, if they belong to the file as it is (`st`)."""
        try:
            if self.xattrs:
                raw = os.getxattr(fd if fd is not None else self._path(key)[0], XATTR)
            else:
                raw = self._sidecar(key).read_bytes()
        except OSError as e:
            if e.errno in (errno.ENODATA, errno.ENOENT):
                return {}
            raise
        rec = json.loads(raw)
        return rec if rec.get("stamp") == list(localfs.stamp(st)) else {}

    def _sidecar(self, key: str) -> Path:
        return self._admin / "meta" / (hashlib.sha256(key.encode()).hexdigest() + ".json")

    def _write_record(self, key: str, fd: int, etag: str, meta: Mapping[str, str]) -> None:
        st = os.fstat(fd)
        rec = {"etag": etag, "meta": dict(meta), "stamp": list(localfs.stamp(st))}
        raw = json.dumps(rec).encode()
        if self.xattrs:
            os.setxattr(fd, XATTR, raw)
        else:
            side = self._sidecar(key)
            tmp = self._tmp_path()
            tmp.write_bytes(raw)
            os.replace(tmp, side)

    def _tmp_path(self) -> Path:
        return self._admin / "tmp" / secrets.token_hex(8)

    def _probe_xattrs(self) -> bool:
        probe = self._tmp_path()
        probe.touch()
        try:
            os.setxattr(probe, XATTR, b"{}")
            return True
        except OSError:
            return False  # ENOTSUP, EPERM: no user xattrs here; sidecars instead
        finally:
            probe.unlink()

    def _clean_tmp(self) -> None:
        cutoff = time.time() - TMP_MAX_AGE_S
        for entry in os.scandir(self._admin / "tmp"):
            # Other processes share the directory (every node of a local cluster over one
            # file:// bucket): a temp file may go between the listing and the stat or unlink,
            # as another node's xattr probe does during its own start.
            with contextlib.suppress(FileNotFoundError):
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)

    # -- reads ----------------------------------------------------------------------------

    def _head(self, key: str) -> tuple[ObjectInfo | None, int]:
        path, marker = self._path(key)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None, 0
        if stat.S_ISDIR(st.st_mode) != marker or not (marker or stat.S_ISREG(st.st_mode)):
            return None, 0
        return self._info(key, st), 0

    def _get_range(
        self, key: str, start: int, end: int, if_match: str | None
    ) -> tuple[bytes, int]:
        with self._opened("get", key, if_match) as (fd, st, _, marker):
            data = b"" if marker else localfs.pread(fd, start, min(end, st.st_size))
        return data, len(data)

    @contextlib.contextmanager
    def _opened(self, op: str, key: str, if_match: str | None
                ) -> Iterator[tuple[int, os.stat_result, ObjectInfo, bool]]:
        """The object at `key` open for reading: (fd, stat, info, is a marker); NoSuchKey
        when there is none, PreconditionFailed when its etag is not `if_match`."""
        path, marker = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise NoSuchKey(f"{op} {key!r}: no such key") from None
        with contextlib.closing(localfs.Fd(fd)):
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode) != marker or not (marker or stat.S_ISREG(st.st_mode)):
                raise NoSuchKey(f"{op} {key!r}: no such key")
            info = self._info(key, st, fd)
            if if_match is not None and info.etag != if_match.strip('"'):
                raise PreconditionFailed(f"{op} {key!r}: etag is {info.etag}, not {if_match}")
            yield fd, st, info, marker

    def _list(
        self, prefix: str, delimiter: str, token: str | None, max_keys: int
    ) -> tuple[ListPage, int]:
        items: Iterator[tuple[str, os.stat_result | None]]
        if delimiter == "/":
            items = localfs.scan(self.root, prefix, descend=False, token=token)
        else:
            flat = localfs.scan(self.root, prefix, descend=True, token=token)
            items = localfs.group(flat, prefix, delimiter)
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        last = None
        for key, st in items:
            if token is not None and key <= token:
                continue
            if last is not None and len(objects) + len(prefixes) == max_keys:
                return ListPage(tuple(objects), tuple(prefixes), last), 0
            last = key
            if st is None:
                prefixes.append(key)
            else:
                info = self._info(key, st)
                objects.append(ObjectInfo(info.key, info.size, info.etag, info.mtime_ns))
        return ListPage(tuple(objects), tuple(prefixes), None), 0

    # -- writes ---------------------------------------------------------------------------

    def _put(self, key: str, data: bytes, meta: dict[str, str]) -> tuple[str, int]:
        path, marker = self._path(key)
        if marker:
            if data:
                raise InvalidKey(f"put {key!r}: a directory marker cannot hold bytes")
            return self._put_marker(key, path, meta), 0
        etag = hashlib.md5(data).hexdigest()

        def write(f: Any) -> str:
            f.write(data)
            return etag

        self._install(key, path, meta, write)
        return etag, len(data)

    def _put_marker(self, key: str, path: Path, meta: Mapping[str, str]) -> str:
        self._make_dirs(key, path)
        if meta:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            with contextlib.closing(localfs.Fd(fd)):
                self._write_record(key, fd, EMPTY_MD5, meta)
                os.fsync(fd)
        return EMPTY_MD5

    def _install(
        self, key: str, path: Path, meta: Mapping[str, str], write: Callable[[Any], str]
    ) -> None:
        """Write a temp file with `write` (which returns the etag of what it wrote), fsync it,
        record its etag and metadata, rename it to `path`."""
        self._make_dirs(key, path.parent)
        tmp = self._tmp_path()
        try:
            with open(tmp, "wb") as f:
                etag = write(f)
                f.flush()
                os.fsync(f.fileno())
                self._write_record(key, f.fileno(), etag, meta)
            try:
                os.rename(tmp, path)
            except IsADirectoryError:
                raise InvalidKey(f"{key!r}: a directory ({key}/) is there") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        localfs.fsync_dir(path.parent)

    def _make_dirs(self, key: str, path: Path) -> None:
        """mkdir -p inside ROOT, each new directory made durable in its parent."""
        missing: list[Path] = []
        p = path
        while p != self.root and not p.is_dir():
            # is_dir again: another put may have made the directory since the loop's check.
            if (p.exists() or p.is_symlink()) and not p.is_dir():
                raise InvalidKey(f"{key!r}: {p.relative_to(self.root)} is an object, "
                                 "not a directory")
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            with contextlib.suppress(FileExistsError):  # made meanwhile by another put
                d.mkdir()
            localfs.fsync_dir(d.parent)

    def _copy(
        self, src_key: str, dst_key: str, meta: dict[str, str] | None, if_match: str | None
    ) -> tuple[str, int]:
        dst, dst_marker = self._path(dst_key)
        with self._opened("copy", src_key, if_match) as (fd, st, info, src_marker):
            meta = dict(info.metadata) if meta is None else meta
            if src_marker or dst_marker:
                if src_marker != dst_marker:
                    raise InvalidKey(f"copy {src_key!r} to {dst_key!r}: a directory marker and "
                                     "an object")
                return self._put_marker(dst_key, dst, meta), 0
            md5 = hashlib.md5()

            def write(f: Any) -> str:
                for block in localfs.blocks(fd, st.st_size):
                    md5.update(block)
                    f.write(block)
                return md5.hexdigest()

            self._install(dst_key, dst, meta, write)
        return md5.hexdigest(), 0

    def _delete_many(self, keys: list[str]) -> tuple[dict[str, str], int]:
        failed: dict[str, str] = {}
        parents: set[Path] = set()
        for key in keys:
            try:
                path, marker = self._path(key)
                localfs.remove(path, marker)
            except InvalidKey as e:
                failed[key] = f"InvalidKey: {e}"
                continue
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
                    continue  # no such object: not an error, like S3
                failed[key] = f"{errno.errorcode.get(e.errno or 0, 'EIO')}: {e.strerror}"
                continue
            if not self.xattrs:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._sidecar(key))
            parents.add(path.parent)
        for parent in parents:
            with contextlib.suppress(FileNotFoundError):
                localfs.fsync_dir(parent)
        return failed, 0

    # -- multipart ------------------------------------------------------------------------

    def _upload_dir(self, key: str, upload_id: str) -> Path:
        if not upload_id or not all(c in "0123456789abcdef" for c in upload_id):
            raise NoSuchKey(f"upload {upload_id!r} of {key!r}: no such upload")
        d = self._admin / "uploads" / upload_id
        try:
            info = json.loads((d / "upload.json").read_bytes())
        except FileNotFoundError:
            raise NoSuchKey(f"upload {upload_id!r} of {key!r}: no such upload") from None
        if info["key"] != key:
            raise NoSuchKey(f"upload {upload_id!r} is of {info['key']!r}, not {key!r}")
        return d

    def _create_multipart(self, key: str, meta: dict[str, str]) -> tuple[str, int]:
        if self._path(key)[1]:
            raise InvalidKey(f"create_multipart {key!r}: a directory marker cannot hold bytes")
        upload_id = secrets.token_hex(16)
        d = self._admin / "uploads" / upload_id
        d.mkdir()
        info = {"key": key, "meta": meta, "initiated_ns": time.time_ns()}
        (d / "upload.json.tmp").write_bytes(json.dumps(info).encode())
        os.rename(d / "upload.json.tmp", d / "upload.json")
        return upload_id, 0

    def _upload_part(
        self, key: str, upload_id: str, part_number: int, data_fn: Callable[[], bytes]
    ) -> tuple[str, int]:
        d = self._upload_dir(key, upload_id)
        data = data_fn()
        etag = hashlib.md5(data).hexdigest()
        tmp = d / f"{part_number:05d}.tmp-{secrets.token_hex(4)}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        for old in d.glob(f"{part_number:05d}.*"):
            if old != tmp:
                old.unlink()
        os.rename(tmp, d / f"{part_number:05d}.{etag}")
        return etag, len(data)

    def _complete(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> tuple[str, int]:
        d = self._upload_dir(key, upload_id)
        meta = json.loads((d / "upload.json").read_bytes())["meta"]
        files = []
        for i, (n, etag) in enumerate(sorted(parts)):
            f = d / f"{n:05d}.{etag.strip(chr(34))}"
            if not f.is_file():
                raise StoreError(f"complete_multipart {key!r}: part {n} with etag {etag} "
                                 "was not uploaded (InvalidPart)")
            if i < len(parts) - 1 and f.stat().st_size < MIN_PART_BYTES:
                raise StoreError(f"complete_multipart {key!r}: part {n} is smaller than 5 MiB "
                                 "and not the last (EntityTooSmall)")
            files.append(f)
        digests = b"".join(bytes.fromhex(f.name.split(".")[1]) for f in files)
        etag = f"{hashlib.md5(digests).hexdigest()}-{len(files)}"

        def write(out: Any) -> str:
            for f in files:
                with open(f, "rb") as src:
                    shutil.copyfileobj(src, out, COPY_BLOCK)
            return etag

        self._install(key, self._path(key)[0], meta, write)
        shutil.rmtree(d)
        return etag, 0

    def _abort(self, key: str, upload_id: str) -> tuple[None, int]:
        try:
            d = self._upload_dir(key, upload_id)
        except NoSuchKey:
            return None, 0  # unknown or already aborted: done
        shutil.rmtree(d)
        return None, 0

    def _list_multipart(self, prefix: str) -> tuple[list[tuple[str, str, int]], int]:
        out = []
        for entry in os.scandir(self._admin / "uploads"):
            try:
                info = json.loads(Path(entry.path, "upload.json").read_bytes())
            except FileNotFoundError:
                continue  # being created or aborted
            if info["key"].startswith(prefix):
                out.append((info["key"], entry.name, info["initiated_ns"]))
        return sorted(out), 0


