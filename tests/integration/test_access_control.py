"""Access control with real clients (issue 7): export allow-lists, root and all squash,
read-only exports and the secure-port option through libnfs (its tools and the library through
ctypes, tests/nfsclient.py), on a node process and on a three-node cluster; the node RPC plane
refusing a wrong cluster secret and the admin API a missing or wrong token; every refusal in the
node's log and counted on /metrics; and the secrets (cluster secret, admin token, S3 keys)
nowhere in logs, `admin status` (text and --json), process listings or configuration errors.

libnfs binds a reserved source port (512-1023) when it can, i.e. when run as root: the tests
run it as root for a "secure" client and under `setpriv` as nobody for one from a port >= 1024.
(The kernel client through qemu's user networking: tests/kernel/test_kernel_access.py.)
"""

from __future__ import annotations

import errno
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import trio
from clusterproc import LocalCluster
from nfsclient import LibNfs
from rpcclient import RpcClient, authsys, u32, xdr_string
from serverproc import REPO, ObjcacheServer, free_port, nfs_cat, nfs_cp, nfs_ls, nfs_url
from trio_websocket import ConnectionClosed, open_websocket_url

from nfs_gateway.program import AUTH_SYS
from nfs_gateway.rpc import MSG_DENIED, AuthStat, OpaqueAuth
from server.cluster import protocol as p
from server.rpc import handshake
from server.rpc.frames import RemoteError
from server.rpc.plane import ADMIN_ID_BASE, AuthRefused, RpcConfig, RpcPlane

pytestmark = pytest.mark.integration
MOUNT_PROG, NFS_PROG = 100005, 100003

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
LOOPBACK = ["127.0.0.0/8", "::1/128"]
OPEN = {"clients": LOOPBACK, "insecure": True, "root_squash": False}


# ---- helpers ---------------------------------------------------------------------------------


