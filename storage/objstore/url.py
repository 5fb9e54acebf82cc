"""Store URLs (`file:///PATH`, `s3://BUCKET/PREFIX`) and building a store from a StoreSpec."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from storage.objstore.base import ObjectStore, Observe

# S3's bucket rules, plus the underscores and capitals that older buckets and some
# S3-compatible servers allow.
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]")
ADDRESSING = ("path", "virtual")


def parse_store_url(url: str) -> tuple[str, str, str]:
    """(scheme, bucket or absolute path, prefix). The prefix is "" or ends with "/".

    `file:///var/lib/objcache/bucket` -> ("file", "/var/lib/objcache/bucket", "")
    `s3://bucket/some/prefix` -> ("s3", "bucket", "some/prefix/")
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"{url!r}: expected file:///PATH or s3://BUCKET/PREFIX")
    if scheme == "file":
        return "file", _file_path(url, rest), ""
    if scheme == "s3":
        return ("s3", *_bucket_prefix(url))
    raise ValueError(f"{url!r}: unknown scheme {scheme!r} (file or s3)")


def _file_path(url: str, rest: str) -> str:
    if not rest.startswith("/"):
        raise ValueError(f"{url!r}: a file URL needs an absolute path: file:///PATH")
    if "?" in rest or "#" in rest:
        raise ValueError(f"{url!r}: a file URL takes no query or fragment")
    path = unquote(rest).rstrip("/") or "/"
    if "\0" in path or any(p in (".", "..") for p in path.split("/")):
        raise ValueError(f"{url!r}: the path must not contain '.', '..' or NUL")
    return path


def _bucket_prefix(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if "@" in parts.netloc:
        redacted = f"s3://***@{parts.netloc.rpartition('@')[2]}{parts.path}"
        raise ValueError(f"{redacted!r}: credentials do not belong in the URL; use "
                         "access_key_id and secret_access_key or the environment")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: an s3 URL takes no query or fragment")
    bucket = parts.netloc
    if not bucket:
        raise ValueError(f"{url!r}: the bucket is missing: s3://BUCKET/PREFIX")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(f"{url!r}: {bucket!r} is not a valid bucket name")
    prefix = unquote(parts.path).lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    if "//" in prefix or "\0" in prefix:
        raise ValueError(f"{url!r}: the prefix has an empty component or a NUL")
    return bucket, prefix


@dataclass(frozen=True)
class StoreSpec:
    """Everything needed to open a store; the [store] section of the node config maps onto it.
    Secrets stay out of repr() and out of `url`."""

    url: str
    s3_endpoint: str = ""  # "" = AWS, from the region
    region: str = ""  # "" = the environment / standard AWS configuration
    access_key_id: str = field(default="", repr=False)  # both "": the standard AWS chain
    secret_access_key: str = field(default="", repr=False)
    addressing: str = "path"  # or "virtual"
    max_connections: int = 16
    max_attempts: int = 8
    timeout_s: float = 30.0
    verify_tls: bool = True
    observe: Observe | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        parse_store_url(self.url)
        if self.addressing not in ADDRESSING:
            raise ValueError(f"addressing: expected one of {ADDRESSING}, got {self.addressing!r}")
        if self.max_connections < 1 or self.max_attempts < 1 or self.timeout_s <= 0:
            raise ValueError(f"{self!r}: limits must be positive")


def open_store(spec: StoreSpec) -> ObjectStore:
    """Build the store a spec names. A file store's directory is created if missing."""
    scheme, where, prefix = parse_store_url(spec.url)
    if scheme == "file":
        from storage.objstore.localdir import LocalDirStore

        return LocalDirStore(where, observe=spec.observe, max_threads=spec.max_connections)
    from storage.objstore.s3 import S3Store  # boto3 is slow to import: only when needed

    return S3Store(
        where, prefix,
        endpoint_url=spec.s3_endpoint, region=spec.region,
        access_key_id=spec.access_key_id, secret_access_key=spec.secret_access_key,
        addressing=spec.addressing, max_connections=spec.max_connections,
        max_attempts=spec.max_attempts, timeout_s=spec.timeout_s, verify_tls=spec.verify_tls,
        observe=spec.observe,
    )
