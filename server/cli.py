"""The `objcache` command line: `objcache serve` starts a node; `objcache cluster up|down` runs a
local cluster of node processes (server/cluster/launcher.py).

Exit codes: 0 clean shutdown, 2 usage or configuration error, 1 a failure while serving.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import trio

from server import config as config_mod
from server import gctune
from server.cluster import admin, launcher

log = logging.getLogger("objcache")
QUIET_AT_DEBUG = ("botocore", "boto3", "s3transfer", "urllib3")


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run a node")
    p.add_argument("--config", type=Path, help="TOML configuration file (configs/ has examples)")
    p.add_argument("--data-dir", help="where the node keeps its LevelDB and chunk files")
    p.add_argument("--nfs-listen", metavar="HOST:PORT", help="NFS and MOUNT service address")
    p.add_argument(
        "--portmap-listen", metavar="HOST:PORT|off", help="portmapper (default 0.0.0.0:111 as root)"
    )
    p.add_argument("--metrics-listen", metavar="HOST:PORT|off", help="Prometheus /metrics")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    c = p.add_argument_group("cluster (the [cluster] section; README: Configuration)")
    c.add_argument("--node-id", type=int, metavar="ID", help="this node's id (>= 1): cluster mode")
    c.add_argument("--listen", metavar="HOST:PORT", help="this node's RPC plane address")
    c.add_argument("--peers", metavar="ID=HOST:PORT,...",
                   help="the founding members' RPC addresses (this node included or not)")
    c.add_argument("--join", metavar="HOST:PORT",
                   help="join a running cluster through any member's RPC address (a new group)")
    c.add_argument("--await-join", action="store_true", default=None,
                   help="wait for `objcache admin join` to name the member to join through")
    c.add_argument("--group", type=int, metavar="G", help="this node's group (default: its id)")
    c.add_argument("--cluster-secret-file", metavar="FILE", help="the shared cluster secret")
    b = p.add_argument_group("object store (the [store] section)")
    b.add_argument("--store", metavar="URL",
                   help="the bucket behind '/': file:///PATH or s3://BUCKET/PREFIX")
    b.add_argument("--s3-endpoint", metavar="URL", help="an S3-compatible server, e.g. "
                   "http://127.0.0.1:8333 (default: AWS)")


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """Command-line flags as config overrides, validated with the file's rules."""
    table = {
        ("node", "data_dir"): args.data_dir,
        ("node", "log_level"): args.log_level,
        ("nfs", "listen"): args.nfs_listen,
        ("nfs", "portmap_listen"): args.portmap_listen,
        ("metrics", "listen"): args.metrics_listen,
        ("cluster", "node_id"): args.node_id,
        ("cluster", "listen"): args.listen,
        ("cluster", "peers"): _split_list(args.peers),
        ("cluster", "join"): args.join,
        ("cluster", "await_join"): args.await_join,
        ("cluster", "group"): args.group,
        ("cluster", "cluster_secret_file"): args.cluster_secret_file,
        ("store", "url"): args.store,
        ("store", "s3_endpoint"): args.s3_endpoint,
    }
    out: dict[str, dict[str, object]] = {}
    for (section, key), value in table.items():
        if value is not None:
            out.setdefault(section, {})[key] = value
    return out


def _split_list(text: str | None) -> list[str] | None:
    return None if text is None else [p.strip() for p in text.split(",") if p.strip()]


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        cfg = config_mod.load(args.config, _overrides(args))
    except config_mod.ConfigError as e:
        print(f"objcache: configuration error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=cfg.node.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # At debug, botocore logs each request's headers, the S3 access key id among them
    # (Authorization: ... Credential=KEY/...): the S3 client's libraries log from INFO up.
    for name in QUIET_AT_DEBUG:
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger().level))
    from server.node import StartupError, serve  # import late: keeps `--help` fast

    gctune.tune()
    try:
        trio.run(serve, cfg)
    except StartupError as e:
        print(f"objcache: cannot start: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="objcache", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    launcher.add_parser(sub)
    admin.add_parser(sub)
    args = parser.parse_args(argv)
    commands = {"serve": _cmd_serve, "cluster": launcher.run, "admin": admin.run}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
