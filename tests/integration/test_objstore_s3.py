"""The S3 adapter (storage/objstore/s3.py) against a real S3 server, SeaweedFS: the shared
contract, prefixes, credentials, the multipart copy of large objects, and retries through a
proxy that answers 503 SlowDown, resets connections and stalls requests."""

from __future__ import annotations

import collections
import time

import pytest
import trio
from objstore_contract import MiB, StoreContract, list_all
from s3server import ACCESS_KEY, REGION, S3Bucket
from tools.s3faultproxy import FaultProxy

from storage.objstore import AccessDenied, NoSuchKey, StoreUnavailable
from storage.objstore.s3 import S3Store
from storage.objstore.url import open_store

pytestmark = pytest.mark.integration


def s3_store(bucket: S3Bucket, prefix: str = "", endpoint: str = "", **kw) -> S3Store:
    """An S3Store with test-sized timeouts and backoff (and whatever `kw` changes)."""
    keys = {
        "endpoint_url": endpoint or bucket.server.endpoint, "region": REGION,
        "access_key_id": ACCESS_KEY, "secret_access_key": "S", "max_attempts": 4,
        "timeout_s": 10.0, "backoff_base_s": 0.01, "backoff_cap_s": 0.1, **kw,
    }
    return S3Store(bucket.name, prefix, **keys)


class TestS3Contract(StoreContract):
    @pytest.fixture
    async def objstore(self, s3_bucket):
        store = open_store(s3_bucket.spec("under/a prefix"))
        yield store
        await store.aclose()


async def test_keys_are_relative_to_the_prefix(s3_bucket):
    store = open_store(s3_bucket.spec("pre"))
    assert store.url == f"s3://{s3_bucket.name}/pre/"
    s3 = s3_bucket.client()
    s3.put_object(Bucket=s3_bucket.name, Key="outside", Body=b"no")
    s3.put_object(Bucket=s3_bucket.name, Key="prefix-sibling/x", Body=b"no")
    await store.put("inside/k", b"yes")
    assert s3.get_object(Bucket=s3_bucket.name, Key="pre/inside/k")["Body"].read() == b"yes"
    assert (await list_all(store, ""))[:2] == ([], ["inside/"])
    assert (await list_all(store, "", delimiter=""))[0] == ["inside/k"]
    assert await store.head("outside") is None
    assert await store.delete_many(["inside/k"]) == {}
    assert s3.list_objects_v2(Bucket=s3_bucket.name)["KeyCount"] == 2
    assert [k for k, _, _ in await store.list_multipart()] == []
    await store.aclose()


async def test_wrong_credentials_are_access_denied(s3_bucket):
    store = s3_store(s3_bucket, secret_access_key="wrong")
    with pytest.raises(AccessDenied):
        await store.put("k", b"x")
    await store.aclose()


async def test_large_copy_goes_part_by_part(s3_bucket):
    """Above CopyObject's limit (5 GiB; 6 MiB here) the copy is UploadPartCopy of ranges."""
    seen = collections.Counter()
    store = s3_store(s3_bucket, copy_max_bytes=6 * MiB, copy_part_bytes=5 * MiB,
                     observe=lambda op, s, n, kind: seen.update([op]))
    data = bytes(range(251)) * (11 * MiB // 251 + 1)
    await store.put("src", data, metadata={"m": "1"})
    etag = await store.copy("src", "dst")
    assert etag.endswith("-3")  # 5 + 5 + the rest
    info = await store.head("dst")
    assert (info.size, info.etag, dict(info.metadata)) == (len(data), etag, {"m": "1"})
    assert await store.get_range("dst", 0, len(data)) == data
    assert seen["upload_part_copy"] == 3 and seen["copy"] == 0
    await store.copy("src", "dst2", metadata={"m": "2"})
    assert dict((await store.head("dst2")).metadata) == {"m": "2"}
    await store.aclose()


async def test_faults_are_retried_and_the_content_is_right(s3_bucket):
    """503 SlowDown at 30 %, resets before and after the server saw the request at 5 % each,
    and two stalls longer than the read timeout: every operation succeeds, with the bytes
    that were written."""
    kinds: collections.Counter[str | None] = collections.Counter()
    with FaultProxy(s3_bucket.server.endpoint, slowdown_rate=0.3, reset_rate=0.05,
                    reset_after_rate=0.05, stall_s=5, seed=5) as proxy:
        store = s3_store(s3_bucket, endpoint=proxy.endpoint, max_attempts=12, timeout_s=0.5,
                         observe=lambda op, s, n, kind: kinds.update([kind]))
        proxy.inject("stall", 2)
        written = {}
        for i in range(12):
            data = bytes([i]) * (50_000 + i)
            written[f"obj/{i}"] = (data, await store.put(f"obj/{i}", data))
        for key, (data, etag) in written.items():
            assert await store.get_range(key, 0, 1 << 30, if_match=etag) == data
        parts = [bytes([n]) * (5 * MiB) for n in (1, 2)] + [b"end"]
        upload = await store.create_multipart("mp")
        etags = [(n, await store.upload_part("mp", upload, n, p)) for n, p in enumerate(parts, 1)]
        proxy.inject("reset_after")  # completed, but the answer is lost: the retry must cope
        etag = await store.complete_multipart("mp", upload, etags)
        assert await store.get_range("mp", 0, 1 << 30, if_match=etag) == b"".join(parts)
        await store.aclose()
    assert proxy.counts["stall"] == 2 and kinds["timeout"] >= 2
    assert proxy.counts["slowdown"] >= 5 and kinds["throttled"] == proxy.counts["slowdown"]
    assert proxy.counts["reset"] + proxy.counts["reset_after"] >= 2
    assert kinds["connection"] == proxy.counts["reset"] + proxy.counts["reset_after"]
    assert kinds[None] == proxy.counts["forwarded"]


async def test_throttling_without_end_gives_up_within_the_budget(s3_bucket):
    attempts = []
    with FaultProxy(s3_bucket.server.endpoint, slowdown_rate=1.0) as proxy:
        store = s3_store(s3_bucket, endpoint=proxy.endpoint, max_attempts=5,
                         backoff_base_s=0.02, backoff_cap_s=0.05,
                         observe=lambda op, s, n, kind: attempts.append((op, kind)))
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"put 'k': gave up after 5 attempts.*SlowDown"):
            await store.put("k", b"never stored")
        assert time.monotonic() - t0 < 5
        await store.aclose()
    assert attempts == [("put", "throttled")] * 5
    assert proxy.counts["slowdown"] == 5
    assert await s3_store(s3_bucket).head("k") is None


async def test_a_stall_is_bounded_by_the_read_timeout(s3_bucket):
    with FaultProxy(s3_bucket.server.endpoint, stall_rate=1.0, stall_s=30) as proxy:
        store = s3_store(s3_bucket, endpoint=proxy.endpoint, max_attempts=2, timeout_s=0.3)
        with trio.fail_after(10):
            with pytest.raises(StoreUnavailable, match="timeout"):
                await store.get_range("k", 0, 10)
        await store.aclose()
    assert proxy.counts["stall"] == 2


async def test_unreachable_endpoint_is_unavailable(s3_bucket):
    from serverproc import free_port

    store = s3_store(s3_bucket, endpoint=f"http://127.0.0.1:{free_port()}", max_attempts=2)
    with pytest.raises(StoreUnavailable, match=r"connection|Connect"):
        await store.head("k")
    with pytest.raises(NoSuchKey):
        await s3_store(s3_bucket).get_range("k", 0, 1)
