"""The S3 adapter's timestamp parser gives what botocore's own (dateutil) gives, for the forms
S3 servers send: ISO 8601 in listings, RFC 7231 dates in headers, and odd ones."""

from __future__ import annotations

import datetime as dt

import botocore.utils
import pytest

from storage.objstore.s3 import _ns, _timestamp

FORMS = [
    "2026-11-30T09:37:20.000Z",  # ListObjectsV2 (AWS, SeaweedFS)
    "2026-11-30T09:37:20Z",
    "2026-11-30T09:37:20.123456Z",
    "2026-11-30T10:37:20.5+01:00",
    "Mon, 30 Nov 2026 09:37:20 GMT",  # Last-Modified header
    "Mon, 30 Nov 2026 09:37:20 +0000",
    "1796031440",  # epoch seconds: botocore's fallback
]


@pytest.mark.parametrize("text", FORMS)
def test_timestamps_parse_as_botocore_parses_them(text: str) -> None:
    ours = _timestamp(text)
    assert ours.tzinfo is not None
    assert ours == botocore.utils.parse_timestamp(text)
    assert _ns(ours) == _ns(botocore.utils.parse_timestamp(text))


def test_a_naive_date_counts_as_utc() -> None:
    assert _timestamp("Mon, 30 Nov 2026 09:37:20 -0000") == dt.datetime(
        2026, 11, 30, 9, 37, 20, tzinfo=dt.UTC)


def test_garbage_is_left_to_botocore_and_raises_its_error() -> None:
    with pytest.raises(ValueError):
        _timestamp("not a date")
