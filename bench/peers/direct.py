"""The anchor: a direct copy of the model from S3 to local disk with boto3's transfer manager
(s3transfer: ranged GETs in parallel for large objects, many objects at once), fsync'd.

The concurrency is tuned once per run: each candidate copies the model once and the fastest
is kept for the timed repetitions. The copy's content is checked afterwards, untimed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config

from .common import ACCESS_KEY, REGION, SECRET_KEY, MiB, S3Target, drop_caches, fresh_dir

PART_BYTES = 8 * MiB


def _client(s3: S3Target, concurrency: int):
    cfg = Config(s3={"addressing_style": "path"}, max_pool_connections=concurrency + 4,
                 retries={"max_attempts": 3})
    return boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY, region_name=REGION, config=cfg)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def copy_once(s3: S3Target, names: list[str], dest: Path, concurrency: int) -> float:
    """Seconds to download every object to dest and fsync it (page cache dropped first)."""
    fresh_dir(dest)
    client = _client(s3, concurrency)
    cfg = TransferConfig(max_concurrency=concurrency, multipart_threshold=PART_BYTES,
                         multipart_chunksize=PART_BYTES)
    drop_caches()
    t0 = time.perf_counter()
    with create_transfer_manager(client, cfg) as manager:
        futures = []
        for name in names:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            futures.append(manager.download(s3.bucket, s3.prefix + name, str(dest / name)))
        for f in futures:
            f.result()
    _fsync_tree(dest)
    return time.perf_counter() - t0


def tune(s3: S3Target, names: list[str], dest: Path, candidates: list[int]) -> dict[int, float]:
    """One copy per candidate concurrency: {concurrency: seconds}."""
    return {c: copy_once(s3, names, dest, c) for c in candidates}
