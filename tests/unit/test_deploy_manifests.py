"""configs/k8s and configs/systemd (README: Deployment).

- Every Kubernetes object is checked against the API's schemas (kubernetes-validate, strict:
  an unknown or misspelt field is an error), for the oldest Kubernetes the README names and the
  newest the validator knows; a broken copy must fail the same check.
- The objects' references to each other (labels, Services, ports, ConfigMap and Secret keys,
  mount paths) and to objcache's configuration, which must load with `server.config`.
- The pods' scripts run under /bin/sh with stand-ins for objcache, getent and python3, and what
  they start is parsed with objcache's own argument parser.
- The systemd unit through `systemd-analyze verify`, with any warning counted as a failure.
"""

from __future__ import annotations

import argparse
import copy
import os
import py_compile
import shutil
import subprocess
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from server import cli
from server import config as config_mod
from server.cluster import admin

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "configs" / "k8s"
SYSTEMD = REPO / "configs" / "systemd"
OLDEST_K8S = "1.27.0"  # README: Deployment
K8S_VERSIONS = (OLDEST_K8S, kubernetes_validate.latest_version())
RPC_IPS = {"objcache-rpc-0": "10.96.0.10", "objcache-rpc-2": "10.96.0.12"}


def load_manifests() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


MANIFESTS = load_manifests()


def objects(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in MANIFESTS if d["kind"] == kind}


STS = objects("StatefulSet")["objcache"]
POD = STS["spec"]["template"]["spec"]
CONTAINER = POD["containers"][0]
PORTS = {p["name"]: p for p in CONTAINER["ports"]}
MOUNTS = {m["name"]: m["mountPath"] for m in CONTAINER["volumeMounts"]}
VOLUMES = {v["name"]: v for v in POD["volumes"]}
SCRIPTS = objects("ConfigMap")["objcache-scripts"]["data"]
TOML = objects("ConfigMap")["objcache-config"]["data"]["objcache.toml"]


# -- schemas --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_matches_the_api_schema(version):
    kinds = sorted({d["kind"] for d in MANIFESTS})
    assert kinds == ["ConfigMap", "Role", "RoleBinding", "Secret", "Service", "ServiceAccount",
                     "StatefulSet"]
    for doc in MANIFESTS:
        kubernetes_validate.validate(doc, version, strict=True)


def _typo(sts: dict) -> None:
    c = sts["spec"]["template"]["spec"]["containers"][0]
    c["livenesProbe"] = c.pop("livenessProbe")


def _wrong_type(sts: dict) -> None:
    sts["spec"]["replicas"] = "three"


def _missing_required(sts: dict) -> None:
    del sts["spec"]["template"]["spec"]["containers"][0]["name"]


