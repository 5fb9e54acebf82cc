"""The object-store contract: value types, typed errors and the ObjectStore protocol.

The package docstring (storage/objstore/__init__.py) states the rules every adapter keeps.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

# A read-only empty mapping: the default for `metadata` arguments (a `{}` default is mutable).
NO_METADATA: Mapping[str, str] = types.MappingProxyType({})

# observe(op, seconds, nbytes, error_kind): called once per request attempt (an S3 request,
# or one local operation). error_kind is None on success, else one of ERROR_KINDS.
Observe = Callable[[str, float, int, str | None], None]
ERROR_KINDS = (
    "not_found",  # 404: NoSuchKey, NoSuchUpload (not a failure of the store)
    "precondition",  # 412: If-Match failed
    "denied",  # 403 or no credentials
    "throttled",  # 503 SlowDown, 429, throttling codes: retried
    "server",  # other 5xx: retried
    "timeout",  # connect or read timeout: retried
    "connection",  # refused, reset, closed mid-response: retried
    "invalid",  # a request the store refused as malformed (4xx), or an InvalidKey
)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str  # relative to the store's prefix
    size: int
    etag: str  # without quotes
    mtime_ns: int  # LastModified
    # x-amz-meta-* without the prefix, lower-case; empty in listings. Not part of the hash.
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class ListPage:
    objects: tuple[ObjectInfo, ...]  # keys directly under the prefix (with a delimiter)
    prefixes: tuple[str, ...]  # common prefixes, each ending with the delimiter, relative keys
    next_token: str | None  # None: the last page


class StoreError(Exception):
    """An object-store operation failed; `retryable` says whether trying later may succeed."""

    retryable: bool = False


class NoSuchKey(StoreError):
    """The object (or the multipart upload) does not exist."""


class PreconditionFailed(StoreError):
    """If-Match failed: the object changed since its etag was read."""


class StoreUnavailable(StoreError):
    """Retries exhausted, timeouts, connection failures: the store may be back later."""

    retryable = True


class AccessDenied(StoreError):
    """403, or no credentials."""


class InvalidKey(StoreError):
    """A key this store cannot hold (e.g. localdir: an object where a directory is)."""


@runtime_checkable
class ObjectStore(Protocol):
    """What the cluster needs of a bucket. Keys are relative to the store's prefix."""

    url: str  # for logs and status, e.g. "s3://bucket/prefix/"; never credentials

    async def head(self, key: str) -> ObjectInfo | None: ...

    async def list_page(
        self, prefix: str, *, delimiter: str = "/", token: str | None = None, max_keys: int = 1000
    ) -> ListPage: ...

    async def get_range(
        self, key: str, start: int, end: int, *, if_match: str | None = None
    ) -> bytes: ...

    async def put(
        self, key: str, data: bytes, *, metadata: Mapping[str, str] = NO_METADATA
    ) -> str: ...

    async def create_multipart(
        self, key: str, *, metadata: Mapping[str, str] = NO_METADATA
    ) -> str: ...

    async def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> str: ...

    async def upload_part_copy(
        self, key: str, upload_id: str, part_number: int, src_key: str, start: int, end: int,
        *, if_match: str | None = None,
    ) -> str: ...

    async def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> str: ...

    async def abort_multipart(self, key: str, upload_id: str) -> None: ...

    async def list_multipart(self, prefix: str = "") -> list[tuple[str, str, int]]: ...

    async def copy(
        self, src_key: str, dst_key: str, *, metadata: Mapping[str, str] | None = None,
        if_match: str | None = None,
    ) -> str: ...

    async def delete_many(self, keys: Sequence[str]) -> dict[str, str]: ...

    async def aclose(self) -> None: ...


def check_range(start: int, end: int) -> None:
    """get_range's arguments: a half-open byte range, possibly empty, possibly past EOF."""
    if not 0 <= start <= end:
        raise ValueError(f"bad byte range [{start}, {end})")


# An HTTP header name (RFC 9110 token), lower-case: x-amz-meta-NAME.
_META_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")


def check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """Metadata travels as x-amz-meta-* headers: lower-case token names, printable ASCII
    values. Every adapter refuses the rest, so code tested on one works on the others."""
    for k, v in metadata.items():
        if not _META_NAME.fullmatch(k):
            raise ValueError(f"metadata name {k!r}: expected a lower-case ASCII token")
        if not (v.isascii() and v.isprintable()):
            raise ValueError(f"metadata {k!r}: value {v!r} is not printable ASCII")
    return dict(metadata)


def check_part_number(part_number: int) -> None:
    if not 1 <= part_number <= 10_000:
        raise ValueError(f"part number {part_number} is outside [1, 10000]")
