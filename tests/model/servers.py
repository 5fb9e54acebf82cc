"""The servers under test, with the small chunk size (ops.MODEL_CHUNK_BYTES, the smallest the
config allows) so that the generator's sizes of a few hundred KiB span several chunks, and on a
cluster several groups.

- `single_node(dir)`: one `objcache serve` (tests/serverproc.py).
- `cluster(dir)`: three one-member groups (tests/clusterproc.py's LocalCluster), started through
  the launcher itself with a [storage] table (`objcache cluster up` has no chunk-size option).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from clusterproc import ClusterError, LocalCluster
from serverproc import ObjcacheServer, free_port

from model.ops import MODEL_CHUNK_BYTES

STORAGE = {"chunk_size_bytes": MODEL_CHUNK_BYTES, "inline_max_bytes": 4096}


def single_node(root: Path) -> ObjcacheServer:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "model.toml"
    config.write_text("[storage]\n" + "".join(f"{k} = {v}\n" for k, v in STORAGE.items()))
    return ObjcacheServer(root / "data", config=config, log_path=root / "objcache.log").start()


class ModelCluster(LocalCluster):
    """LocalCluster whose nodes get the model's [storage] table."""

    def up(self) -> ModelCluster:
        from server.cluster import launcher

        base = free_port(count=3 * self.n)
        out, err = io.StringIO(), io.StringIO()
        rc = launcher.up(self.root, self.n, self.replicas, base, as_json=True, out=out,
                         err=err, sections={"storage": STORAGE})
        if rc != 0:
            raise ClusterError(f"cluster up exited {rc}:\n{err.getvalue()[-5000:]}")
        self.nodes = {row["node_id"]: row for row in json.loads(out.getvalue())["nodes"]}
        return self


def cluster(root: Path, nodes: int = 3) -> ModelCluster:
    return ModelCluster(root, nodes=nodes).up()
