"""The ObjectStore contract (storage/objstore/__init__.py), as tests every adapter must pass.

A test module subclasses StoreContract and provides the `objstore` fixture:

    class TestLocalDirContract(StoreContract):
        @pytest.fixture
        def objstore(self, tmp_path):
            return LocalDirStore(tmp_path / "root")
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from storage.objstore import NoSuchKey, PreconditionFailed, StoreError

MiB = 1 << 20


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def multipart_etag(parts: list[bytes]) -> str:
    """S3's etag of a multipart object: md5 of the parts' binary md5s, then -N."""
    return md5(b"".join(hashlib.md5(p).digest() for p in parts)) + f"-{len(parts)}"


async def list_all(store: Any, prefix: str, delimiter: str = "/", max_keys: int = 1000):
    """Every page of a listing: (object keys, prefixes, number of pages)."""
    keys: list[str] = []
    prefixes: list[str] = []
    token = None
    for pages in range(1, 1000):
        page = await store.list_page(prefix, delimiter=delimiter, token=token, max_keys=max_keys)
        assert len(page.objects) + len(page.prefixes) <= max_keys
        keys += [o.key for o in page.objects]
        prefixes += page.prefixes
        token = page.next_token
        if token is None:
            return keys, prefixes, pages
    raise AssertionError("listing does not end")


def utf8_sorted(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda k: k.encode("utf-8"))


class StoreContract:
    """Behaviour both backends share; `objstore` is an empty store."""

    async def test_put_head_round_trip_with_metadata(self, objstore):
        etag = await objstore.put("dir/file one", b"hello", metadata={"mode": "644", "uid": "7"})
        assert etag == md5(b"hello")
        info = await objstore.head("dir/file one")
        assert (info.key, info.size, info.etag) == ("dir/file one", 5, etag)
        assert dict(info.metadata) == {"mode": "644", "uid": "7"}
        assert info.mtime_ns > 0
        assert await objstore.head("dir/absent") is None
        assert await objstore.head("dir/file") is None

    @pytest.mark.parametrize("meta", [{"Upper": "x"}, {"sp ace": "x"}, {"": "x"},
                                      {"k": "caf\u00e9"}, {"k": "line\nbreak"}])
    async def test_metadata_must_be_header_safe(self, objstore, meta):
        with pytest.raises(ValueError, match="metadata"):
            await objstore.put("m", b"", metadata=meta)
        with pytest.raises(ValueError, match="metadata"):
            await objstore.create_multipart("m", metadata=meta)
        assert await objstore.head("m") is None

    async def test_overwrite_changes_etag_and_metadata(self, objstore):
        first = await objstore.put("k", b"one", metadata={"a": "1"})
        second = await objstore.put("k", b"two!", metadata={})
        assert first != second
        info = await objstore.head("k")
        assert (info.size, info.etag, dict(info.metadata)) == (4, second, {})

    async def test_empty_object(self, objstore):
        etag = await objstore.put("empty", b"")
        assert etag == md5(b"")
        assert await objstore.get_range("empty", 0, 10) == b""
        assert (await objstore.head("empty")).size == 0

    async def test_get_range(self, objstore):
        data = bytes(range(256)) * 40
        await objstore.put("r", data)
        assert await objstore.get_range("r", 0, len(data)) == data
        assert await objstore.get_range("r", 100, 1000) == data[100:1000]
        assert await objstore.get_range("r", 10000, 20000) == data[10000:]  # clipped at EOF
        assert await objstore.get_range("r", len(data), len(data) + 5) == b""  # past EOF
        assert await objstore.get_range("r", len(data) + 7, len(data) + 9) == b""
        assert await objstore.get_range("r", 5, 5) == b""
        with pytest.raises(NoSuchKey):
            await objstore.get_range("absent", 0, 10)
        with pytest.raises(NoSuchKey):
            await objstore.get_range("absent", 3, 3)
        with pytest.raises(ValueError):
            await objstore.get_range("r", 10, 5)

    async def test_if_match(self, objstore):
        etag = await objstore.put("v", b"version one")
        assert await objstore.get_range("v", 0, 7, if_match=etag) == b"version"
        assert await objstore.get_range("v", 3, 3, if_match=etag) == b""
        await objstore.put("v", b"version two")
        with pytest.raises(PreconditionFailed):
            await objstore.get_range("v", 0, 7, if_match=etag)
        with pytest.raises(PreconditionFailed):
            await objstore.get_range("v", 3, 3, if_match=etag)
        with pytest.raises(PreconditionFailed):
            await objstore.copy("v", "w", if_match=etag)
        assert await objstore.head("w") is None

    async def test_list_with_delimiter_nested_and_markers(self, objstore):
        keys = ["top", "a/1", "a/2", "a/b/x", "a/b/c/y", "d/", "space dir/file name.txt",
                "ünï/ç☃de", "a-c", "a0"]
        for k in keys:
            await objstore.put(k, b"")
        objs, prefixes, _ = await list_all(objstore, "")
        assert objs == utf8_sorted(["top", "a-c", "a0"])
        assert prefixes == utf8_sorted(["a/", "d/", "space dir/", "ünï/"])
        objs, prefixes, _ = await list_all(objstore, "a/")
        assert [k for k in objs if k != "a/"] == ["a/1", "a/2"]  # "a/": a marker, where kept
        assert prefixes == ["a/b/"]
        objs, prefixes, _ = await list_all(objstore, "a/b/")
        assert ([k for k in objs if k != "a/b/"], prefixes) == (["a/b/x"], ["a/b/c/"])
        assert (await list_all(objstore, "d/"))[:2] == (["d/"], [])
        assert (await list_all(objstore, "ünï/"))[0][-1] == "ünï/ç☃de"
        assert (await list_all(objstore, "space dir/"))[0][-1] == "space dir/file name.txt"
        assert (await list_all(objstore, "a/b/c/y"))[:2] == (["a/b/c/y"], [])
        assert (await list_all(objstore, "nothing/"))[:2] == ([], [])

    async def test_list_a_name_prefix(self, objstore):
        for k in ["x/foo", "x/food/1", "x/fob", "x/bar"]:
            await objstore.put(k, b"1")
        objs, prefixes, _ = await list_all(objstore, "x/fo")
        assert (objs, prefixes) == (["x/fob", "x/foo"], ["x/food/"])

    async def test_list_pagination(self, objstore):
        files = [f"p/{i:02d}" for i in range(7)] + ["p/sub1/x", "p/sub2/y", "p/é"]
        for k in files:
            await objstore.put(k, b"x")
        objs, prefixes, pages = await list_all(objstore, "p/", max_keys=2)
        objs = [k for k in objs if k != "p/"]
        assert objs == utf8_sorted([f"p/{i:02d}" for i in range(7)] + ["p/é"])
        assert prefixes == ["p/sub1/", "p/sub2/"]
        assert pages >= 5

    async def test_flat_listing(self, objstore):
        keys = ["f/a", "f/b/c", "f/b/d/e", "f/é", "f/z"]
        for k in keys:
            await objstore.put(k, b"..")
        objs, prefixes, _ = await list_all(objstore, "f/", delimiter="", max_keys=2)
        # Directory markers show where the store keeps them (localdir: every directory).
        assert [k for k in objs if not k.endswith("/")] == utf8_sorted(keys)
        assert prefixes == []
        page = await objstore.list_page("f/", delimiter="")
        assert all(o.size == (0 if o.key.endswith("/") else 2) for o in page.objects)
        assert all(not o.metadata for o in page.objects)

    async def test_listing_info(self, objstore):
        etag = await objstore.put("l/obj", b"12345", metadata={"m": "1"})
        page = await objstore.list_page("l/")
        (info,) = [o for o in page.objects if o.key == "l/obj"]
        assert (info.size, info.etag, dict(info.metadata)) == (5, etag, {})
        assert page.next_token is None

    async def test_multipart_with_part_copy(self, objstore):
        source = bytes(range(256)) * 1000
        await objstore.put("src", source)
        parts_data = [b"a" * (5 * MiB), b"b" * (5 * MiB), b"c" * (5 * MiB), b"tail"]
        upload = await objstore.create_multipart("big/file", metadata={"kind": "mp"})
        assert [(k, u) for k, u, _ in await objstore.list_multipart()] == [("big/file", upload)]
        assert await objstore.list_multipart("other/") == []
        etags = []
        for n, data in enumerate(parts_data[:3], 1):
            etags.append((n, await objstore.upload_part("big/file", upload, n, data)))
        assert etags[0][1] == md5(parts_data[0])
        etags.append((4, await objstore.upload_part_copy("big/file", upload, 4, "src", 1000, 1004)))
        parts_data[3] = source[1000:1004]
        etag = await objstore.complete_multipart("big/file", upload, etags)
        assert etag.endswith("-4")  # AWS: multipart_etag(parts_data); not every server agrees
        info = await objstore.head("big/file")
        assert (info.size, info.etag, dict(info.metadata)) == (15 * MiB + 4, etag, {"kind": "mp"})
        assert await objstore.get_range("big/file", 5 * MiB - 2, 5 * MiB + 2) == b"aabb"
        assert await objstore.get_range("big/file", 15 * MiB - 1, 16 * MiB) == b"c" + source[
            1000:1004]
        assert await objstore.list_multipart() == []
        with pytest.raises(NoSuchKey):  # completed: the upload is gone
            await objstore.upload_part("big/file", upload, 5, b"late")

    async def test_part_copy_checks_the_source_etag(self, objstore):
        old = await objstore.put("src", b"0123456789")
        await objstore.put("src", b"abcdefghij")
        upload = await objstore.create_multipart("dst")
        with pytest.raises(PreconditionFailed):
            await objstore.upload_part_copy("dst", upload, 1, "src", 0, 5, if_match=old)
        await objstore.abort_multipart("dst", upload)

    async def test_abort_and_list_multipart(self, objstore):
        first = await objstore.create_multipart("m/one")
        second = await objstore.create_multipart("m/two")
        await objstore.upload_part("m/one", first, 1, b"part")
        listed = await objstore.list_multipart("m/")
        assert sorted((k, u) for k, u, _ in listed) == [("m/one", first), ("m/two", second)]
        assert all(ns > 0 for _, _, ns in listed)
        await objstore.abort_multipart("m/one", first)
        await objstore.abort_multipart("m/one", first)  # twice: still fine
        assert [(k, u) for k, u, _ in await objstore.list_multipart("m/")] == [("m/two", second)]
        await objstore.abort_multipart("m/two", second)
        assert await objstore.head("m/one") is None
        with pytest.raises(StoreError):
            await objstore.complete_multipart("m/one", first, [(1, md5(b"part"))])

    async def test_copy_keeps_or_replaces_metadata(self, objstore):
        etag = await objstore.put("c/src", b"payload", metadata={"owner": "me"})
        assert await objstore.copy("c/src", "c/same", if_match=etag) == md5(b"payload")
        info = await objstore.head("c/same")
        assert (info.size, dict(info.metadata)) == (7, {"owner": "me"})
        await objstore.copy("c/src", "c/new", metadata={"owner": "you", "x": "1"})
        assert dict((await objstore.head("c/new")).metadata) == {"owner": "you", "x": "1"}
        assert await objstore.get_range("c/new", 0, 100) == b"payload"
        assert dict((await objstore.head("c/src")).metadata) == {"owner": "me"}
        with pytest.raises(NoSuchKey):
            await objstore.copy("c/absent", "c/x")

    async def test_delete_many(self, objstore):
        keys = [f"del/{i}" for i in range(5)]
        for k in keys:
            await objstore.put(k, b"x")
        assert await objstore.delete_many([*keys[:3], "del/missing", "never/was"]) == {}
        assert [await objstore.head(k) is None for k in keys] == [True] * 3 + [False] * 2
        assert await objstore.delete_many([]) == {}
        assert await objstore.delete_many(keys[3:]) == {}
        assert [k for k in (await list_all(objstore, "del/"))[0] if k != "del/"] == []
