"""Node configuration: TOML in, validated frozen dataclasses out.

Rules:
- Every key has a type and, where it matters, a range; an unknown key or a bad value stops the
  start with a ConfigError that names the key by its dotted path (`nfs.listen`, `exports[0].path`).
- The embedded default (no file at all) is one node, data in ./var, NFS on 127.0.0.1:2049, the
  whole tree exported to loopback clients only.
- Command-line overrides are applied to the parsed dict before validation, so they are checked
  by the same rules as the file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage.objstore.url import ADDRESSING, StoreSpec, parse_store_url


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key."""


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_listen(key: str, value: str) -> Listen | None:
    """`HOST:PORT`, `[V6]:PORT`, or `off`."""
    if value == "off":
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: expected HOST:PORT or 'off', got {value!r}")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigError(f"{key}: {host!r} is not an IP address") from None
    return Listen(host, int(port))


@dataclass(frozen=True)
class NodeConfig:
    data_dir: str = "var"
    log_level: str = "info"


@dataclass(frozen=True)
class NfsConfig:
    listen: str = "127.0.0.1:2049"
    # The portmapper lets `mount -t nfs host:/ /mnt` work without port options. Port 111 needs
    # root; "auto" means 0.0.0.0:111 when running as root, else off.
    portmap_listen: str = "auto"
    rtmax_bytes: int = 1 << 20
    wtmax_bytes: int = 1 << 20
    dtpref_bytes: int = 64 << 10


@dataclass(frozen=True)
class LimitsConfig:
    max_record_bytes: int = (1 << 20) + (64 << 10)  # a 1 MiB WRITE plus its headers
    max_connections: int = 512
    max_in_flight_per_connection: int = 64
    idle_timeout_s: float = 900.0
    drc_max_entries: int = 4096
    drc_max_bytes: int = 16 << 20


@dataclass(frozen=True)
class ExportConfig:
    """One export. The defaults are Linux exports(5)'s (and nfs_gateway.exports.Export's):
    root_squash, and secure (a client's source port must be reserved, < 1024). A local
    deployment that serves unprivileged user-space clients or its own root says so
    (configs/local.toml, `make run`, `cluster up`)."""

    path: str = "/"
    clients: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    read_only: bool = False
    root_squash: bool = True
    all_squash: bool = False
    anon_uid: int = 65534
    anon_gid: int = 65534
    insecure: bool = False
    # The bucket behind this export: file:///PATH or s3://BUCKET/PREFIX. "" for "/": the
    # [store] url; "" for any other export: a plain directory of the tree.
    store: str = ""


@dataclass(frozen=True)
class StorageConfig:
    chunk_size_bytes: int = 16 << 20
    kv_threads: int = 4
    # Namespace changes fsynced before the reply (knfsd `sync`); false trades power-loss
    # durability of the latest changes for metadata speed (knfsd `async`).
    sync_metadata: bool = True
    inline_max_bytes: int = 16 << 10  # files up to this size keep their bytes in LevelDB


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = "off"


@dataclass(frozen=True)
class ClusterConfig:
    """Cluster membership of this node. node_id 0: a standalone node (no RPC plane)."""

    node_id: int = 0  # >= 1 in a cluster; unique, never reused
    listen: str = ""  # HOST:PORT of this node's RPC plane (what peers dial)
    # Founding members "ID=HOST:PORT" (their RPC planes), this node included or not; every
    # founding node must list the same members.
    peers: tuple[str, ...] = ()
    join: str = ""  # HOST:PORT of a running member to join through (a new group)
    await_join: bool = False  # wait for `objcache admin join` to name that member instead
    group: int = 0  # this node's Raft group; 0: the node id (one-member groups)
    cluster_secret_file: str = ""  # shared by every node; authenticates the RPC plane
    # `objcache admin` proves this token (not the cluster secret) and may only read status
    # and run admin jobs; "": admins use the cluster secret.
    admin_token_file: str = ""
    vnodes: int = 64  # ring points per group (ring.py)
    # Where MKDIR puts a new directory: "local", in the group of the node whose gateway made
    # it (its client's later work there stays on that node); "spread", wherever its id
    # hashes (one client's tree spreads over all groups). Files always take their directory's.
    dir_placement: str = "local"
    request_timeout_s: float = 10.0  # a request to a group gives up (NFS3ERR_JUKEBOX) after this
    # Another node's gateway may answer a group's inodes and names again from a reply for this
    # long (a lease the group takes back before it changes them); 0: it always asks.
    lease_s: float = 1.0
    # Chunk bytes another node's gateway reads travel over a plain TCP connection beside the
    # plane (server/rpc/bulk.py), on this port of cluster.listen's host (0: any free port,
    # which peers learn over the plane). Off when the plane uses TLS.
    bulk_reads: bool = True
    bulk_port: int = 0
    bootstrap_timeout_s: float = 120.0  # waiting for the founding peers / a group leader
    tls_cert_file: str = ""  # all three set: the RPC plane uses mutual TLS (wss://)
    tls_key_file: str = ""
    tls_ca_file: str = ""