def _bad_port(sts: dict) -> None:
    sts["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "nfs"


@pytest.mark.parametrize("breakage", [_typo, _wrong_type, _missing_required, _bad_port])
def test_a_broken_manifest_fails_the_schema_check(breakage):
    broken = copy.deepcopy(STS)
    breakage(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, OLDEST_K8S, strict=True)


# -- references between the objects --------------------------------------------------------


def test_the_statefulset_owns_its_pods_and_names_a_headless_service():
    labels = STS["spec"]["template"]["metadata"]["labels"]
    assert STS["spec"]["selector"]["matchLabels"].items() <= labels.items()
    peers = objects("Service")[STS["spec"]["serviceName"]]["spec"]
    assert peers["clusterIP"] == "None" and peers["publishNotReadyAddresses"] is True
    # Nodes join and leave one at a time, and the last pod out drains (prestop.sh).
    assert STS["spec"]["podManagementPolicy"] == "OrderedReady"


def _selects_pods(service: dict) -> bool:
    labels = STS["spec"]["template"]["metadata"]["labels"]
    return service["spec"]["selector"].items() <= labels.items()


def _targets_container_ports(service: dict) -> None:
    for port in service["spec"]["ports"]:
        target = PORTS[port["targetPort"]]
        assert target.get("protocol", "TCP") == port.get("protocol", "TCP"), port


def test_services_reach_the_pods_ports():
    services = objects("Service")
    for name in ("objcache-peers", "objcache-nfs"):
        assert _selects_pods(services[name]), name
        _targets_container_ports(services[name])
    assert {p["port"] for p in services["objcache-nfs"]["spec"]["ports"]} == {2049}


def test_every_ordinal_has_its_rpc_service():
    services = objects("Service")
    for ordinal in range(STS["spec"]["replicas"]):
        spec = services[f"objcache-rpc-{ordinal}"]["spec"]
        assert spec["selector"] == {"statefulset.kubernetes.io/pod-name": f"objcache-{ordinal}"}
        assert spec["publishNotReadyAddresses"] is True  # peers reach a node before it is ready
        assert spec.get("clusterIP") != "None"  # a stable ClusterIP is the point
        assert [p["port"] for p in spec["ports"]] == [PORTS["rpc"]["containerPort"]]
        _targets_container_ports(services[f"objcache-rpc-{ordinal}"])


def test_volumes_and_secrets_exist_with_their_keys():
    config_maps, secret = objects("ConfigMap"), objects("Secret")["objcache"]
    claims = {t["metadata"]["name"] for t in STS["spec"]["volumeClaimTemplates"]}
    assert set(MOUNTS) <= set(VOLUMES) | claims
    for volume in VOLUMES.values():
        if "configMap" in volume:
            assert volume["configMap"]["name"] in config_maps
        if "secret" in volume:
            assert volume["secret"]["secretName"] == "objcache"
            assert {i["key"] for i in volume["secret"]["items"]} <= set(secret["stringData"])
    for env in CONTAINER["env"]:
        ref = env["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "objcache" and ref["key"] in secret["stringData"]
    assert {e["name"] for e in CONTAINER["env"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_the_prestop_role_may_read_the_statefulset():
    assert POD["serviceAccountName"] in objects("ServiceAccount")
    binding = objects("RoleBinding")["objcache-prestop"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": POD["serviceAccountName"]}]
    rules = objects("Role")[binding["roleRef"]["name"]]["rules"]
    assert any("statefulsets" in r["resources"] and "get" in r["verbs"]
               and r["resourceNames"] == [STS["metadata"]["name"]] for r in rules)


def test_probes_and_scrape_annotations_use_the_metrics_endpoint():
    paths = {name: CONTAINER[name]["httpGet"]["path"]
             for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert paths == {"startupProbe": "/healthz", "livenessProbe": "/healthz",
                     "readinessProbe": "/readyz"}
    assert {CONTAINER[name]["httpGet"]["port"] for name in paths} == {"metrics"}
    notes = STS["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/path"] == "/metrics"
    assert int(notes["prometheus.io/port"]) == PORTS["metrics"]["containerPort"]


def test_the_config_map_fits_the_pod():
    raw = tomllib.loads(TOML)
    ports = {"nfs": raw["nfs"]["listen"], "metrics": raw["metrics"]["listen"],
             "rpc": raw["cluster"]["listen"]}
    for name, listen in ports.items():
        assert listen == f"0.0.0.0:{PORTS[name]['containerPort']}", name
    assert raw["node"]["data_dir"] == f"{MOUNTS['data']}/data"  # start.sh wipes it after a leave
    for key in ("cluster_secret_file", "admin_token_file"):
        path = Path(raw["cluster"][key])
        items = {i["path"] for i in VOLUMES["secret"]["secret"]["items"]}
        assert str(path.parent) == MOUNTS["secret"] and path.name in items, key
    assert "store" in raw and raw["store"]["url"].startswith("s3://")
    for script in ("start.sh", "prestop.sh"):
        assert f"{MOUNTS['scripts']}/{script}" in " ".join(_commands()), script


def _commands() -> list[str]:
    return [*CONTAINER["command"], *CONTAINER["lifecycle"]["preStop"]["exec"]["command"]]


# -- the pods' scripts ----------------------------------------------------------------------


STUBS = {
    # getent hosts NAME: the addresses in $FAKE_HOSTS ("NAME=IP ...").
    "getent": 'for pair in $FAKE_HOSTS; do\n'
              '  if [ "${pair%%=*}" = "$2" ]; then echo "${pair#*=}  $2"; exit 0; fi\n'
              'done\nexit 2\n',
    # objcache ARGS: one argument a line in $ARGV_FILE; exits $OBJCACHE_EXIT.
    "objcache": 'printf "%s\\n" "$@" > "$ARGV_FILE"\nexit "${OBJCACHE_EXIT:-0}"\n',
    # python3 replicas.py NAME: the StatefulSet's replicas, or exit 1 (the API unreachable).
    "python3": '[ -n "$FAKE_REPLICAS" ] || exit 1\necho "$FAKE_REPLICAS"\n',
    "sleep": "exit 0\n",
}


@pytest.fixture
def pod(tmp_path):
    """A pod's file system and PATH for running the scripts: returns a runner."""
    bin_dir, scripts = tmp_path / "bin", tmp_path / "scripts"
    for d in (bin_dir, scripts, tmp_path / "state" / "data"):
        d.mkdir(parents=True)
    for name, body in STUBS.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    for name, body in SCRIPTS.items():
        (scripts / name).write_text(body)
    (tmp_path / "objcache.toml").write_text(TOML)
    argv_file = tmp_path / "argv"

    def run(script: str, hostname: str, **env: str) -> tuple[int, list[str] | None, str]:
        argv_file.unlink(missing_ok=True)
        environ = {
            "PATH": f"{bin_dir}:/usr/bin:/bin", "HOSTNAME": hostname,
            "ARGV_FILE": str(argv_file), "OBJCACHE_CONFIG": str(tmp_path / "objcache.toml"),
            "OBJCACHE_STATE_DIR": str(tmp_path / "state"),
            "OBJCACHE_ADMIN_TOKEN_FILE": "/etc/objcache-secret/admin-token",
            "OBJCACHE_PRESTOP_LOG": str(tmp_path / "prestop.log"),
            "FAKE_HOSTS": " ".join(f"{k}={v}" for k, v in RPC_IPS.items()),
            "FAKE_REPLICAS": "", **env,
        }
        done = subprocess.run(["/bin/sh", str(scripts / script)], env=environ,
                              capture_output=True, text=True, timeout=30)
        argv = argv_file.read_text().splitlines() if argv_file.exists() else None
        log = (tmp_path / "prestop.log").read_text() if script == "prestop.sh" else done.stderr
        return done.returncode, argv, log

    run.state = tmp_path / "state"  # type: ignore[attr-defined]
    return run


def _serve(argv: list[str]) -> config_mod.Config:
    parser = argparse.ArgumentParser()
    cli._serve_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return config_mod.load(args.config, cli._overrides(args))


def test_start_makes_pod_0_node_1_the_founder_at_its_service_address(pod):
    code, argv, _ = pod("start.sh", "objcache-0")
    assert code == 0 and argv is not None
    cfg = _serve(argv)  # the real parser and the configuration's own checks
    assert cfg.cluster.node_id == 1
    assert cfg.cluster_peers() == {1: config_mod.Listen(RPC_IPS["objcache-rpc-0"], 7000)}
    assert cfg.cluster_rpc_address() == config_mod.Listen(RPC_IPS["objcache-rpc-0"], 7000)
    assert cfg.cluster_listen() == config_mod.Listen("0.0.0.0", 7000)
    assert cfg.store.url == "s3://objcache-bucket/objcache" and cfg.metrics_listen()


def test_start_makes_pod_2_node_3_joining_through_node_1(pod):
    code, argv, _ = pod("start.sh", "objcache-2")
    assert code == 0 and argv is not None
    assert argv[argv.index("--node-id") + 1] == "3"
    assert argv[argv.index("--join") + 1] == f"{RPC_IPS['objcache-rpc-0']}:7000"
    # Its own entry: the address it gives the cluster (it listens on 0.0.0.0).
    assert argv[argv.index("--peers") + 1] == f"3={RPC_IPS['objcache-rpc-2']}:7000"
    parser = argparse.ArgumentParser()
    cli._serve_parser(parser.add_subparsers(dest="command"))
    parser.parse_args(argv)  # every flag is one `objcache serve` has


def test_start_refuses_a_pod_without_its_rpc_service(pod):
    code, argv, log = pod("start.sh", "objcache-1")
    assert code != 0 and argv is None
    assert "cannot resolve objcache-rpc-1" in log


def test_start_refuses_a_hostname_without_an_ordinal(pod):
    code, argv, log = pod("start.sh", "objcache")
    assert code == 2 and argv is None and "not a StatefulSet pod name" in log


def test_start_after_a_leave_starts_with_empty_data(pod):
    (pod.state / "data" / "CURRENT").write_text("old")
    (pod.state / "left").touch()
    code, argv, _ = pod("start.sh", "objcache-2")
    assert code == 0 and argv is not None
    assert not (pod.state / "data").exists() and not (pod.state / "left").exists()


def test_start_keeps_the_data_of_a_restarted_node(pod):
    (pod.state / "data" / "CURRENT").write_text("kept")
    assert pod("start.sh", "objcache-2")[0] == 0
    assert (pod.state / "data" / "CURRENT").read_text() == "kept"


def _admin_commands() -> set[str]:
    parser = argparse.ArgumentParser()
    admin.add_parser(parser.add_subparsers(dest="command"))
    (sub,) = [a for a in parser._subparsers._group_actions  # type: ignore[union-attr]
              if isinstance(a, argparse._SubParsersAction)]
    admin_parser = sub.choices["admin"]
    (cmds,) = [a for a in admin_parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(cmds.choices)


def _check_admin_argv(argv: list[str]) -> None:
    """The hook's command parses with `objcache admin`'s parser once that has the command."""
    assert argv[0] == "admin"
    if argv[1] in _admin_commands():
        parser = argparse.ArgumentParser()
        admin.add_parser(parser.add_subparsers(dest="command"))
        parser.parse_args(argv)


@pytest.mark.parametrize("hostname, replicas", [("objcache-2", "3"), ("objcache-0", "1"),
                                                ("objcache-1", "5")])
def test_prestop_of_a_restart_does_not_leave(pod, hostname, replicas):
    code, argv, _ = pod("prestop.sh", hostname, FAKE_REPLICAS=replicas)
    assert (code, argv) == (0, None)
    assert not (pod.state / "left").exists()


def test_prestop_of_a_scale_down_leaves_through_node_1(pod):
    code, argv, log = pod("prestop.sh", "objcache-2", FAKE_REPLICAS="2")
    assert code == 0
    assert argv == ["admin", "leave", "3", "--node", f"1={RPC_IPS['objcache-rpc-0']}:7000",
                    "--admin-token-file", "/etc/objcache-secret/admin-token"]
    _check_admin_argv(argv)
    assert (pod.state / "left").exists()  # the next node 3 starts afresh (start.sh)
    assert "node 3 leaves the cluster" in log


def test_prestop_whose_leave_failed_keeps_the_data(pod):
    code, argv, _ = pod("prestop.sh", "objcache-2", FAKE_REPLICAS="0", OBJCACHE_EXIT="1")
    assert code == 1 and argv is not None and argv[:3] == ["admin", "leave", "3"]
    assert not (pod.state / "left").exists()


def test_prestop_of_the_last_pod_drains_the_cluster(pod):
    code, argv, log = pod("prestop.sh", "objcache-0", FAKE_REPLICAS="0")
    assert code == 0
    assert argv == ["admin", "drain", "--node", "1=127.0.0.1:7000",
                    "--admin-token-file", "/etc/objcache-secret/admin-token"]
    _check_admin_argv(argv)
    assert "draining" in log and not (pod.state / "left").exists()


def test_prestop_without_the_api_only_stops(pod):
    code, argv, log = pod("prestop.sh", "objcache-2", FAKE_REPLICAS="")
    assert (code, argv) == (0, None)
    assert "stops without leaving" in log


def test_the_prestop_token_is_the_mounted_admin_token():
    raw = tomllib.loads(TOML)
    assert "OBJCACHE_ADMIN_TOKEN_FILE:-" + raw["cluster"]["admin_token_file"] in SCRIPTS[
        "prestop.sh"]
    assert "OBJCACHE_CONFIG:-" + f"{MOUNTS['config']}/objcache.toml" in SCRIPTS["start.sh"]
    assert "OBJCACHE_STATE_DIR:-" + MOUNTS["data"] in SCRIPTS["start.sh"]


def test_replicas_py_compiles(tmp_path):
    (tmp_path / "replicas.py").write_text(SCRIPTS["replicas.py"])
    py_compile.compile(str(tmp_path / "replicas.py"), doraise=True)


# -- systemd ------------------------------------------------------------------------------


UNIT = SYSTEMD / "objcache.service"
EXEC = "/opt/objcache/bin/objcache"


def _verify(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify on `text`, with ExecStart's program (installed at EXEC on a
    real host) standing in a temporary directory: verify checks that it is executable."""
    stub = tmp_path / "objcache"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    unit = tmp_path / "objcache.service"
    unit.write_text(text.replace(EXEC, str(stub)))
    return subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})


needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed")


@needs_systemd
def test_systemd_unit_verifies(tmp_path):
    text = UNIT.read_text()
    assert f"ExecStart={EXEC} serve --config /etc/objcache/objcache.toml" in text
    done = _verify(tmp_path, text)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


@needs_systemd
@pytest.mark.parametrize("breakage", [("Restart=on-failure", "Restart=sometimes"),
                                      ("KillSignal=SIGTERM", "KillSignal=SIGTREM"),
                                      ("Type=exec", "Tpye=exec")])
def test_a_broken_unit_fails_verify(tmp_path, breakage):
    old, new = breakage
    text = UNIT.read_text()
    assert old in text
    done = _verify(tmp_path, text.replace(old, new))
    assert done.returncode != 0 or done.stdout + done.stderr != ""


def test_systemd_config_fits_the_unit():
    cfg = config_mod.load(SYSTEMD / "objcache.toml")
    unit = UNIT.read_text()
    assert "StateDirectory=objcache" in unit and cfg.node.data_dir == "/var/lib/objcache"
    for key, name in (("cluster_secret_file", "cluster-secret"),
                      ("admin_token_file", "admin-token")):
        assert getattr(cfg.cluster, key) == f"/run/credentials/objcache.service/{name}"
        assert f"LoadCredential={name}:/etc/objcache/{name}" in unit
    assert cfg.cluster_rpc_address() == config_mod.Listen("192.0.2.11", 7000)
