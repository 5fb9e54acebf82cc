"""Limits and knobs of the local file system backend (STYLE.md habit 7: a limit on everything).

The node wiring builds an FsConfig from the TOML configuration (server/config.py); tests build
it directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from storage.chunks import ChunkConfig
from storage.kv import KvConfig


@dataclass(frozen=True, slots=True)
class FsConfig:
    chunk_size: int = 16 << 20  # bytes per chunk file, fixed per file at its creation
    kv: KvConfig = field(default_factory=KvConfig)
    chunks: ChunkConfig = field(default_factory=ChunkConfig)
    inode_cache_entries: int = 100_000
    dirent_cache_entries: int = 100_000
    complete_dir_names: int = 200_000  # names of directories known in full (server/fs/dirindex)
    # Files up to this size keep their bytes in LevelDB: creating one costs one fsync (the
    # LevelDB log) instead of chunk file + directory + log, and no chunk file ever exists.
    inline_max_bytes: int = 16 << 10
    inline_cache_entries: int = 4096  # cached inline files (each <= inline_max_bytes)
    # WRITE's size/mtime wait in memory (like a local fs's dirty inode) until COMMIT, a stable
    # WRITE, any other metadata change, this many inodes, or this age.
    max_pending_meta: int = 4096
    max_pending_inline_bytes: int = 16 << 20  # small files' UNSTABLE bytes held the same way
    pending_meta_max_age_s: float = 1.0
    # Whether namespace and attribute changes (CREATE, REMOVE, SETATTR, ...) are fsynced before
    # the reply. True (default) is knfsd's `sync` export and what RFC 1813 §3.3.8 asks: an
    # acknowledged change survives power loss; concurrent changes share one fsync (group
    # commit). False is knfsd's `async` export (and nfs-ganesha VFS over a local fs): the batch
    # reaches the kernel before the reply, so a killed server loses nothing, but a power loss
    # can drop the latest unsynced namespace changes. File data follows the NFS rules either way.
    sync_metadata: bool = True
    max_name_bytes: int = 255
    max_symlink_bytes: int = 4096
    max_links: int = 65_000
    max_file_size: int = 1 << 50
    max_read_bytes: int = 4 << 20
    max_readdir_entries: int = 10_000
    # The exported root: like a freshly made local file system (root-owned, 0755). Set
    # root_mode=0o1777 (or root_uid) when unprivileged clients must create files at the top.
    root_mode: int = 0o755
    root_uid: int = 0
    root_gid: int = 0
    # Reported by FSSTAT as the total number of file slots (inode ids are 64-bit; this is a
    # soft figure for df -i).
    max_files: int = 1 << 32
