"""s3fs-fuse (Debian `s3fs`) with its local file cache (use_cache): what many users mount.

Cold: a fresh mount with an empty cache directory. Warm: the second read through the same
mount, served from the cache files (s3fs still checks each object's metadata with a HEAD).
Options other than cache, endpoint, path style and credentials are s3fs's defaults.
"""

from __future__ import annotations

from .common import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    Daemon,
    MountPeer,
    first_line,
    tool,
    wait_mounted,
)


class S3fs(MountPeer):
    name = "s3fs"
    warm_means = "second read through the same mount, from its use_cache directory"

    def version(self) -> str:
        return first_line([tool("s3fs"), "--version"])

    def start(self) -> float:
        self.mnt.mkdir()
        cache = self.work / "cache"
        cache.mkdir()
        passwd = self.work / "passwd"
        passwd.write_text(f"{ACCESS_KEY}:{SECRET_KEY}\n")
        passwd.chmod(0o600)
        opts = (f"use_cache={cache},url={self.s3.endpoint},use_path_request_style,"
                f"passwd_file={passwd},endpoint={REGION},dbglevel=warn")
        self.argv = [tool("s3fs"), f"{self.s3.bucket}:/{self.s3.prefix.rstrip('/')}",
                     str(self.mnt), "-f", "-o", opts]
        self.daemon = Daemon(self.argv, self.work / "s3fs.log")
        wait_mounted(self.mnt, self.daemon)
        return 0.0