def metric(metrics_addr: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples on /metrics whose labels include `labels`."""
    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:{{(.*)}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def url(port: int, path: str, **opts: int) -> str:
    """A libnfs URL of `path` (an export, or a file in one) with options (uid=, gid=).
    libnfs would also mount every export below the one named (auto-traverse-mounts), and
    fail with the first it may not: each test names the export it means."""
    opts = {"auto-traverse-mounts": 0, **opts}
    return nfs_url(port, port, path) + "".join(f"&{k}={v}" for k, v in opts.items())


def mount(port: int, export: str, **opts: int) -> LibNfs:
    return LibNfs(url(port, export, **opts))


def refused_lines(log: str, export: str, reason: str) -> list[str]:
    return [ln for ln in log.splitlines()
            if "refused 127.0.0.1:" in ln and f"export {export} ({reason})" in ln]


# ---- one node, every export option -----------------------------------------------------------


@pytest.fixture
def node(tmp_path: Path):
    """A standalone node with an export per option, each directory made through "/"."""
    metrics_port = free_port()
    exports = (
        {"path": "/", **OPEN},
        {"path": "/sq", "clients": LOOPBACK, "insecure": True, "anon_uid": 4242,
         "anon_gid": 4343},  # root_squash: the default
        {"path": "/all", "clients": LOOPBACK, "insecure": True, "all_squash": True,
         "anon_uid": 5151, "anon_gid": 5252},
        {"path": "/ro", "clients": LOOPBACK, "insecure": True, "read_only": True},
        {"path": "/deny", "clients": ["10.9.9.0/24"], "insecure": True},
        {"path": "/sec", "clients": LOOPBACK, "root_squash": False},  # secure: the default
    )
    srv = ObjcacheServer(tmp_path / "data", log_path=tmp_path / "node.log", exports=exports,
                         extra_args=("--metrics-listen", f"127.0.0.1:{metrics_port}"))
    srv.start()
    srv.metrics = f"127.0.0.1:{metrics_port}"
    root = mount(srv.nfs_port, "/")
    try:
        for d in ("/sq", "/all", "/ro", "/deny", "/sec"):
            root.mkdir(d, 0o777)
            root.chmod(d, 0o777)
        root.write_file("/ro/hello", b"read me")
        yield srv, root
    finally:
        root.close()
        srv.stop()


def test_export_options_through_libnfs(node) -> None:
    srv, root = node
    port = srv.nfs_port

    # root_squash (the default): uid 0 and gid 0 act as anon; other users as themselves.
    sq = mount(port, "/sq", uid=0, gid=0)
    sq.write_file("/by-root", b"x")
    sq.close()
    user = mount(port, "/sq", uid=1000, gid=1000)
    user.write_file("/by-user", b"y")
    user.close()
    assert (root.stat("/sq/by-root").uid, root.stat("/sq/by-root").gid) == (4242, 4343)
    assert (root.stat("/sq/by-user").uid, root.stat("/sq/by-user").gid) == (1000, 1000)
    # no_root_squash on "/": root stays root (the control for the above).
    root.write_file("/sq/by-unsquashed-root", b"z")
    assert root.stat("/sq/by-unsquashed-root").uid == 0

    # all_squash: everyone is anon.
    everyone = mount(port, "/all", uid=1000, gid=1000)
    everyone.write_file("/f", b"x")
    everyone.close()
    assert (root.stat("/all/f").uid, root.stat("/all/f").gid) == (5151, 5252)

    # read_only: reads work, every change is NFS3ERR_ROFS (EROFS).
    assert nfs_cat(url(port, "/ro/hello")) == b"read me"
    ro = mount(port, "/ro")
    for change in (lambda: ro.write_file("/new", b"x"), lambda: ro.mkdir("/d"),
                   lambda: ro.unlink("/hello"), lambda: ro.chmod("/hello", 0o600)):
        with pytest.raises(OSError) as e:
            change()
        assert e.value.errno == errno.EROFS, e.value
    ro.close()
    assert {"hello"} <= set(root.listdir("/ro")) and "new" not in root.listdir("/ro")

    # An allow-list without this client: the mount is refused (MNT3ERR_ACCES).
    res = nfs_ls(url(port, "/deny"), check=False)
    assert res.returncode != 0
    with pytest.raises(OSError, match="MNT3ERR_ACCES"):
        mount(port, "/deny")

    # secure (the default): root's libnfs binds a reserved port and is served; nobody's
    # comes from a port >= 1024 and is refused at MOUNT (MNT3ERR_ACCES).
    nfs_cp(Path(__file__), url(port, "/sec/copied"))
    assert [e.name for e in nfs_ls(url(port, "/sec"))] == ["copied"]
    res = subprocess.run([*NOBODY, "nfs-ls", url(port, "/sec")], capture_output=True,
                         timeout=60)
    assert res.returncode != 0, res
    # ...while an insecure export serves the same unprivileged client.
    res = subprocess.run([*NOBODY, "nfs-ls", url(port, "/ro")], capture_output=True,
                         timeout=60)
    assert res.returncode == 0 and b"hello" in res.stdout, res

    # Each refusal is logged (naming the client, the export and why) and counted.
    log = srv.log_text()
    assert refused_lines(log, "/ro", "read_only"), log[-3000:]
    assert refused_lines(log, "/deny", "address"), log[-3000:]
    assert refused_lines(log, "/sec", "insecure_port"), log[-3000:]
    m = srv.metrics
    assert metric(m, "objcache_export_refusals_total", export="/ro", reason="read_only") == 4
    assert metric(m, "objcache_export_refusals_total", export="/deny", reason="address") == 2
    assert metric(m, "objcache_export_refusals_total", export="/sec",
                  reason="insecure_port") >= 1
    assert metric(m, "objcache_export_refusals_total", export="/", reason="address") == 0
    assert metric(m, "objcache_nfs_op_errors_total", error="MNT3ERR_ACCES") >= 3
    assert metric(m, "objcache_nfs_op_errors_total", error="NFS3ERR_ROFS") == 4


async def _rpc_from(port: int, src_port: int) -> RpcClient:
    """Our RPC client on a connection from `src_port` (0: any, >= 1024)."""
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", src_port))
    await sock.connect(("127.0.0.1", port))
    return RpcClient(trio.SocketStream(sock))


async def _reserved_client(port: int) -> RpcClient:
    for src in range(700, 1000):
        try:
            return await _rpc_from(port, src)
        except OSError:
            continue
    raise AssertionError("no free reserved port")


async def test_calls_from_an_unreserved_port_on_a_secure_export_are_perm(node) -> None:
    """Linux nfsd's answer (nfsd_setuser_and_check_port): a handle of a secure export used
    from a port >= 1024 (the client's port changed, say behind NAT) is NFS3ERR_PERM; MOUNT
    from such a port is MNT3ERR_ACCES. Our client: exact codes from a chosen source port."""
    srv, _root = node
    cred = authsys(0, 0)
    async with await _reserved_client(srv.nfs_port) as c:
        _hdr, body = await c.call(MOUNT_PROG, 3, 1, xdr_string(b"/sec"), cred)
        assert body.unpack_uint() == 0  # MNT3_OK
        fh = body.unpack_opaque(64)
        _hdr, body = await c.call(NFS_PROG, 3, 1, xdr_string(fh), cred)  # GETATTR
        assert body.unpack_uint() == 0
    async with await _rpc_from(srv.nfs_port, 0) as c:
        _hdr, body = await c.call(MOUNT_PROG, 3, 1, xdr_string(b"/sec"), cred)
        assert body.unpack_uint() == 13  # MNT3ERR_ACCES
        for proc in (1, 4):  # GETATTR, ACCESS (the latter with its access bits)
            args = xdr_string(fh) + (u32(0x3F) if proc == 4 else b"")
            _hdr, body = await c.call(NFS_PROG, 3, proc, args, cred)
            assert body.unpack_uint() == 1  # NFS3ERR_PERM
    assert metric(srv.metrics, "objcache_export_refusals_total", export="/sec",
                  reason="insecure_port") == 3
    assert metric(srv.metrics, "objcache_nfs_op_errors_total", error="NFS3ERR_PERM") == 2


async def test_calls_with_credentials_we_do_not_take_are_auth_error(node) -> None:
    """A flavor the server does not take (RPCSEC_GSS) or a malformed AUTH_SYS body: MSG_DENIED
    AUTH_ERROR AUTH_BADCRED (RFC 5531 §9, as Linux's svc_authenticate), logged and counted."""
    srv, _root = node
    async with await _rpc_from(srv.nfs_port, 0) as c:
        for cred in (OpaqueAuth(6, b"\0" * 8), OpaqueAuth(AUTH_SYS, b"\xff" * 12)):
            hdr, _body = await c.call(NFS_PROG, 3, 0, b"", cred)
            assert (hdr.reply_stat, hdr.auth_stat) == (MSG_DENIED, AuthStat.AUTH_BADCRED)
    assert metric(srv.metrics, "objcache_rpc_rejected_total", reason="auth_error") == 2
    lines = [ln for ln in srv.log_text().splitlines() if "AUTH_ERROR AUTH_BADCRED" in ln]
    assert len(lines) == 2 and "127.0.0.1" in lines[0], lines  # the 1st and the 2nd


def test_a_flood_of_refusals_is_counted_but_not_logged_each_time(node) -> None:
    srv, _root = node
    for _ in range(20):
        with pytest.raises(OSError, match="MNT3ERR_ACCES"):
            mount(srv.nfs_port, "/deny")
    assert metric(srv.metrics, "objcache_export_refusals_total", export="/deny",
                  reason="address") == 20
    lines = refused_lines(srv.log_text(), "/deny", "address")
    assert len(lines) == 5, lines  # the 1st, 2nd, 4th, 8th and 16th
    assert "16 refusals" in lines[-1]


def test_defaults_are_secure_and_squash_root(tmp_path: Path) -> None:
    """No [[exports]]: "/" to loopback clients, root squashed, reserved ports only."""
    srv = ObjcacheServer(tmp_path / "data", log_path=tmp_path / "node.log", exports=()).start()
    try:
        port = srv.nfs_port
        assert nfs_ls(url(port, "/")) == []  # root's libnfs: a reserved port
        with pytest.raises(OSError) as e:  # root acts as nobody in a directory of root's
            mount(port, "/", uid=0, gid=0).write_file("/f", b"x")
        assert e.value.errno == errno.EACCES, e.value
        res = subprocess.run([*NOBODY, "nfs-ls", url(port, "/")], capture_output=True,
                             timeout=60)
        assert res.returncode != 0, res
        assert refused_lines(srv.log_text(), "/", "insecure_port")
    finally:
        srv.stop()


# ---- a three-node cluster: exports on every node, the RPC plane, the admin API ----------------


async def _plane_call(addr: str, node_id: int, secret: bytes, msg: object,
                      timeout_s: float = 20.0) -> object:
    """One call from a plane of our own (node id `node_id`, proving `secret`) to node 1."""
    plane = RpcPlane(RpcConfig(node_id=node_id, cluster_secret=secret))
    plane.add_peer(1, f"ws://{addr}/")
    out: list[object] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(plane.run)
        try:
            out.append(await plane.call(1, msg, timeout_s))
        except Exception as e:  # raised bare below, not in the nursery's group
            out.append(e)
        nursery.cancel_scope.cancel()
    if isinstance(out[0], Exception):
        raise out[0]
    return out[0]


async def _claim_node_id(addr: str, node_id: int, secret: bytes) -> None:
    """A handshake as node `node_id` (with the right secret): refused if it is the acceptor's
    own id (the node closes the connection)."""
    async with open_websocket_url(f"ws://{addr}/") as ws:
        with pytest.raises(ConnectionClosed):
            await handshake.dial(ws, secret=secret, my_id=node_id, incarnation=1,
                                 expected_id=None)


async def _garbage_handshake(addr: str) -> None:
    """Bytes that are no Hello: the node closes the connection."""
    async with open_websocket_url(f"ws://{addr}/") as ws:
        await ws.send_message(b"\xff not a handshake")
        with pytest.raises(ConnectionClosed):
            await ws.get_message()


async def _admin_sends_raft(addr: str, token: bytes) -> None:
    """An admin client (with the token) sends node 1 three one-way Raft messages, then makes
    a call, which is answered after them (one connection, in order)."""
    from raft.messages import PreVote
    from server.rpc.raft_wire import register_raft_types

    register_raft_types()
    plane = RpcPlane(RpcConfig(node_id=ADMIN_ID_BASE + 6, cluster_secret=token))
    plane.add_peer(1, f"ws://{addr}/")
    async with trio.open_nursery() as nursery:
        await nursery.start(plane.run)
        assert (await plane.call(1, p.GetNodeList(), 20.0)).nodelist
        for term in (1, 2, 3):
            assert plane.send(1, PreVote(ADMIN_ID_BASE + 6, 1, term, 0, 0))
        assert (await plane.call(1, p.GetNodeList(), 20.0)).nodelist
        nursery.cancel_scope.cancel()


def _admin(c: LocalCluster, *cred: str, node: int = 1) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "admin", "status", "--node",
         f"{node}={c.nodes[node]['rpc']}", *cred], capture_output=True, text=True,
        timeout=120, cwd=REPO, stdin=subprocess.DEVNULL)


def _node_log(c: LocalCluster, node: int) -> str:
    return (c.root / f"n{node}" / "node.log").read_text(errors="replace")


@pytest.fixture
def cluster(tmp_path: Path):
    exports = tmp_path / "exports.toml"
    exports.write_text(
        f'[[exports]]\npath = "/"\nclients = {json.dumps(LOOPBACK)}\ninsecure = true\n'
        'root_squash = false\n\n'
        f'[[exports]]\npath = "/sq"\nclients = {json.dumps(LOOPBACK)}\ninsecure = true\n'
        'anon_uid = 4242\nanon_gid = 4343\n\n'
        '[[exports]]\npath = "/deny"\nclients = ["10.9.9.0/24"]\ninsecure = true\n')
    c = LocalCluster(tmp_path / "c", nodes=3, up_args=("--exports", str(exports)))
    c.up()
    try:
        yield c
    finally:
        c.down(check=False)


def test_three_nodes_enforce_the_exports_and_refuse_strangers(cluster: LocalCluster) -> None:
    c = cluster
    root = LibNfs(url(c.nfs_port(1), "/"))
    for d in ("/sq", "/deny"):
        root.mkdir(d, 0o777)
        root.chmod(d, 0o777)
    # Root squash on every node: a file root makes through node 2 belongs to anon (node 3).
    sq = LibNfs(url(c.nfs_port(2), "/sq", uid=0, gid=0))
    sq.write_file("/f", b"x")
    sq.close()
    other = LibNfs(url(c.nfs_port(3), "/"))
    assert (other.stat("/sq/f").uid, other.stat("/sq/f").gid) == (4242, 4343)
    other.close()
    root.close()
    # Every node refuses the allow-list's stranger, logs it and counts it.
    for n in (1, 2, 3):
        with pytest.raises(OSError, match="MNT3ERR_ACCES"):
            LibNfs(url(c.nfs_port(n), "/deny"))
        assert metric(c.nodes[n]["metrics"], "objcache_export_refusals_total",
                      export="/deny", reason="address") == 1
        assert refused_lines(_node_log(c, n), "/deny", "address")

    # The node RPC plane: a peer with the wrong secret is refused (and finds out at once).
    rpc1, metrics1 = c.nodes[1]["rpc"], c.nodes[1]["metrics"]
    secret = (c.root / "secret").read_bytes().strip()
    token = (c.root / "admin-token").read_bytes().strip()
    t0 = time.monotonic()
    with pytest.raises(AuthRefused):
        trio.run(_plane_call, rpc1, 99, b"not-the-cluster-secret-0123456789", p.GetNodeList())
    assert time.monotonic() - t0 < 15  # not the call's 20 s deadline: it learns at once
    # The admin token does not make a node: a node id proves the cluster secret.
    with pytest.raises(AuthRefused):
        trio.run(_plane_call, rpc1, 98, token, p.GetNodeList())
    assert metric(metrics1, "objcache_rpc_auth_refusals_total", peer="node",
                  reason="bad_proof") == 2
    assert re.search(r"refused node 127\.0\.0\.1:\d+ \(bad_proof\): peer claiming node 99",
                     _node_log(c, 1))
    # A node id it may not claim (node 1's own), even with the right secret.
    trio.run(_claim_node_id, rpc1, 1, secret)
    trio.run(_garbage_handshake, rpc1)
    assert metric(metrics1, "objcache_rpc_auth_refusals_total", peer="node",
                  reason="bad_identity") == 1
    assert metric(metrics1, "objcache_rpc_auth_refusals_total", peer="node",
                  reason="bad_handshake") == 1
    assert re.search(r"refused node 127\.0\.0\.1:\d+ \(bad_handshake\)", _node_log(c, 1))

    # The admin API: no token (the cluster secret instead) and a wrong token are refused.
    wrong = c.root / "wrong-token"
    wrong.write_text("w" * 64)
    for cred in (("--cluster-secret-file", str(c.root / "secret")),
                 ("--admin-token-file", str(wrong))):
        res = _admin(c, *cred)
        assert res.returncode == 2 and "refused our proof" in res.stderr, (cred, res.stderr)
    assert metric(metrics1, "objcache_rpc_auth_refusals_total", peer="admin",
                  reason="bad_proof") == 2
    assert re.search(r"refused admin 127\.0\.0\.1:\d+ \(bad_proof\)", _node_log(c, 1))
    # With the token: served, but only what admins may send.
    assert _admin(c, "--admin-token-file", str(c.root / "admin-token")).returncode == 0
    assert trio.run(_plane_call, rpc1, ADMIN_ID_BASE + 5, token, p.GetNodeList()).nodelist
    with pytest.raises(RemoteError, match="forbidden"):
        trio.run(_plane_call, rpc1, ADMIN_ID_BASE + 5, token, p.GetInodes(1, (1,)))
    # ...also one-way (a Raft message): refused, counted, logged once, no stack trace.
    trio.run(_admin_sends_raft, rpc1, token)
    assert metric(metrics1, "objcache_rpc_auth_refusals_total", peer="admin",
                  reason="forbidden") == 1 + 3
    assert re.search(r"refused admin client \d+ \(forbidden\): GetInodes",
                     _node_log(c, 1))
    log1 = _node_log(c, 1)
    assert "Traceback" not in log1 and "failed" not in log1.split("PreVote")[-1], log1[-3000:]
    # The other nodes saw none of it.
    for n in (2, 3):
        assert metric(c.nodes[n]["metrics"], "objcache_rpc_auth_refusals_total") == 0
    # cluster up's children get their secrets in files: none on a command line.
    for n in (1, 2, 3):
        argv = Path(f"/proc/{c.nodes[n]['pid']}/cmdline").read_bytes()
        assert secret not in argv and token not in argv


# ---- secrets: never in logs, status, process listings or configuration errors ----------------

S3_KEY_ID = "AKIAOBJCACHETEST7Q2X"
S3_SECRET = "wJalrXUtnFEMI-objcache-s3-secret-K7MDENG"


@pytest.fixture
def s3_with_keys(tmp_path: Path):
    """SeaweedFS with a second identity, whose distinctive keys the node uses (the session's
    S3 server has only one-letter keys, which no grep could tell apart)."""
    from s3server import SeaweedServer

    class Server(SeaweedServer):
        def _argv(self) -> list[str]:
            argv = super()._argv()
            ids = json.loads((self.dir / "ids.json").read_text())
            ids["identities"].append({
                "name": "node", "credentials": [{"accessKey": S3_KEY_ID,
                                                 "secretKey": S3_SECRET}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"]})
            (self.dir / "ids.json").write_text(json.dumps(ids))
            return argv

    server = Server(tmp_path / "s3").start()
    try:
        s3 = server.client()
        s3.create_bucket(Bucket="secrets")
        yield server, s3
    finally:
        server.stop(kill=True)


def test_secrets_appear_in_no_log_status_or_process_listing(tmp_path: Path,
                                                            s3_with_keys) -> None:
    """A one-node cluster over S3 with the keys in its config file, the cluster secret and an
    admin token in files, logging at debug: after writes, a write-back, refused strangers and
    `admin status` (text and --json), no secret is in the log, the outputs or the node's
    command line; a bad configuration's error does not show them either."""
    from serverproc import READY_LINE, wait_for

    server, s3 = s3_with_keys
    cluster_secret, admin_token = "cs-" + "3f9a" * 10, "at-" + "b7c1" * 10
    (tmp_path / "secret").write_text(cluster_secret + "\n")
    (tmp_path / "token").write_text(admin_token + "\n")
    nfs, rpc, met = free_port(), free_port(), free_port()
    config = tmp_path / "node.toml"
    store = (f'[store]\nurl = "s3://secrets/p"\ns3_endpoint = "{server.endpoint}"\n'
             f'region = "us-east-1"\naccess_key_id = "{S3_KEY_ID}"\n'
             f'secret_access_key = "{S3_SECRET}"\n')
    config.write_text(
        f'[node]\ndata_dir = "{tmp_path / "data"}"\nlog_level = "debug"\n'
        f'[nfs]\nlisten = "127.0.0.1:{nfs}"\nportmap_listen = "off"\n'
        f'[metrics]\nlisten = "127.0.0.1:{met}"\n'
        f'[cluster]\nnode_id = 1\nlisten = "127.0.0.1:{rpc}"\npeers = ["1=127.0.0.1:{rpc}"]\n'
        f'cluster_secret_file = "{tmp_path / "secret"}"\n'
        f'admin_token_file = "{tmp_path / "token"}"\n'
        f'[cache]\nflush_delay_s = 0.2\n{store}'
        f'[[exports]]\npath = "/"\nclients = {json.dumps(LOOPBACK)}\ninsecure = true\n'
        'root_squash = false\n')
    log_path = tmp_path / "node.log"
    secrets = (S3_KEY_ID, S3_SECRET, cluster_secret, admin_token)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--config",
                                 str(config)], stdout=log, stderr=subprocess.STDOUT,
                                cwd=REPO, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is None and READY_LINE in log_path.read_text(),
                 timeout_s=60, what="the node to serve")
        nfs_cp(Path(__file__), url(nfs, "//copied.py"))
        wait_for(lambda: s3.list_objects_v2(Bucket="secrets").get("KeyCount", 0) >= 1,
                 timeout_s=30, what="the write-back")  # the keys were used
        node = ("--node", f"1=127.0.0.1:{rpc}")
        outputs = []
        for args in (("--admin-token-file", str(tmp_path / "token")),
                     ("--admin-token-file", str(tmp_path / "token"), "--json"),
                     ("--cluster-secret-file", str(tmp_path / "secret"))):  # refused
            res = subprocess.run([sys.executable, "-m", "server.cli", "admin", "status",
                                  *node, *args], capture_output=True, text=True, timeout=120,
                                 cwd=REPO, stdin=subprocess.DEVNULL)
            outputs.append(res.stdout + res.stderr)
        assert "s3://secrets/p" in outputs[0] and json.loads(outputs[1].strip())["ok"]
        assert "refused" in outputs[2]
        with pytest.raises(AuthRefused):
            trio.run(_plane_call, f"127.0.0.1:{rpc}", 5, b"x" * 32, p.GetNodeList())
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().decode(errors="replace")
        assert S3_SECRET not in environ  # the keys came from the file, not the environment
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    log = log_path.read_text(errors="replace")
    assert "refused admin" in log and "refused node" in log  # the refusals were logged
    assert " DEBUG " in log  # the node logged at debug
    for text, what in ((log, "the node's log"), (cmdline, "its command line"),
                       *((out, f"admin status {i}") for i, out in enumerate(outputs))):
        for secret in secrets:
            assert secret not in text, f"{what} shows a secret: ...{_around(text, secret)}..."

    # Configuration errors: a store key of the wrong type, a credential in the endpoint URL.
    for bad in (store.replace(f'"{S3_SECRET}"', "12345"),
                store.replace("http://", f"http://{S3_KEY_ID}:{S3_SECRET}@")):
        config.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n{bad}')
        res = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--config",
                              str(config)], capture_output=True, text=True, timeout=60,
                             cwd=REPO, stdin=subprocess.DEVNULL)
        assert res.returncode == 2 and "configuration error: store." in res.stderr, res.stderr
        for secret in (*secrets, "12345"):
            assert secret not in res.stdout + res.stderr, res.stderr


def _around(text: str, needle: str) -> str:
    i = text.find(needle)
    return text[max(0, i - 120): i + len(needle) + 40]


def test_admin_with_a_token_file_too_short_says_so(tmp_path: Path) -> None:
    """A file that cannot be a token (under 16 bytes) is a usage error, not a traceback, and
    what it holds is not shown."""
    short = tmp_path / "token"
    short.write_text("tok-9f8e7d\n")
    res = subprocess.run([sys.executable, "-m", "server.cli", "admin", "status", "--node",
                          f"1=127.0.0.1:{free_port()}", "--admin-token-file", str(short)],
                         capture_output=True, text=True, timeout=60, cwd=REPO,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and "16 bytes" in res.stderr, res.stderr
    assert "tok-9f8e7d" not in res.stdout + res.stderr
