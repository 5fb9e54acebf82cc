"""A cluster node's file system at start-up: the object stores of the exports, the root
directory, and each export's directory bound to its bucket.

Rules:
- The root directory is made once, by the first leader of the root's group (`root_ops`, a
  record in that group's log); every other node waits for it (`wait_root`) before it serves.
- A cluster has no default bucket: a local directory per node would not be shared. Only an
  export that names a store (or "/" with [store] url) gets one (`open_stores`).
- Binding is retried until it holds: a group may be electing or the ring changing meanwhile.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time

import trio

from nfs_gateway.backend import Cred, FsError, NoEnt, SetAttrs
from nfs_gateway.exports import normalize_path
from server import metrics
from server.cluster import fsops
from server.cluster import protocol as p
from server.cluster.gateway import ClusterBackend
from server.config import Config, store_spec
from server.fs.config import FsConfig
from server.node import export_id
from storage.objstore.base import ObjectStore
from storage.objstore.url import open_store

log = logging.getLogger("objcache.node")

ROOT_CRED = Cred(0, 0)


def root_ops(fsc: FsConfig):  # type: ignore[no-untyped-def]
    """What the root group's first leader logs to make the root directory."""
    def make() -> bytes:
        # The generation must differ between file systems made in the same data directory
        # name, so handles from an older cluster are stale, never valid by accident.
        gen = (secrets.randbits(31) << 1) | 1
        return fsops.root_ops(gen, time.time_ns(), fsc.root_mode, fsc.root_uid, fsc.root_gid)

    return make


def open_stores(cfg: Config) -> dict[int, ObjectStore]:
    """The object store of each export that names one, by export id (which inodes carry)."""
    stores: dict[int, ObjectStore] = {}
    for e in cfg.exports:
        if not (e.store or (e.path == "/" and cfg.store.url)):
            continue
        spec = store_spec(cfg, e)
        if spec is not None:
            spec = dataclasses.replace(spec, observe=metrics.observe_store)
            stores[export_id(normalize_path(e.path))] = open_store(spec)
            log.info("export %s: bucket %s", e.path, spec.url)
    return stores


async def bind_exports(cfg: Config, backend: ClusterBackend,
                       stores: dict[int, ObjectStore]) -> None:
    """Each export with a store: its directory exists (made as root if missing) and is bound
    to the store; the write-back learns the store's root."""
    for e in cfg.exports:
        path = normalize_path(e.path)
        store_id = export_id(path)
        if store_id not in stores:
            continue
        while True:
            try:
                fid = await backend.export_root("/")
                for part in (x for x in path.split("/") if x):
                    try:
                        fid = (await backend.lookup(ROOT_CRED, fid, part.encode())).fid
                    except NoEnt:
                        fid = (await backend.mkdir(ROOT_CRED, fid, part.encode(),
                                                   SetAttrs(mode=0o755))).fid
                await backend.bind_store(fid, store_id)
                backend.store_roots[store_id] = fid.ino
                break
            except (FsError, p.Unavailable, p.RingChanged) as err:
                log.info("binding export %s to its bucket: %s (retrying)", path, err)
                await trio.sleep(0.2)


async def wait_root(backend: ClusterBackend) -> None:
    """Until the root directory exists: its group's first leader makes it, maybe a moment after
    this node's group is ready; a MOUNT before then would fail."""
    while True:
        try:
            await backend.export_root("/")
            return
        except (FsError, p.Unavailable, p.RingChanged) as e:
            log.debug("waiting for the root directory: %s", e)
            await trio.sleep(0.05)
