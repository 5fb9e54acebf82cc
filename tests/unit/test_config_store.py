"""The [store] section and exports.store: defaults, validation that names the key, the
`--store` / `--s3-endpoint` flags, and the StoreSpec an export gets."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from server import cli
from server import config as cfgmod


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def serve_config(argv: list[str]) -> cfgmod.Config:
    parser = argparse.ArgumentParser()
    cli._serve_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", *argv])
    return cfgmod.load(args.config, cli._overrides(args))


def test_default_store_is_a_directory_in_the_data_dir(tmp_path):
    cfg = cfgmod.load(None, {"node": {"data_dir": str(tmp_path)}})
    spec = cfgmod.store_spec(cfg, cfg.exports[0])
    assert spec is not None
    assert spec.url == f"file://{tmp_path}/bucket"
    assert (spec.addressing, spec.max_connections, spec.max_attempts, spec.timeout_s) == (
        "path", 16, 8, 30.0)
    assert spec.verify_tls


def test_store_keys_parse(tmp_path):
    cfg = cfgmod.load(write(tmp_path, """
[store]
url = "s3://my-bucket/some/prefix"
s3_endpoint = "http://127.0.0.1:8333"
region = "eu-west-1"
access_key_id = "AKID"
secret_access_key = "sekrit"
addressing = "virtual"
max_connections = 4
max_attempts = 3
timeout_s = 2
verify_tls = false
"""))
    spec = cfgmod.store_spec(cfg, cfg.exports[0])
    assert spec is not None
    assert spec.url == "s3://my-bucket/some/prefix"
    assert (spec.s3_endpoint, spec.region, spec.addressing) == (
        "http://127.0.0.1:8333", "eu-west-1", "virtual")
    assert (spec.access_key_id, spec.secret_access_key) == ("AKID", "sekrit")
    assert (spec.max_connections, spec.max_attempts, spec.timeout_s, spec.verify_tls) == (
        4, 3, 2.0, False)
    # Secrets stay out of every repr that may reach a log.
    assert "sekrit" not in repr(spec) and "sekrit" not in repr(cfg)
    assert "AKID" not in repr(spec)


def test_exports_get_their_own_store_or_none(tmp_path):
    cfg = cfgmod.load(write(tmp_path, """
[store]
url = "s3://main-bucket"
[[exports]]
path = "/"
[[exports]]
path = "/archive"
store = "s3://archive-bucket/2024"
[[exports]]
path = "/scratch"
"""))
    root, archive, scratch = (cfgmod.store_spec(cfg, e) for e in cfg.exports)
    assert root is not None and root.url == "s3://main-bucket"
    assert archive is not None and archive.url == "s3://archive-bucket/2024"
    assert scratch is None  # a plain directory of the tree


@pytest.mark.parametrize(
    "text, key",
    [
        ("[store]\nurl = 'ftp://host/x'\n", "store.url"),
        ("[store]\nurl = 's3://'\n", "store.url"),
        ("[store]\nurl = 's3:///prefix'\n", "store.url"),
        ("[store]\nurl = 'file://relative/path'\n", "store.url"),
        ("[store]\nurl = 's3://K:S@bucket'\n", "store.url"),
        ("[store]\naddressing = 'dns'\n", "store.addressing"),
        ("[store]\ns3_endpoint = '127.0.0.1:8333'\n", "store.s3_endpoint"),
        ("[store]\naccess_key_id = 'AKID'\n", "store.secret_access_key"),
        ("[store]\nmax_connections = 0\n", "store.max_connections"),
        ("[store]\nmax_attempts = 0\n", "store.max_attempts"),
        ("[store]\ntimeout_s = 0\n", "store.timeout_s"),
        ("[store]\nverify_tls = 'yes'\n", "store.verify_tls"),
        ("[store]\nbucket = 'b'\n", "store.bucket"),
        ("[[exports]]\npath = '/'\nstore = 'nope'\n", "exports[0].store"),
        ("[[exports]]\npath = '/'\n[[exports]]\npath = '/b'\nstore = 's3://'\n",
         "exports[1].store"),
    ],
)
def test_bad_store_config_names_the_key(tmp_path, text, key):
    with pytest.raises(cfgmod.ConfigError) as e:
        cfgmod.load(write(tmp_path, text))
    assert str(e.value).startswith(key + ":"), str(e.value)


def test_secret_does_not_appear_in_errors(tmp_path):
    with pytest.raises(cfgmod.ConfigError) as e:
        cfgmod.load(write(tmp_path, "[store]\nsecret_access_key = 'sekrit'\n"))
    assert "sekrit" not in str(e.value)


def test_cli_flags_override_the_store(tmp_path):
    conf = write(tmp_path, "[store]\nurl = 's3://from-file'\ns3_endpoint = 'http://a:1'\n")
    cfg = serve_config(["--config", str(conf), "--store", "s3://from-flag/p",
                        "--s3-endpoint", "http://127.0.0.1:9000"])
    assert (cfg.store.url, cfg.store.s3_endpoint) == ("s3://from-flag/p", "http://127.0.0.1:9000")
    assert serve_config(["--config", str(conf)]).store.url == "s3://from-file"


def test_cli_store_flag_is_validated_like_the_file():
    with pytest.raises(cfgmod.ConfigError, match=r"^store\.url:"):
        serve_config(["--store", "bucket-without-scheme"])
    with pytest.raises(cfgmod.ConfigError, match=r"^store\.s3_endpoint:"):
        serve_config(["--s3-endpoint", "localhost"])
