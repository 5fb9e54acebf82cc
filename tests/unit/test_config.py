"""Configuration: the embedded default, the example files, and errors that name the key."""

from pathlib import Path

import pytest

from server import config as cfgmod

REPO = Path(__file__).resolve().parents[2]


def test_embedded_default_is_one_loopback_node():
    cfg = cfgmod.load(None)
    assert cfg.nfs_listen() == cfgmod.Listen("127.0.0.1", 2049)
    assert cfg.node.data_dir == "var"
    assert [e.path for e in cfg.exports] == ["/"]
    assert cfg.metrics_listen() is None


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_example_configs_load(path):
    cfg = cfgmod.load(path)
    assert cfg.exports


def test_single_node_example_equals_the_default():
    assert cfgmod.load(REPO / "configs" / "single-node.toml") == cfgmod.load(None)


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, key",
    [
        ("[nfs]\nlisten = 'nowhere'\n", "nfs.listen"),
        ("[nfs]\nlisten = 'off'\n", "nfs.listen"),
        ("[nfs]\nlisten = '127.0.0.1:70000'\n", "nfs.listen"),
        ("[nfs]\nlistne = '127.0.0.1:2049'\n", "nfs.listne"),
        ("[bogus]\nx = 1\n", "bogus"),
        ("[limits]\nmax_connections = 0\n", "limits.max_connections"),
        ("[limits]\nmax_connections = 'many'\n", "limits.max_connections"),
        ("[limits]\nmax_connections = true\n", "limits.max_connections"),
        ("[storage]\nchunk_size_bytes = 1\n", "storage.chunk_size_bytes"),
        ("[node]\nlog_level = 'loud'\n", "node.log_level"),
        ("[[exports]]\npath = 'relative'\n", "exports[0].path"),
        ("[[exports]]\npath = '/'\nclients = ['10.0.0.0/33']\n", "exports[0].clients[0]"),
        ("[[exports]]\npath = '/'\nsquash = true\n", "exports[0].squash"),
        ("[[exports]]\npath = '/'\n[[exports]]\npath = '/'\n", "exports[1].path"),
        ("[[exports]]\npath = '/'\nanon_uid = -1\n", "exports[0].anon_uid"),
        ("exports = []\n", "exports"),
        ("[limits]\nmax_record_bytes = 8192\n", "limits.max_record_bytes"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, key):
    with pytest.raises(cfgmod.ConfigError) as e:
        cfgmod.load(write(tmp_path, text))
    assert str(e.value).startswith(key + ":"), str(e.value)


def test_not_toml_is_refused(tmp_path):
    with pytest.raises(cfgmod.ConfigError, match="not valid TOML"):
        cfgmod.load(write(tmp_path, "[nfs\n"))


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(cfgmod.ConfigError, match="cannot read config"):
        cfgmod.load(tmp_path / "absent.toml")


def test_overrides_are_validated_like_the_file():
    cfg = cfgmod.load(None, {"nfs": {"listen": "127.0.0.1:12049", "portmap_listen": "off"}})
    assert cfg.nfs_listen().port == 12049
    assert cfg.portmap_listen() is None
    with pytest.raises(cfgmod.ConfigError, match=r"^metrics\.listen:"):
        cfgmod.load(None, {"metrics": {"listen": "x"}})


def test_ipv6_listen():
    assert cfgmod.parse_listen("k", "[::1]:2049") == cfgmod.Listen("::1", 2049)
