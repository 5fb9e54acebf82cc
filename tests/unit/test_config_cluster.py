"""The [cluster] section: the example cluster configs, command-line flags, and errors that
name the key."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest

from server import cli
from server import config as cfgmod
from server.config import Listen

REPO = Path(__file__).resolve().parents[2]
BASE = {"listen": "127.0.0.1:7001", "cluster_secret_file": "s", "peers": ["1=127.0.0.1:7001"]}


def load_cluster(**keys):
    return cfgmod.load(None, {"cluster": {"node_id": 1, **BASE, **keys}})


def documented_commands(path: Path) -> list[list[str]]:
    """The `objcache serve` lines in an example's header comment, as argv after `objcache`."""
    out = []
    for line in path.read_text().splitlines():
        text = line.lstrip("# ").strip()
        if text.startswith("objcache serve"):
            out.append(shlex.split(text)[1:])
    return out


def config_of(argv: list[str]) -> cfgmod.Config:
    parser = argparse.ArgumentParser()
    cli._serve_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return cfgmod.load(REPO / args.config, cli._overrides(args))


@pytest.mark.parametrize(("name", "groups"), [("cluster-3.toml", [1, 2, 3]),
                                              ("group-3.toml", [1, 1, 1])])
def test_example_cluster_configs_as_documented(name: str, groups: list[int]) -> None:
    commands = documented_commands(REPO / "configs" / name)
    assert len(commands) == 3
    cfgs = [config_of(argv) for argv in commands]
    assert [c.cluster.node_id for c in cfgs] == [1, 2, 3]
    assert [c.cluster_group() for c in cfgs] == groups
    peers = cfgs[0].cluster_peers()
    assert sorted(peers) == [1, 2, 3]
    for c in cfgs:
        assert c.cluster_peers() == peers, "every node lists the same founding members"
        assert c.cluster_rpc_address() == c.cluster_listen() == peers[c.cluster.node_id]
    for get in (lambda c: c.nfs_listen(), lambda c: c.metrics_listen(),
                lambda c: c.node.data_dir):
        assert len({get(c) for c in cfgs}) == 3, "nodes on one machine differ in these"


def test_standalone_default() -> None:
    cfg = cfgmod.load(None)
    assert cfg.cluster == cfgmod.ClusterConfig() and not cfg.clustered()


def test_helpers() -> None:
    cfg = load_cluster(peers=["2=127.0.0.1:7002", "3=[::1]:7003"], group=0)
    assert cfg.clustered()
    assert cfg.cluster_peers() == {1: Listen("127.0.0.1", 7001), 2: Listen("127.0.0.1", 7002),
                                   3: Listen("::1", 7003)}
    assert cfg.cluster_group() == 1
    assert cfg.cluster_peer_url(Listen("::1", 7003)) == "ws://[::1]:7003/"
    assert cfg.cluster_tls() is None and cfg.cluster_join() is None
    tls = load_cluster(tls_cert_file="c", tls_key_file="k", tls_ca_file="a")
    assert tls.cluster_tls() == ("c", "k", "a")
    assert tls.cluster_peer_url(Listen("10.0.0.2", 1)) == "wss://10.0.0.2:1/"
    assert load_cluster(group=7).cluster_group() == 7


def test_wildcard_listen_advertises_the_peers_entry() -> None:
    cfg = load_cluster(listen="0.0.0.0:7001", peers=["1=10.0.0.1:7001", "2=10.0.0.2:7001"])
    assert cfg.cluster_rpc_address() == Listen("10.0.0.1", 7001)


def test_join_is_accepted_by_the_config() -> None:
    cfg = load_cluster(peers=[], join="127.0.0.1:7009")
    assert cfg.cluster_join() == Listen("127.0.0.1", 7009)
    assert cfg.cluster_peers() == {1: Listen("127.0.0.1", 7001)}


def test_await_join_takes_the_place_of_join_and_not_beside_it() -> None:
    cfg = load_cluster(peers=[], await_join=True)
    assert cfg.cluster.await_join and cfg.cluster_join() is None
    with pytest.raises(cfgmod.ConfigError, match=r"cluster\.await_join: set with cluster\.join"):
        load_cluster(peers=[], join="127.0.0.1:7009", await_join=True)
    with pytest.raises(cfgmod.ConfigError, match=r"cluster\.peers: a joining node lists only"):
        load_cluster(peers=["1=127.0.0.1:7001", "2=127.0.0.1:7002"], await_join=True)
    with pytest.raises(cfgmod.ConfigError, match=r"cluster\.await_join: set, but"):
        cfgmod.load(None, {"cluster": {"await_join": True}})
    with pytest.raises(cfgmod.ConfigError, match=r"cluster\.await_join"):
        load_cluster(await_join="yes")


