"""The model directory of the benchmark: generated deterministically, kept on local disk as the
source of the upload, described by a manifest (relative path -> size, sha256).

Full: 4 shards of 500 MiB and 200 small files (1 KiB .. 1 MiB, log-uniform): about 2 GiB, the
shape of a checkpoint with its tokenizer and config files. Quick: 4 x 32 MiB and 50 small files.
Content is seeded random bytes (incompressible), made in 8 MiB blocks, each block seeded by
(seed, file, block index), so any file can be made again without the others.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from boto3.s3.transfer import TransferConfig

from .common import MiB

BLOCK_BYTES = 8 * MiB
SMALL_MIN_BYTES = 1024
SMALL_MAX_BYTES = MiB
NAMED_SMALL = ("config.json", "generation_config.json", "model.safetensors.index.json",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "vocab.json", "merges.txt")  # fmt: skip


@dataclass(frozen=True)
class ModelSpec:
    shards: int
    shard_bytes: int
    small_files: int
    seed: int = 5

    @staticmethod
    def full() -> ModelSpec:
        return ModelSpec(shards=4, shard_bytes=500 * MiB, small_files=200)

    @staticmethod
    def quick() -> ModelSpec:
        return ModelSpec(shards=4, shard_bytes=32 * MiB, small_files=50)

    def layout(self) -> dict[str, int]:
        """Relative path -> size, in a fixed order."""
        files = {f"model-{i + 1:05d}-of-{self.shards:05d}.safetensors": self.shard_bytes
                 for i in range(self.shards)}
        rng = random.Random(self.seed)
        lo, hi = math.log(SMALL_MIN_BYTES), math.log(SMALL_MAX_BYTES)
        for i in range(self.small_files):
            name = (NAMED_SMALL[i] if i < len(NAMED_SMALL)
                    else f"extra/{(i - len(NAMED_SMALL)) // 64:02d}/part-{i:04d}.bin")
            files[name] = int(math.exp(rng.uniform(lo, hi)))
        return files

    def key(self) -> str:
        return f"s{self.shards}x{self.shard_bytes}-f{self.small_files}-seed{self.seed}"

    def total_bytes(self) -> int:
        return sum(self.layout().values())


def _block(seed: int, name: str, index: int, size: int) -> bytes:
    return random.Random(f"{seed}/{name}/{index}").randbytes(size)


def _write_file(path: Path, seed: int, name: str, size: int) -> str:
    h = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for index, off in enumerate(range(0, size, BLOCK_BYTES)):
            data = _block(seed, name, index, min(BLOCK_BYTES, size - off))
            h.update(data)
            f.write(data)
    return h.hexdigest()


def ensure_source(spec: ModelSpec, cache_root: Path) -> tuple[Path, dict[str, dict]]:
    """The model on local disk (made once, kept under cache_root) and its manifest."""
    src = cache_root / f"model-{spec.key()}"
    manifest_path = src.with_suffix(".manifest.json")
    layout = spec.layout()
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if all((src / n).is_file() and (src / n).stat().st_size == s
               for n, s in layout.items()) and set(manifest) == set(layout):
            return src, manifest
    if src.exists():
        shutil.rmtree(src)
    manifest = {name: {"size": size, "sha256": _write_file(src / name, spec.seed, name, size)}
                for name, size in layout.items()}
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return src, manifest


def upload(client, src: Path, manifest: dict[str, dict], bucket: str, prefix: str) -> None:
    """Put every file of the model under s3://bucket/prefix (multipart for the large ones)."""
    cfg = TransferConfig(multipart_threshold=16 * MiB, multipart_chunksize=16 * MiB,
                         max_concurrency=8)
    for name in manifest:
        client.upload_file(str(src / name), bucket, prefix + name, Config=cfg)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
