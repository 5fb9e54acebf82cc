"""The S3 adapter: the ObjectStore protocol over boto3. The only module that imports boto3.

Rules:
- One boto3 client per store, built once; botocore's own retries are off (one attempt per
  call) and retry.py's loop retries instead, so that every attempt is seen by `observe` and
  the budget is ours: 5xx, throttling, timeouts and connection failures are retried.
- Every boto3 call runs in a worker thread (`trio.to_thread.run_sync`) under one
  CapacityLimiter(max_connections) per store, the size of botocore's connection pool.
- The read timeout bounds a stalled request; the stall then counts as a failed attempt. A
  cancelled call waits for its worker thread (at most that timeout): threads are not abandoned,
  so the limiter always counts the requests really in flight.
- Errors: 404 -> NoSuchKey (head answers None), 412 -> PreconditionFailed, 403 -> AccessDenied,
  other 4xx -> StoreError; the retryable ones, once the budget is spent -> StoreUnavailable.
- Keys are relative: the adapter prepends the URL's prefix, and strips it from listings.
- Checksums are sent and checked only where S3 requires them ("when_required"): many
  S3-compatible servers reject botocore's newer default trailing checksums.
- Not idempotent: CompleteMultipartUpload. When an attempt was lost after the server ran it,
  the retry finds NoSuchUpload; the adapter then accepts the object if its etag is a multipart
  etag of as many parts (`<md5>-N`). AbortMultipartUpload of an unknown upload is a success.
- Timestamps (LastModified) are parsed by `_timestamp`, not botocore's default (dateutil): a
  tenth of the CPU of a HEAD or GET, and of every entry of a listing page, went there.
- copy() HEADs the source first: its size picks CopyObject or UploadPartCopy (above
  copy_max_bytes), and metadata=None keeps the source's in both.
"""

from __future__ import annotations

import calendar
import contextlib
import datetime as dt
import email.utils
import functools
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import boto3
import botocore.exceptions as bex
import botocore.session
import botocore.utils
import trio
import urllib3.exceptions
from botocore.config import Config as BotoConfig

from storage.objstore.base import (
    NO_METADATA,
    AccessDenied,
    ListPage,
    NoSuchKey,
    ObjectInfo,
    Observe,
    PreconditionFailed,
    StoreError,
    check_metadata,
    check_part_number,
    check_range,
)
from storage.objstore.retry import Attempt, Failure, RetryPolicy, retrying

T = TypeVar("T")

COPY_MAX_BYTES = 5 << 30  # CopyObject's limit; larger objects are copied part by part
COPY_PART_BYTES = 512 << 20
MIN_PART_BYTES = 5 << 20
MAX_PARTS = 10_000
DELETE_BATCH = 1000  # DeleteObjects' limit
MAX_LIST_PAGES = 10_000  # list_multipart gives up past this many pages

_THROTTLED = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
    "TooManyRequests", "RequestThrottled", "ServiceUnavailable",
})
_SERVER = frozenset({"InternalError", "RequestTimeout", "OperationAborted"})
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchUpload"})
_TIMEOUTS = (bex.ReadTimeoutError, bex.ConnectTimeoutError, urllib3.exceptions.TimeoutError)
_CONNECTION = (
    bex.ConnectionError,  # EndpointConnectionError, SSLError, ...
    bex.HTTPClientError,  # ConnectionClosedError, ResponseStreamingError
    bex.IncompleteReadError,
    urllib3.exceptions.HTTPError,
    OSError,
)