def test_a_joining_node_may_name_its_own_announced_address() -> None:
    cfg = load_cluster(listen="0.0.0.0:7001", peers=["1=10.0.0.1:7001"], join="10.0.0.2:7002")
    assert cfg.cluster_rpc_address() == Listen("10.0.0.1", 7001)
    with pytest.raises(cfgmod.ConfigError, match=r"cluster\.peers: a joining node lists only"):
        load_cluster(peers=["1=127.0.0.1:7001", "2=127.0.0.1:7002"], join="127.0.0.1:7002")


@pytest.mark.parametrize(
    ("keys", "key"),
    [
        ({"node_id": -1}, "cluster.node_id"),
        ({"node_id": 1 << 20}, "cluster.node_id"),
        ({"node_id": "1"}, "cluster.node_id"),
        ({"listen": ""}, "cluster.listen"),
        ({"listen": "off"}, "cluster.listen"),
        ({"listen": "host:1"}, "cluster.listen"),
        ({"cluster_secret_file": ""}, "cluster.cluster_secret_file"),
        ({"peers": []}, "cluster.peers"),
        ({"join": "127.0.0.1:7009", "peers": ["2=127.0.0.1:7002"]}, "cluster.peers"),
        ({"peers": [], "join": "nowhere"}, "cluster.join"),
        ({"peers": "1=127.0.0.1:7001"}, "cluster.peers"),
        ({"peers": ["1=127.0.0.1:7001", "x=127.0.0.1:7002"]}, "cluster.peers[1]"),
        ({"peers": ["2:127.0.0.1:7002"]}, "cluster.peers[0]"),
        ({"peers": ["0=127.0.0.1:7002"]}, "cluster.peers[0]"),
        ({"peers": ["2=127.0.0.1:7002", "2=127.0.0.1:7003"]}, "cluster.peers[1]"),
        ({"peers": ["2=127.0.0.1:7002", "3=127.0.0.1:7002"]}, "cluster.peers[1]"),
        ({"peers": ["1=127.0.0.1:7005"]}, "cluster.peers[0]"),
        ({"peers": ["2=127.0.0.1:7001"]}, "cluster.listen"),
        ({"group": -2}, "cluster.group"),
        ({"vnodes": 0}, "cluster.vnodes"),
        ({"dir_placement": "random"}, "cluster.dir_placement"),
        ({"request_timeout_s": 0}, "cluster.request_timeout_s"),
        ({"tls_cert_file": "c"}, "cluster.tls_cert_file"),
        ({"bulk_port": -1}, "cluster.bulk_port"),
        ({"bulk_port": 65536}, "cluster.bulk_port"),
        ({"bulk_reads": "yes"}, "cluster.bulk_reads"),
        ({"bogus": 1}, "cluster.bogus"),
    ],
)
def test_bad_cluster_config_names_the_key(keys: dict, key: str) -> None:
    with pytest.raises(cfgmod.ConfigError) as e:
        load_cluster(**keys)
    assert str(e.value).startswith(key + ":"), str(e.value)


@pytest.mark.parametrize("name", ["listen", "peers", "join", "group", "cluster_secret_file"])
def test_cluster_keys_need_a_node_id(name: str) -> None:
    value = {"listen": "127.0.0.1:1", "peers": ["1=127.0.0.1:1"], "join": "127.0.0.1:1",
             "group": 2, "cluster_secret_file": "s"}[name]
    with pytest.raises(cfgmod.ConfigError, match=f"^cluster.{name}: .*node_id is 0"):
        cfgmod.load(None, {"cluster": {name: value}})


def test_cli_flags_override_the_file(tmp_path: Path) -> None:
    cfg = config_of(["serve", "--config", "configs/cluster-3.toml", "--node-id", "2",
                     "--listen", "127.0.0.1:7002", "--peers", "1=127.0.0.1:7001, 2=127.0.0.1:7002",
                     "--group", "5", "--cluster-secret-file", "/x"])
    c = cfg.cluster
    assert (c.node_id, c.listen, c.group, c.cluster_secret_file) == (2, "127.0.0.1:7002", 5, "/x")
    assert c.peers == ("1=127.0.0.1:7001", "2=127.0.0.1:7002")