@dataclass(frozen=True)
class StoreConfig:
    """The object store behind the tree (storage/objstore) and how to reach it."""

    url: str = ""  # "" = file://DATA_DIR/bucket; or file:///PATH, s3://BUCKET/PREFIX
    s3_endpoint: str = ""  # "" = AWS (from the region); e.g. http://127.0.0.1:8333
    region: str = ""  # "" = the environment / AWS config
    # Both "": the environment and the standard AWS credential chain.
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)
    addressing: str = "path"  # "path" (s3_endpoint/bucket/key) or "virtual" (bucket.host)
    max_connections: int = 16  # requests in flight to the store
    max_attempts: int = 8  # per request, retries of 5xx, throttling and timeouts included
    timeout_s: float = 30.0  # connect and read timeout of one attempt
    verify_tls: bool = True


@dataclass(frozen=True)
class CacheConfig:
    """How a node caches the bucket and writes back to it (server/cluster/bucket.py, flush.py)."""

    capacity_bytes: int = 8 << 30  # clean cached chunks are evicted (LRU) above this
    ttl_s: float = 30.0  # listings and clean files' attributes are revalidated after this
    readahead_chunks: int = 2  # chunks fetched ahead of a sequential reader
    prefetch_listed_bytes: int = 64 << 20  # READDIRPLUS fetches listed files ahead
    list_ahead_dirs: int = 8  # READDIRPLUS loads this many of the listed subdirectories ahead
    fetch_parallel: int = 4  # ranged GETs in flight for one chunk
    fetch_part_bytes: int = 4 << 20  # bytes per ranged GET
    head_objects: bool = True  # a listing HEADs new objects for their x-amz-meta-* attributes
    file_mode: int = 0o644  # attributes of objects objcache did not write
    dir_mode: int = 0o755
    uid: int = 0
    gid: int = 0
    flush_delay_s: float = 5.0  # a changed file is written back this long after its change
    flush_interval_s: float = 1.0  # how often the write-back looks for work
    flush_parallel: int = 8  # files uploaded at once
    flush_part_parallel: int = 4  # parts of one multipart upload at once