class S3Store:
    """An S3 bucket (or a prefix of one) as an ObjectStore."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str = "",
        region: str = "",
        access_key_id: str = "",
        secret_access_key: str = "",
        addressing: str = "path",
        max_connections: int = 16,
        max_attempts: int = 8,
        timeout_s: float = 30.0,
        verify_tls: bool = True,
        observe: Observe | None = None,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 5.0,
        copy_max_bytes: int = COPY_MAX_BYTES,
        copy_part_bytes: int = COPY_PART_BYTES,
        rng: random.Random | None = None,
    ) -> None:
        assert not prefix or prefix.endswith("/"), prefix
        assert addressing in ("path", "virtual"), addressing
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}"
        self.endpoint_url = endpoint_url
        self.copy_max_bytes = copy_max_bytes
        self.copy_part_bytes = max(MIN_PART_BYTES, copy_part_bytes)
        self._observe = observe
        self._policy = RetryPolicy(max_attempts, backoff_base_s, backoff_cap_s)
        self._rng = rng or random.Random()
        self._limiter = trio.CapacityLimiter(max_connections)
        config = BotoConfig(
            region_name=region or None,
            s3={"addressing_style": addressing},
            max_pool_connections=max_connections,
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            retries={"total_max_attempts": 1, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            user_agent_extra="objcache",
        )
        botocore_session = botocore.session.get_session()
        botocore_session.get_component("response_parser_factory").set_parser_defaults(
            timestamp_parser=_timestamp)
        self._client = boto3.session.Session(botocore_session=botocore_session).client(
            "s3",
            endpoint_url=endpoint_url or None,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            config=config,
            verify=verify_tls,
        )

    def __repr__(self) -> str:
        return f"S3Store({self.url!r}, endpoint={self.endpoint_url!r})"

    # -- the calls ------------------------------------------------------------------------

    async def _call(self, op: str, key: str, fn: Callable[[], tuple[T, int]]) -> T:
        """Run `fn` (one boto3 request; returns its value and the bytes it moved) with retries."""
        async def attempt() -> Attempt[T]:
            return await trio.to_thread.run_sync(_attempt, fn, limiter=self._limiter)

        return await retrying(
            op, key, attempt, policy=self._policy, rng=self._rng,
            classify=functools.partial(_classify, op, key), observe=self._observe,
        )

    def _k(self, key: str) -> str:
        return self.prefix + key

    async def head(self, key: str) -> ObjectInfo | None:
        def call() -> tuple[ObjectInfo, int]:
            r = self._client.head_object(Bucket=self.bucket, Key=self._k(key))
            return ObjectInfo(key, r["ContentLength"], _etag(r["ETag"]),
                              _ns(r["LastModified"]), dict(r.get("Metadata", {}))), 0

        try:
            return await self._call("head", key, call)
        except NoSuchKey:
            return None

    async def list_page(
        self, prefix: str, *, delimiter: str = "/", token: str | None = None, max_keys: int = 1000
    ) -> ListPage:
        assert 1 <= max_keys <= 1000, max_keys
        kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._k(prefix), "MaxKeys": max_keys}
        if delimiter:
            kw["Delimiter"] = delimiter
        if token:
            kw["ContinuationToken"] = token
        n = len(self.prefix)

        def call() -> tuple[ListPage, int]:
            r = self._client.list_objects_v2(**kw)
            objects = tuple(
                ObjectInfo(o["Key"][n:], o["Size"], _etag(o["ETag"]), _ns(o["LastModified"]))
                for o in r.get("Contents", ())
            )
            prefixes = tuple(p["Prefix"][n:] for p in r.get("CommonPrefixes", ()))
            more = r.get("IsTruncated") and r.get("NextContinuationToken")
            return ListPage(objects, prefixes, more or None), 0

        return await self._call("list", prefix, call)

    async def get_range(
        self, key: str, start: int, end: int, *, if_match: str | None = None
    ) -> bytes:
        check_range(start, end)
        if start == end:  # no bytes, but the same answers about the key and its etag
            info = await self.head(key)
            if info is None:
                raise NoSuchKey(f"get {key!r}: no such key")
            if if_match is not None and info.etag != if_match:
                raise PreconditionFailed(f"get {key!r}: etag is {info.etag}, not {if_match}")
            return b""
        kw: dict[str, Any] = {"Bucket": self.bucket, "Key": self._k(key),
                              "Range": f"bytes={start}-{end - 1}"}
        if if_match is not None:
            kw["IfMatch"] = _quote(if_match)

        def call() -> tuple[bytes, int]:
            try:
                r = self._client.get_object(**kw)
            except bex.ClientError as e:
                if _status(e) == 416:  # the range starts at or past EOF
                    return b"", 0
                raise
            with contextlib.closing(r["Body"]) as body:
                data = body.read()
            if "ContentRange" not in r:  # a server that ignored Range sent the whole object
                data = data[start:end]
            return data, len(data)

        return await self._call("get", key, call)

    async def put(
        self, key: str, data: bytes, *, metadata: Mapping[str, str] = NO_METADATA
    ) -> str:
        meta = check_metadata(metadata)

        def call() -> tuple[str, int]:
            r = self._client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data,
                                        Metadata=meta)
            return _etag(r["ETag"]), len(data)

        return await self._call("put", key, call)

    async def create_multipart(
        self, key: str, *, metadata: Mapping[str, str] = NO_METADATA
    ) -> str:
        meta = check_metadata(metadata)

        def call() -> tuple[str, int]:
            r = self._client.create_multipart_upload(Bucket=self.bucket, Key=self._k(key),
                                                     Metadata=meta)
            return r["UploadId"], 0

        return await self._call("create_multipart", key, call)

    async def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> str:
        check_part_number(part_number)

        def call() -> tuple[str, int]:
            r = self._client.upload_part(Bucket=self.bucket, Key=self._k(key), UploadId=upload_id,
                                         PartNumber=part_number, Body=data)
            return _etag(r["ETag"]), len(data)

        return await self._call("upload_part", key, call)

    async def upload_part_copy(
        self, key: str, upload_id: str, part_number: int, src_key: str, start: int, end: int,
        *, if_match: str | None = None,
    ) -> str:
        check_part_number(part_number)
        assert 0 <= start < end, (start, end)
        kw: dict[str, Any] = {
            "Bucket": self.bucket, "Key": self._k(key), "UploadId": upload_id,
            "PartNumber": part_number, "CopySourceRange": f"bytes={start}-{end - 1}",
            "CopySource": {"Bucket": self.bucket, "Key": self._k(src_key)},
        }
        if if_match is not None:
            kw["CopySourceIfMatch"] = _quote(if_match)

        def call() -> tuple[str, int]:
            r = self._client.upload_part_copy(**kw)
            return _etag(r["CopyPartResult"]["ETag"]), 0

        return await self._call("upload_part_copy", key, call)

    async def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> str:
        assert parts, "a multipart upload needs at least one part"
        body = {"Parts": [{"PartNumber": n, "ETag": _quote(e)} for n, e in sorted(parts)]}
        attempts = 0

        def call() -> tuple[str, int]:
            nonlocal attempts
            attempts += 1
            r = self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=self._k(key), UploadId=upload_id, MultipartUpload=body)
            return _etag(r["ETag"]), 0

        try:
            return await self._call("complete_multipart", key, call)
        except NoSuchKey:
            if attempts < 2:
                raise
            # An earlier attempt may have completed it (module rules).
            info = await self.head(key)
            if info is None or not info.etag.endswith(f"-{len(parts)}"):
                raise
            return info.etag

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        def call() -> tuple[None, int]:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=self._k(key),
                                                UploadId=upload_id)
            return None, 0

        with contextlib.suppress(NoSuchKey):  # unknown, or already aborted by an earlier try
            await self._call("abort_multipart", key, call)

    async def list_multipart(self, prefix: str = "") -> list[tuple[str, str, int]]:
        out: list[tuple[str, str, int]] = []
        markers: dict[str, str] = {}
        n = len(self.prefix)
        for _ in range(MAX_LIST_PAGES):
            kw = {"Bucket": self.bucket, "Prefix": self._k(prefix), **markers}

            def call(kw: dict[str, Any] = kw) -> tuple[dict[str, Any], int]:
                return self._client.list_multipart_uploads(**kw), 0

            r = await self._call("list_multipart", prefix, call)
            out += [(u["Key"][n:], u["UploadId"], _ns(u["Initiated"]))
                    for u in r.get("Uploads", ())]
            if not r.get("IsTruncated"):
                return out
            markers = {"KeyMarker": r["NextKeyMarker"], "UploadIdMarker": r["NextUploadIdMarker"]}
        raise StoreError(f"list_multipart {prefix!r}: more than {MAX_LIST_PAGES} pages")

    async def copy(
        self, src_key: str, dst_key: str, *, metadata: Mapping[str, str] | None = None,
        if_match: str | None = None,
    ) -> str:
        src = await self.head(src_key)
        if src is None:
            raise NoSuchKey(f"copy {src_key!r}: no such key")
        if if_match is not None and src.etag != if_match:
            raise PreconditionFailed(f"copy {src_key!r}: etag is {src.etag}, not {if_match}")
        if src.size > self.copy_max_bytes:
            meta = src.metadata if metadata is None else metadata
            return await self._copy_parts(src, dst_key, meta, if_match or src.etag)
        kw: dict[str, Any] = {
            "Bucket": self.bucket, "Key": self._k(dst_key),
            "CopySource": {"Bucket": self.bucket, "Key": self._k(src_key)},
            "MetadataDirective": "COPY" if metadata is None else "REPLACE",
        }
        if metadata is not None:
            kw["Metadata"] = check_metadata(metadata)
        if if_match is not None:
            kw["CopySourceIfMatch"] = _quote(if_match)

        def call() -> tuple[str, int]:
            r = self._client.copy_object(**kw)
            return _etag(r["CopyObjectResult"]["ETag"]), 0

        return await self._call("copy", dst_key, call)

    async def _copy_parts(
        self, src: ObjectInfo, dst_key: str, metadata: Mapping[str, str], etag: str
    ) -> str:
        """A copy above CopyObject's limit: UploadPartCopy of each range, the source pinned by
        its etag, a few parts at a time; aborted on any failure."""
        part = max(self.copy_part_bytes, -(-src.size // MAX_PARTS))
        ranges = [(s, min(s + part, src.size)) for s in range(0, src.size, part)]
        upload_id = await self.create_multipart(dst_key, metadata=metadata)
        etags: dict[int, str] = {}
        sem = trio.Semaphore(max(1, self._limiter.total_tokens // 4))

        async def one(n: int, start: int, end: int) -> None:
            async with sem:
                etags[n] = await self.upload_part_copy(
                    dst_key, upload_id, n, src.key, start, end, if_match=etag)

        try:
            async with trio.open_nursery() as nursery:
                for n, (start, end) in enumerate(ranges, 1):
                    nursery.start_soon(one, n, start, end)
            return await self.complete_multipart(dst_key, upload_id, sorted(etags.items()))
        except BaseException:
            # The copy's own error is the one to report; a failed abort leaves an upload that
            # list_multipart shows (and a bucket lifecycle rule or a later sweep removes).
            with trio.CancelScope(shield=True), contextlib.suppress(StoreError):
                await self.abort_multipart(dst_key, upload_id)
            raise

    async def delete_many(self, keys: Sequence[str]) -> dict[str, str]:
        failed: dict[str, str] = {}
        n = len(self.prefix)
        for i in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": self._k(k)} for k in keys[i:i + DELETE_BATCH]]

            def call(batch: list[dict[str, str]] = batch) -> tuple[list[dict[str, str]], int]:
                r = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                return r.get("Errors", []), 0

            for err in await self._call("delete_many", batch[0]["Key"][n:], call):
                if err.get("Code") != "NoSuchKey":
                    failed[err["Key"][n:]] = f"{err.get('Code')}: {err.get('Message', '')}"
        return failed

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self._client.close)


# -- helpers (pure, or one boto3 attempt) ----------------------------------------------------


def _attempt(fn: Callable[[], tuple[T, int]]) -> Attempt[T]:
    """One attempt in a worker thread; its exception is carried back to be classified."""
    t0 = time.perf_counter()
    try:
        value, nbytes = fn()
    except Exception as e:  # carried back: classified (or re-raised) by retrying()
        return Attempt(None, e, 0, time.perf_counter() - t0)
    return Attempt(value, None, nbytes, time.perf_counter() - t0)


def _status(e: bex.ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _classify(op: str, key: str, e: Exception) -> Failure | None:
    if isinstance(e, bex.ClientError):
        return _classify_response(op, key, e)
    if isinstance(e, bex.NoCredentialsError | bex.PartialCredentialsError):
        return Failure("denied", False, AccessDenied(f"{op} {key!r}: {e}"))
    if isinstance(e, _TIMEOUTS):
        return Failure("timeout", True, StoreError(f"{op} {key!r}: timeout: {e}"))
    if isinstance(e, _CONNECTION):
        return Failure("connection", True, StoreError(f"{op} {key!r}: {type(e).__name__}: {e}"))
    return None


def _classify_response(op: str, key: str, e: bex.ClientError) -> Failure:
    code = str(e.response.get("Error", {}).get("Code", ""))
    status = _status(e)
    text = f"{op} {key!r}: HTTP {status} {code}: {e.response.get('Error', {}).get('Message', '')}"
    if code in _THROTTLED or status in (429, 503):
        return Failure("throttled", True, StoreError(text))
    if code in _SERVER or status >= 500:
        return Failure("server", True, StoreError(text))
    if code == "NoSuchBucket":
        return Failure("invalid", False, StoreError(text))
    if code in _NOT_FOUND or status == 404:
        return Failure("not_found", False, NoSuchKey(text))
    if code == "PreconditionFailed" or status == 412:
        return Failure("precondition", False, PreconditionFailed(text))
    if code == "AccessDenied" or status == 403:
        return Failure("denied", False, AccessDenied(text))
    return Failure("invalid", False, StoreError(text))


def _etag(value: str) -> str:
    return value.strip('"')


def _quote(etag: str) -> str:
    return f'"{_etag(etag)}"'


def _timestamp(text: str) -> dt.datetime:
    """An S3 timestamp as an aware datetime: ISO 8601 in XML bodies ("...T09:37:20.000Z"),
    RFC 7231 in headers ("Mon, 30 Nov 2026 09:37:20 GMT"); botocore's parser for anything
    else (epoch seconds, odd servers)."""
    try:
        if text[:4].isdigit():
            when = dt.datetime.fromisoformat(text)
        else:
            when = email.utils.parsedate_to_datetime(text)
    except (ValueError, TypeError):
        return botocore.utils.parse_timestamp(text)
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def _ns(when: dt.datetime) -> int:
    """LastModified (an aware datetime, whole microseconds at best) in ns since the epoch."""
    return calendar.timegm(when.utctimetuple()) * 1_000_000_000 + when.microsecond * 1000
