"""Store URLs, StoreSpec and open_store (storage/objstore/url.py), and the S3 adapter's retry
loop (storage/objstore/retry.py) under a mock clock."""

from __future__ import annotations

import random

import pytest
import trio

from storage.objstore import NoSuchKey, ObjectStore, StoreError, StoreUnavailable
from storage.objstore.localdir import LocalDirStore
from storage.objstore.retry import Attempt, Failure, RetryPolicy, retrying
from storage.objstore.url import StoreSpec, open_store, parse_store_url


@pytest.mark.parametrize("url, parsed", [
    ("file:///var/lib/objcache/bucket", ("file", "/var/lib/objcache/bucket", "")),
    ("file:///data/with%20space/", ("file", "/data/with space", "")),
    ("file:///", ("file", "/", "")),
    ("s3://bucket", ("s3", "bucket", "")),
    ("s3://bucket/", ("s3", "bucket", "")),
    ("s3://my.bucket-1/some/prefix", ("s3", "my.bucket-1", "some/prefix/")),
    ("s3://bucket/some/prefix/", ("s3", "bucket", "some/prefix/")),
    ("s3://bucket/a%20b", ("s3", "bucket", "a b/")),
])
def test_parse(url, parsed):
    assert parse_store_url(url) == parsed


@pytest.mark.parametrize("url, message", [
    ("bucket", "expected file:///PATH or s3://BUCKET/PREFIX"),
    ("", "expected file:///PATH"),
    ("http://host/x", "unknown scheme 'http'"),
    ("file://relative/path", "absolute path"),
    ("file:///a/../b", "'..'"),
    ("file:///a?x=1", "no query"),
    ("s3://", "bucket is missing"),
    ("s3:///prefix", "bucket is missing"),
    ("s3://b", "not a valid bucket name"),
    ("s3://-bucket", "not a valid bucket name"),
    ("s3://bad..bucket", "not a valid bucket name"),
    ("s3://AKID:secret@bucket/p", "credentials do not belong in the URL"),
    ("s3://bucket/p?versionId=1", "no query"),
    ("s3://bucket/a//b", "empty component"),
])
def test_parse_errors_say_what_is_wrong(url, message):
    with pytest.raises(ValueError, match=message.replace("?", r"\?")) as e:
        parse_store_url(url)
    assert "AKID" not in str(e.value)  # errors reach logs: no credentials in them


def test_spec_keeps_secrets_out_of_repr():
    spec = StoreSpec("s3://bucket/p", access_key_id="AKIDEXAMPLE", secret_access_key="sekrit")
    assert "sekrit" not in repr(spec) and "AKIDEXAMPLE" not in repr(spec)
    with pytest.raises(ValueError, match="addressing"):
        StoreSpec("s3://bucket", addressing="dns")
    with pytest.raises(ValueError, match="unknown scheme"):
        StoreSpec("ftp://x")


def test_open_store_builds_the_right_adapter(tmp_path):
    local = open_store(StoreSpec(f"file://{tmp_path}/b"))
    assert isinstance(local, LocalDirStore) and isinstance(local, ObjectStore)
    assert local.url == f"file://{tmp_path}/b"
    s3 = open_store(StoreSpec("s3://bucket/pre", s3_endpoint="http://127.0.0.1:1",
                              access_key_id="AKIDEXAMPLE", secret_access_key="sekrit"))
    assert isinstance(s3, ObjectStore)
    assert s3.url == "s3://bucket/pre/"
    assert "sekrit" not in repr(s3) and "AKIDEXAMPLE" not in repr(s3)


# -- the retry loop (storage/objstore/retry.py) --------------------------------------------------


def test_backoff_is_full_jitter_under_a_cap():
    policy = RetryPolicy(max_attempts=10, base_s=0.1, cap_s=1.0)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        sleeps = [policy.backoff_s(attempt, rng) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in sleeps)
        assert max(sleeps) > ceiling * 0.8  # spread over the whole interval
        assert min(sleeps) < ceiling * 0.2


class Flaky:
    """Fails with `errors` in turn, then answers `value`."""

    def __init__(self, errors: list[Exception], value: str = "ok") -> None:
        self.errors = list(errors)
        self.value = value
        self.calls = 0

    async def __call__(self) -> Attempt[str]:
        self.calls += 1
        if self.errors:
            return Attempt(None, self.errors.pop(0), 0, 0.01)
        return Attempt(self.value, None, 7, 0.01)


def classify(e: Exception) -> Failure | None:
    if isinstance(e, TimeoutError):
        return Failure("timeout", True, StoreError(str(e)))
    if isinstance(e, KeyError):
        return Failure("not_found", False, NoSuchKey(str(e)))
    return None


async def run(attempt: Flaky, max_attempts: int = 4, observed: list | None = None) -> str:
    return await retrying(
        "get", "k", attempt, policy=RetryPolicy(max_attempts, 0.5, 2.0), rng=random.Random(0),
        classify=classify, observe=lambda *a: (observed if observed is not None else []).append(a))


async def test_retryable_failures_are_retried_with_backoff(autojump_clock):
    observed: list = []
    t0 = trio.current_time()
    assert await run(Flaky([TimeoutError("slow"), TimeoutError("slow")]), observed=observed) == "ok"
    assert [(op, n, kind) for op, _, n, kind in observed] == [
        ("get", 0, "timeout"), ("get", 0, "timeout"), ("get", 7, None)]
    assert 0 < trio.current_time() - t0 <= 0.5 + 1.0  # two jittered sleeps


async def test_exhausted_retries_are_unavailable(autojump_clock):
    flaky = Flaky([TimeoutError("slow")] * 10)
    with pytest.raises(StoreUnavailable, match=r"get 'k': gave up after 4 attempts: slow") as e:
        await run(flaky)
    assert flaky.calls == 4
    assert isinstance(e.value.__cause__, TimeoutError)
    assert e.value.retryable


async def test_final_failures_end_at_once(autojump_clock):
    flaky = Flaky([KeyError("gone"), TimeoutError()])
    with pytest.raises(NoSuchKey):
        await run(flaky)
    assert flaky.calls == 1


async def test_unclassified_errors_are_bugs_and_propagate(autojump_clock):
    with pytest.raises(ZeroDivisionError):
        await run(Flaky([ZeroDivisionError()]))