@dataclass(frozen=True)
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    nfs: NfsConfig = field(default_factory=NfsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    exports: tuple[ExportConfig, ...] = (ExportConfig(),)

    # Derived, validated views.
    def nfs_listen(self) -> Listen:
        listen = parse_listen("nfs.listen", self.nfs.listen)
        assert listen is not None  # validate() refuses "off"
        return listen

    def portmap_listen(self) -> Listen | None:
        if self.nfs.portmap_listen == "auto":
            return Listen("0.0.0.0", 111) if os.geteuid() == 0 else None
        return parse_listen("nfs.portmap_listen", self.nfs.portmap_listen)

    def metrics_listen(self) -> Listen | None:
        return parse_listen("metrics.listen", self.metrics.listen)

    def clustered(self) -> bool:
        return self.cluster.node_id != 0

    def cluster_listen(self) -> Listen:
        listen = parse_listen("cluster.listen", self.cluster.listen)
        assert listen is not None  # validate() refuses "off"
        return listen

    def cluster_peers(self) -> dict[int, Listen]:
        """Every founding member's RPC address by node id, this node included (at its entry
        in cluster.peers, else at cluster.listen); only this node when joining."""
        peers = dict(parse_peer(f"cluster.peers[{i}]", p) for i, p in enumerate(self.cluster.peers))
        peers.setdefault(self.cluster.node_id, self.cluster_listen())
        return dict(sorted(peers.items()))

    def cluster_rpc_address(self) -> Listen:
        """The RPC address this node gives its peers: its own entry in cluster.peers when
        there is one (cluster.listen may be a wildcard like 0.0.0.0), else cluster.listen."""
        return self.cluster_peers()[self.cluster.node_id]

    def cluster_group(self) -> int:
        return self.cluster.group or self.cluster.node_id

    def cluster_join(self) -> Listen | None:
        return parse_listen("cluster.join", self.cluster.join) if self.cluster.join else None

    def cluster_tls(self) -> tuple[str, str, str] | None:
        """(cert, key, CA) file paths when the RPC plane uses TLS."""
        c = self.cluster
        return (c.tls_cert_file, c.tls_key_file, c.tls_ca_file) if c.tls_cert_file else None

    def cluster_peer_url(self, address: Listen) -> str:
        """The RpcPlane URL of a peer at `address`."""
        host = f"[{address.host}]" if ":" in address.host else address.host
        return f"{'wss' if self.cluster_tls() else 'ws'}://{host}:{address.port}/"


# Ranges for numeric keys: (min, max). Keys not listed only need the right type.
_RANGES: dict[str, tuple[float, float]] = {
    "nfs.rtmax_bytes": (4096, 1 << 20),
    "nfs.wtmax_bytes": (4096, 1 << 20),
    "nfs.dtpref_bytes": (512, 1 << 20),
    "limits.max_record_bytes": (8192, 64 << 20),
    "limits.max_connections": (1, 100_000),
    "limits.max_in_flight_per_connection": (1, 1024),
    "limits.idle_timeout_s": (1, 86_400),
    "limits.drc_max_entries": (0, 1_000_000),
    "limits.drc_max_bytes": (0, 1 << 30),
    "storage.chunk_size_bytes": (64 << 10, 1 << 30),
    "storage.kv_threads": (1, 64),
    "storage.inline_max_bytes": (0, 1 << 20),
    "exports.anon_uid": (0, 2**32 - 1),
    "exports.anon_gid": (0, 2**32 - 1),
    # Inode ids are (node id << 44) | a counter in 64 bits (cluster/inoalloc.py).
    "cluster.node_id": (0, (1 << 20) - 1),
    "cluster.group": (0, (1 << 20) - 1),
    "cluster.vnodes": (1, 1024),
    "cluster.request_timeout_s": (0.1, 3600),
    "cluster.lease_s": (0, 60),
    "cluster.bulk_port": (0, 65535),
    "cluster.bootstrap_timeout_s": (1, 86_400),
    "store.max_connections": (1, 1024),
    "store.max_attempts": (1, 100),
    "store.timeout_s": (0.1, 3600),
    "cache.capacity_bytes": (1 << 20, 1 << 60),
    "cache.ttl_s": (0, 86_400 * 365),
    "cache.readahead_chunks": (0, 64),
    "cache.prefetch_listed_bytes": (0, 1 << 40),
    "cache.list_ahead_dirs": (0, 1024),
    "cache.fetch_parallel": (1, 64),
    "cache.fetch_part_bytes": (64 << 10, 1 << 30),
    "cache.file_mode": (0, 0o7777),
    "cache.dir_mode": (0, 0o7777),
    "cache.uid": (0, 2**32 - 1),
    "cache.gid": (0, 2**32 - 1),
    "cache.flush_delay_s": (0, 86_400),
    "cache.flush_interval_s": (0.01, 3600),
    "cache.flush_parallel": (1, 256),
    "cache.flush_part_parallel": (1, 64),
}
_LOG_LEVELS = ("debug", "info", "warning", "error")
DIR_PLACEMENTS = ("local", "spread")  # cluster.dir_placement


# Keys whose values are never shown: not in errors, not in a repr (their fields have
# repr=False), not in logs.
_SECRET_KEYS = frozenset({"store.access_key_id", "store.secret_access_key"})


def _check_scalar(key: str, range_key: str, typ: Any, value: Any) -> Any:
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (typ in (int, float) and isinstance(value, bool)) or not isinstance(value, typ):
        shown = "(not shown: a secret)" if range_key in _SECRET_KEYS else repr(value)
        raise ConfigError(f"{key}: expected {typ.__name__}, got {type(value).__name__} {shown}")
    if range_key in _RANGES:
        lo, hi = _RANGES[range_key]
        if not lo <= value <= hi:
            raise ConfigError(f"{key}: {value} is outside [{lo}, {hi}]")
    return value


def _build(cls: type, raw: Any, key: str, range_prefix: str) -> Any:
    """Build dataclass `cls` from a TOML table, naming the key of any error."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{key or 'config'}: expected a table, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in raw:
        if k not in names:
            where = f"{key}.{k}" if key else k
            raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(names))})")
    values = {}
    for name, raw_value in raw.items():
        sub = f"{key}.{name}" if key else name
        range_key = f"{range_prefix}.{name}" if range_prefix else name
        values[name] = _convert(hints[name], raw_value, sub, range_key)
    return cls(**values)


def _convert(typ: Any, raw: Any, key: str, range_key: str) -> Any:
    origin = typing.get_origin(typ)
    if dataclasses.is_dataclass(typ):
        return _build(typ, raw, key, range_key)
    if origin is tuple:
        item_type = typing.get_args(typ)[0]
        if not isinstance(raw, list):
            raise ConfigError(f"{key}: expected a list, got {type(raw).__name__}")
        return tuple(_convert(item_type, v, f"{key}[{i}]", range_key) for i, v in enumerate(raw))
    if origin is types.UnionType:
        raise AssertionError(f"config field {key} must not be a union")
    return _check_scalar(key, range_key, typ, raw)


def _validate(cfg: Config) -> None:
    if cfg.node.log_level not in _LOG_LEVELS:
        raise ConfigError(
            f"node.log_level: expected one of {_LOG_LEVELS}, got {cfg.node.log_level!r}"
        )
    if parse_listen("nfs.listen", cfg.nfs.listen) is None:
        raise ConfigError("nfs.listen: the NFS service cannot be 'off'")
    if cfg.nfs.portmap_listen != "auto":
        parse_listen("nfs.portmap_listen", cfg.nfs.portmap_listen)
    parse_listen("metrics.listen", cfg.metrics.listen)
    if not cfg.exports:
        raise ConfigError("exports: at least one export is needed")
    seen = set()
    for i, exp in enumerate(cfg.exports):
        _validate_export(f"exports[{i}]", exp)
        if exp.path in seen:
            raise ConfigError(f"exports[{i}].path: {exp.path!r} is exported twice")
        seen.add(exp.path)
    if cfg.limits.max_record_bytes < cfg.nfs.wtmax_bytes + 4096:
        raise ConfigError("limits.max_record_bytes: must exceed nfs.wtmax_bytes by 4096 or more")
    _validate_cluster(cfg.cluster)
    _validate_store(cfg.store)


def _validate_export(key: str, exp: ExportConfig) -> None:
    if not exp.path.startswith("/") or len(exp.path) > 1024 or "//" in exp.path:
        raise ConfigError(f"{key}.path: expected an absolute path, got {exp.path!r}")
    for j, net in enumerate(exp.clients):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"{key}.clients[{j}]: {net!r} is not a CIDR network") from None
    if exp.store:
        _check_store_url(f"{key}.store", exp.store)


def _check_store_url(key: str, url: str) -> None:
    try:
        parse_store_url(url)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def _validate_store(s: StoreConfig) -> None:
    if s.url:
        _check_store_url("store.url", s.url)
    if s.addressing not in ADDRESSING:
        raise ConfigError(f"store.addressing: expected one of {ADDRESSING}, got {s.addressing!r}")
    if s.s3_endpoint:
        scheme, sep, host = s.s3_endpoint.partition("://")
        if "@" in host.partition("/")[0]:
            raise ConfigError("store.s3_endpoint: credentials do not go in the URL (not shown "
                              "here); give store.access_key_id and store.secret_access_key, or "
                              "use the environment")
        if scheme not in ("http", "https") or not sep or not host.strip("/"):
            raise ConfigError(f"store.s3_endpoint: expected http(s)://HOST[:PORT], "
                              f"got {s.s3_endpoint!r}")
    if bool(s.access_key_id) != bool(s.secret_access_key):
        raise ConfigError("store.secret_access_key: access_key_id and secret_access_key go "
                          "together (both, or neither for the environment / AWS chain)")


def parse_peer(key: str, value: str) -> tuple[int, Listen]:
    """`ID=HOST:PORT` (a founding member's RPC plane)."""
    node_id, sep, addr = value.partition("=")
    if not sep or not node_id.strip().isdigit():
        raise ConfigError(f"{key}: expected ID=HOST:PORT, got {value!r}")
    listen = parse_listen(key, addr.strip())
    if listen is None or int(node_id) < 1:
        raise ConfigError(f"{key}: expected ID=HOST:PORT with ID >= 1, got {value!r}")
    return int(node_id), listen


def _validate_cluster(c: ClusterConfig) -> None:
    if c.dir_placement not in DIR_PLACEMENTS:
        raise ConfigError(f"cluster.dir_placement: expected one of {DIR_PLACEMENTS}, "
                          f"got {c.dir_placement!r}")
    if c.node_id == 0:
        for name in ("listen", "peers", "join", "await_join", "group", "cluster_secret_file",
                     "admin_token_file"):
            if getattr(c, name):
                raise ConfigError(f"cluster.{name}: set, but cluster.node_id is 0 (standalone); "
                                  "give this node an id >= 1 to run it in a cluster")
        return
    if not c.listen:
        raise ConfigError("cluster.listen: required in a cluster (this node's RPC HOST:PORT)")
    listen = parse_listen("cluster.listen", c.listen)
    if listen is None:
        raise ConfigError("cluster.listen: the RPC plane cannot be 'off'")
    if not c.cluster_secret_file:
        raise ConfigError("cluster.cluster_secret_file: required in a cluster")
    if not c.peers and not c.join and not c.await_join:
        raise ConfigError("cluster.peers: give either cluster.peers (the founding members), "
                          "cluster.join (a running member) or cluster.await_join")
    if c.join and c.await_join:
        raise ConfigError("cluster.await_join: set with cluster.join; give one of them")
    if (c.join or c.await_join) and any(parse_peer(f"cluster.peers[{i}]", text)[0] != c.node_id
                      for i, text in enumerate(c.peers)):
        raise ConfigError("cluster.peers: a joining node lists only itself there (the "
                          "address it gives the others); the cluster tells it the rest")
    if c.join and parse_listen("cluster.join", c.join) is None:
        raise ConfigError("cluster.join: expected HOST:PORT")
    _validate_peers(c, listen)
    tls = (c.tls_cert_file, c.tls_key_file, c.tls_ca_file)
    if any(tls) and not all(tls):
        raise ConfigError("cluster.tls_cert_file: tls_cert_file, tls_key_file and tls_ca_file "
                          "go together (all three, or none)")


def _validate_peers(c: ClusterConfig, listen: Listen) -> None:
    ids: dict[int, int] = {}
    addrs: dict[Listen, int] = {}
    for i, text in enumerate(c.peers):
        key = f"cluster.peers[{i}]"
        node_id, addr = parse_peer(key, text)
        if node_id in ids:
            raise ConfigError(f"{key}: node {node_id} is listed twice")
        if addr in addrs:
            raise ConfigError(f"{key}: {addr} is also node {addrs[addr]}'s address")
        # This node's own entry is the address it gives its peers; it listens there, or on
        # that port of every interface (0.0.0.0 or ::).
        if node_id == c.node_id and addr != listen and not (
                addr.port == listen.port and listen.host in ("0.0.0.0", "::")):
            raise ConfigError(f"{key}: this node ({node_id}) is listed at {addr}, "
                              f"but cluster.listen is {listen}")
        ids[node_id], addrs[addr] = i, node_id
    if c.node_id not in ids and listen in addrs:
        raise ConfigError(f"cluster.listen: {listen} is node {addrs[listen]}'s address "
                          f"in cluster.peers, but this is node {c.node_id}")


def from_dict(raw: dict[str, Any]) -> Config:
    cfg = _build(Config, raw, "", "")
    _validate(cfg)
    return cfg


def load(path: Path | None, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Read `path` (or nothing: the embedded default), apply overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    for section, values in (overrides or {}).items():
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{section}: expected a table")
        table.update(values)
    return from_dict(raw)


def data_dir(cfg: Config) -> Path:
    return Path(cfg.node.data_dir).resolve()


def store_url(cfg: Config, export: ExportConfig) -> str | None:
    """The URL of the bucket behind `export`; None: the export is a plain directory."""
    if export.store:
        return export.store
    if export.path == "/":
        return cfg.store.url or f"file://{data_dir(cfg) / 'bucket'}"
    return None


def store_spec(cfg: Config, export: ExportConfig) -> StoreSpec | None:
    """How to open the bucket behind `export` (storage.objstore.url.open_store), or None."""
    url = store_url(cfg, export)
    if url is None:
        return None
    s = cfg.store
    return StoreSpec(
        url, s3_endpoint=s.s3_endpoint, region=s.region, access_key_id=s.access_key_id,
        secret_access_key=s.secret_access_key, addressing=s.addressing,
        max_connections=s.max_connections, max_attempts=s.max_attempts, timeout_s=s.timeout_s,
        verify_tls=s.verify_tls,
    )
