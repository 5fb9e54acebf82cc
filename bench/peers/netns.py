"""An S3 server (SeaweedFS `weed mini`) in its own network namespace, reached over a veth pair
whose two ends are shaped with tc: the stand-in for a remote object store.

  host  10.77.0.1/24  veth HOST_IF  <->  NS_IF  10.77.0.2/24  netns NAME  (weed mini, S3)

Shaping is a token-bucket filter (tbf) on the egress of both ends, so requests and responses
are each limited to the rate. This kernel has no netem, so no delay is added: the link has the
veth's own latency (tens of microseconds). `shape(None)` removes the qdiscs (unshaped run).

Teardown (`down`) kills the server and deletes the namespace (which deletes both veth ends);
`up` first removes a namespace of the same name that an interrupted run left behind.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .common import ACCESS_KEY, REGION, SECRET_KEY, Daemon, run, tool, wait_for

NAME = "objc-bench"
HOST_IF = "objc-bh"
NS_IF = "objc-bn"
HOST_IP = "10.77.0.1"
NS_IP = "10.77.0.2"
S3_PORT = 8333
# tbf: burst must cover rate/HZ (1 Gbit/s at HZ=250 is 500 kB); latency bounds the queue.
TBF_BURST = "1mb"
TBF_LATENCY = "20ms"
IDENTITIES = {"identities": [{
    "name": "admin", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
    "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}  # fmt: skip


def _ip(*args: str) -> str:
    return run(["ip", *args], timeout_s=30)


def _netns_exists() -> bool:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return any(line.split()[0] == NAME for line in out.splitlines() if line.strip())


class Netns:
    """The namespace, the veth pair and its shaping."""

    def __init__(self) -> None:
        self.rate: str | None = None

    def up(self) -> Netns:
        if _netns_exists():
            self.down()  # left by an interrupted run of this benchmark
        _ip("netns", "add", NAME)
        _ip("link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF)
        _ip("link", "set", NS_IF, "netns", NAME)
        _ip("addr", "add", f"{HOST_IP}/24", "dev", HOST_IF)
        _ip("link", "set", HOST_IF, "up")
        for args in (("addr", "add", f"{NS_IP}/24", "dev", NS_IF), ("link", "set", NS_IF, "up"),
                     ("link", "set", "lo", "up")):
            _ip("netns", "exec", NAME, "ip", *args)
        return self

    def exec_argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", NAME, *argv]

    def shape(self, rate: str | None) -> None:
        """tbf at `rate` (e.g. "1gbit") on both ends' egress, or no qdisc when rate is None."""
        for prefix in ([], ["ip", "netns", "exec", NAME]):
            dev = NS_IF if prefix else HOST_IF
            subprocess.run([*prefix, "tc", "qdisc", "del", "dev", dev, "root"],
                           capture_output=True)
            if rate:
                run([*prefix, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                     "burst", TBF_BURST, "latency", TBF_LATENCY], timeout_s=30)
        self.rate = rate

    def describe(self) -> dict:
        return {"namespace": NAME, "host_ip": HOST_IP, "ns_ip": NS_IP, "rate": self.rate,
                "qdisc": (f"tbf rate {self.rate} burst {TBF_BURST} latency {TBF_LATENCY}, "
                          "egress of both veth ends") if self.rate else "none",
                "added_delay": "none (no netem in this kernel; no delaying proxy used)"}

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", NAME], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def down(self) -> None:
        """Delete the namespace; any process still in it must be ours (we made it): kill it."""
        if not _netns_exists():
            return
        for pid in self.pids():
            subprocess.run(["kill", "-9", str(pid)], capture_output=True)
        subprocess.run(["ip", "netns", "del", NAME], capture_output=True)
        subprocess.run(["ip", "link", "del", HOST_IF], capture_output=True)


class S3Server:
    """`weed mini` inside the namespace, serving S3 on NS_IP:S3_PORT."""

    def __init__(self, netns: Netns, work: Path) -> None:
        self.netns = netns
        self.work = work
        self.daemon: Daemon | None = None

    def start(self, timeout_s: float = 60.0) -> S3Server:
        data = self.work / "s3-data"
        if data.exists():
            shutil.rmtree(data)
        data.mkdir(parents=True)
        ids = self.work / "ids.json"
        ids.write_text(json.dumps(IDENTITIES))
        argv = [tool("weed"), "mini", f"-dir={data}", f"-ip={NS_IP}", f"-ip.bind={NS_IP}",
                f"-s3.port={S3_PORT}", f"-s3.config={ids}", "-admin.ui=false", "-webdav=false",
                "-master.telemetry=false"]
        self.daemon = Daemon(self.netns.exec_argv(argv), self.work / "s3-server.log")
        wait_for(self._answers, timeout_s=timeout_s, what="the S3 server in the namespace")
        return self

    def _answers(self) -> bool:
        assert self.daemon is not None
        self.daemon.check_alive()
        try:
            with socket.create_connection((NS_IP, S3_PORT), timeout=1.0):
                pass
            self.client().list_buckets()
        except (OSError, BotoCoreError, ClientError):  # not up yet: refused, or no filer yet
            return False
        return True

    @property
    def endpoint(self) -> str:
        return f"http://{NS_IP}:{S3_PORT}"

    def client(self, **config):
        cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}, **config)
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION, config=cfg)

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop(timeout_s=10.0)  # it stops in ~2 s when idle
            self.daemon = None

