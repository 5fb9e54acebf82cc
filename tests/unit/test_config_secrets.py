"""Configuration errors never show a secret (issue 7, access control): the S3 secret key and
access key id are named by their key, never echoed, whatever is wrong with them; a URL's
credentials (user:password@) are not echoed either."""

from __future__ import annotations

import pytest

from server import config

SECRET = "Sup3rS3cretValue-9f2c"
KEY_ID = "AKIAEXAMPLEKEYID7"


def error_of(raw: dict) -> str:
    with pytest.raises(config.ConfigError) as e:
        config.from_dict(raw)
    return str(e.value)


@pytest.mark.parametrize("store", [
    {"secret_access_key": 12345678, "access_key_id": KEY_ID},  # a number where a string goes
    {"secret_access_key": [SECRET], "access_key_id": KEY_ID},
    {"secret_access_key": SECRET, "access_key_id": 77},
    {"secret_access_key": SECRET},  # the access key id missing
    {"access_key_id": KEY_ID},
    {"secret_access_key": SECRET, "access_key_id": KEY_ID, "max_attempts": 0},
])
def test_store_credentials_are_not_echoed(store):
    text = error_of({"store": store})
    assert text.startswith("store.")
    for value in (SECRET, KEY_ID, "12345678", "77"):
        assert value not in text, text


@pytest.mark.parametrize("key,url", [
    ("s3_endpoint", f"ftp://{KEY_ID}:{SECRET}@127.0.0.1:9000"),
    ("s3_endpoint", f"http://{KEY_ID}:{SECRET}@127.0.0.1:9000"),
    ("url", f"s3://{KEY_ID}:{SECRET}@bucket/prefix"),
])
def test_credentials_in_a_url_are_refused_without_being_echoed(key, url):
    text = error_of({"store": {key: url}})
    assert SECRET not in text and KEY_ID not in text, text
    assert f"store.{key}" in text


def test_config_repr_hides_the_credentials():
    cfg = config.from_dict({"store": {"secret_access_key": SECRET, "access_key_id": KEY_ID}})
    text = repr(cfg) + repr(config.store_spec(cfg, cfg.exports[0]))
    assert SECRET not in text and KEY_ID not in text
