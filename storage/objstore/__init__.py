"""Object stores: the bucket behind the file system, as one small async protocol.

Who owns what:
- base.py: the contract — ObjectInfo, ListPage, the StoreError family and the ObjectStore
  protocol. The rest of objcache codes against base.py only.
- s3.py: S3 over boto3; the only module that imports boto3 or botocore.
- localdir.py: a local directory as the bucket (files at their key paths); localfs.py: its
  blocking file-system helpers (key checks, stamps, scans in key order).
- url.py: `file:///PATH` and `s3://BUCKET/PREFIX` URLs, StoreSpec, open_store(spec).
- retry.py: the backoff loop of the S3 adapter.

The contract (every adapter keeps it; tests/objstore_contract.py checks it on each):
- Keys are relative to the store's prefix (`s3://b/p` stores key k at "p/" + k) and are
  UTF-8; a key ending in "/" is a directory marker. Listings are in UTF-8 byte order.
- head(key) -> ObjectInfo with metadata, or None. list_page(prefix, delimiter, token,
  max_keys) -> ListPage: objects directly under the prefix and the common prefixes (each
  ending with the delimiter), at most max_keys (<= 1000) of both; next_token None on the
  last page. Listed objects carry no metadata.
- get_range(key, start, end, if_match) -> the bytes [start, end) clipped at EOF (b"" past
  it). With if_match, PreconditionFailed unless the object still has that etag, so a read
  never mixes two versions. NoSuchKey for a missing key.
- put / multipart / copy return the new etag (unquoted). Metadata names are lower-case
  ASCII and values printable ASCII (they travel as x-amz-meta-* headers). Every part of a
  multipart upload but the last is at least 5 MiB. copy(metadata=None) keeps the source's.
- abort_multipart of an unknown upload and delete_many of a missing key are not errors;
  delete_many returns {key: error} for the keys it could not delete.
- Errors are typed (base.py): NoSuchKey, PreconditionFailed, AccessDenied, InvalidKey, and
  StoreUnavailable (retryable: the store is down, slow or throttling and retries are spent).
  A plain StoreError is a request the store refused. Programmer errors (a bad range, a part
  number outside [1, 10000]) are ValueError or assertions.
- Blocking work runs in worker threads under a CapacityLimiter per store; an optional
  `observe(op, seconds, nbytes, error_kind)` hook sees every request attempt (metrics).
- `url` names the store for logs and status, never credentials.
"""

from storage.objstore.base import (
    AccessDenied,
    InvalidKey,
    ListPage,
    NoSuchKey,
    ObjectInfo,
    ObjectStore,
    PreconditionFailed,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "AccessDenied",
    "InvalidKey",
    "ListPage",
    "NoSuchKey",
    "ObjectInfo",
    "ObjectStore",
    "PreconditionFailed",
    "StoreError",
    "StoreUnavailable",
]
