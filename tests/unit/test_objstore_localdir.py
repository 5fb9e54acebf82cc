"""A local directory as the bucket (storage/objstore/localdir.py): the shared contract, plus
what only a directory has — keys that clash with its structure, files a user dropped in, the
private .objcache/ area, and the sidecar records used where there are no user xattrs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from objstore_contract import StoreContract, list_all, md5, multipart_etag

from storage.objstore import InvalidKey, PreconditionFailed, StoreError
from storage.objstore.localdir import EMPTY_MD5, LocalDirStore


class TestLocalDirContract(StoreContract):
    @pytest.fixture(params=["xattr", "sidecar"])
    def objstore(self, request, tmp_path):
        return LocalDirStore(tmp_path / "root", use_xattrs=request.param == "xattr")


@pytest.fixture(params=["xattr", "sidecar"])
def store(request, tmp_path) -> LocalDirStore:
    return LocalDirStore(tmp_path / "root", use_xattrs=request.param == "xattr")


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/./b", "a/../b", "..", ".objcache/x",
                                 ".objcache/", "x/" + "n" * 256, "nul\0byte", "\udcff"])
async def test_keys_a_directory_cannot_hold(store, key):
    with pytest.raises(InvalidKey):
        await store.put(key, b"x")


async def test_objects_and_directories_clash(store):
    await store.put("a", b"file")
    with pytest.raises(InvalidKey, match="is an object"):
        await store.put("a/b", b"under a file")
    with pytest.raises(InvalidKey):
        await store.put("a/", b"")
    await store.put("d/e", b"x")
    with pytest.raises(InvalidKey, match="directory"):
        await store.put("d", b"where a directory is")
    with pytest.raises(InvalidKey, match="marker"):
        await store.put("m/", b"bytes in a marker")
    assert await store.head("a") is not None
    assert await store.head("a/") is None  # a file is not a marker
    assert await store.head("d") is None  # a directory is the object "d/", not "d"


async def test_a_marker_and_an_object_under_it_put_at_once(store):
    """Regression: a put making the directory raced another put's check and answered
    InvalidKey ("is an object, not a directory") for a key that was fine."""
    import trio

    for i in range(40):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.put, f"d{i}/", b"")
            for j in range(3):
                nursery.start_soon(store.put, f"d{i}/x{j}", b"data")
    for i in range(40):
        for key in (f"d{i}/", f"d{i}/x0", f"d{i}/x1", f"d{i}/x2"):
            assert await store.head(key) is not None, key


async def test_every_directory_is_a_marker(store):
    await store.put("x/y/z", b"1")
    info = await store.head("x/y/")
    assert (info.key, info.size, info.etag) == ("x/y/", 0, EMPTY_MD5)
    assert await store.put("empty/", b"", metadata={"mode": "700"}) == EMPTY_MD5
    assert dict((await store.head("empty/")).metadata) == {"mode": "700"}
    assert await store.delete_many(["x/y/"]) == {"x/y/": "ENOTEMPTY: Directory not empty"}
    assert await store.delete_many(["empty/"]) == {}
    assert await store.head("empty/") is None


async def test_user_dropped_file_is_served_with_a_stable_etag(store):
    path = store.root / "dropped" / "report.txt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"from the user")
    info = await store.head("dropped/report.txt")
    assert (info.size, dict(info.metadata)) == (13, {})
    assert info.etag != md5(b"from the user")  # not read to hash it: (ino, mtime, size)
    assert (await store.head("dropped/report.txt")).etag == info.etag
    assert await store.get_range("dropped/report.txt", 5, 8, if_match=info.etag) == b"the"
    assert (await list_all(store, "dropped/"))[0] == ["dropped/", "dropped/report.txt"]
    path.write_bytes(b"changed by the user")
    with pytest.raises(PreconditionFailed):
        await store.get_range("dropped/report.txt", 0, 4, if_match=info.etag)


async def test_our_record_is_ignored_once_the_user_changes_the_file(store):
    etag = await store.put("ours", b"written by us", metadata={"k": "v"})
    with open(store.root / "ours", "r+b") as f:  # in place: the xattr or sidecar stays
        f.write(b"W")
    info = await store.head("ours")
    assert info.etag != etag
    assert dict(info.metadata) == {}


async def test_private_area_is_never_listed(store):
    upload = await store.create_multipart("up")
    await store.upload_part("up", upload, 1, b"staged")
    await store.put("visible", b"1")
    assert (await list_all(store, ""))[:2] == (["visible"], [])
    assert (await list_all(store, "", delimiter=""))[0] == ["visible"]
    assert (await list_all(store, ".obj"))[:2] == ([], [])
    assert list((store.root / ".objcache" / "tmp").iterdir()) == []  # no temp files left


async def test_multipart_etag_is_the_aws_one(store):
    parts = [b"a" * (5 << 20), b"tail"]
    upload = await store.create_multipart("mp")
    etags = [(n, await store.upload_part("mp", upload, n, p)) for n, p in enumerate(parts, 1)]
    assert await store.complete_multipart("mp", upload, etags) == multipart_etag(parts)


async def test_small_parts_are_refused_like_s3(store):
    upload = await store.create_multipart("small")
    e1 = await store.upload_part("small", upload, 1, b"too small")
    e2 = await store.upload_part("small", upload, 2, b"last")
    with pytest.raises(StoreError, match="EntityTooSmall"):
        await store.complete_multipart("small", upload, [(1, e1), (2, e2)])
    with pytest.raises(StoreError, match="InvalidPart"):
        await store.complete_multipart("small", upload, [(1, md5(b"other"))])
    assert await store.complete_multipart("small", upload, [(2, e2)]) == md5(
        bytes.fromhex(e2)) + "-1"
    assert await store.get_range("small", 0, 100) == b"last"


async def test_observe_sees_each_operation(tmp_path):
    seen = []
    store = LocalDirStore(tmp_path / "root", observe=lambda *a: seen.append(a))
    await store.put("k", b"12345")
    await store.get_range("k", 0, 3)
    assert await store.head("absent") is None
    with pytest.raises(InvalidKey):
        await store.put("k/x", b"")
    assert [(op, n, kind) for op, _, n, kind in seen] == [
        ("put", 5, None), ("get", 3, None), ("head", 0, None), ("put", 0, "invalid")]
    assert all(s >= 0 for _, s, _, _ in seen)


async def test_a_file_url_root_is_created(tmp_path):
    store = LocalDirStore(tmp_path / "new" / "bucket")
    assert store.url == f"file://{tmp_path}/new/bucket"
    assert (tmp_path / "new" / "bucket").is_dir()
    with pytest.raises(StoreError):
        LocalDirStore(tmp_path / "missing", create=False)


async def test_non_utf8_names_are_skipped(store):
    os.mkdir(bytes(store.root) + b"/bad\xff")
    await store.put("good", b"1")
    assert (await list_all(store, ""))[:2] == (["good"], [])


async def test_sidecar_records_survive_reopening(tmp_path: Path):
    store = LocalDirStore(tmp_path / "root", use_xattrs=False)
    etag = await store.put("s/k", b"data", metadata={"a": "b"})
    again = LocalDirStore(tmp_path / "root", use_xattrs=False)
    info = await again.head("s/k")
    assert (info.etag, dict(info.metadata)) == (etag, {"a": "b"})
    await again.delete_many(["s/k"])
    assert list((tmp_path / "root" / ".objcache" / "meta").iterdir()) == []


class _Listing:
    """What os.scandir gives, with every listed file removed before the caller sees it."""

    def __init__(self, entries: list[os.DirEntry]) -> None:
        self.entries = entries

    def __iter__(self):
        return iter(self.entries)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def test_a_start_skips_temp_files_another_process_removes_meanwhile(tmp_path, monkeypatch):
    """Every node of a local cluster over one file:// bucket cleans the shared temp area as it
    starts, while another's start probes for xattrs with a temp file it removes at once: a
    file listed and gone before its stat must not stop the start (seen in CI: a node exited
    with FileNotFoundError). Old leftovers are still removed."""
    LocalDirStore(tmp_path / "root")
    tmp = tmp_path / "root" / ".objcache" / "tmp"
    (tmp / "gone").write_bytes(b"")
    (tmp / "leftover").write_bytes(b"")
    os.utime(tmp / "leftover", (0, 0))  # a crash's leftover, long past TMP_MAX_AGE_S
    real = os.scandir

    def racing(path):
        entries = list(real(path))
        if Path(path) == tmp:
            os.unlink(tmp / "gone")  # the other process removes its file
        return _Listing(entries)

    monkeypatch.setattr(os, "scandir", racing)
    LocalDirStore(tmp_path / "root")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp.iterdir()) == []
