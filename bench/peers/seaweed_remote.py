"""SeaweedFS's remote-storage cache: a local SeaweedFS (`weed mini` on loopback, outside the
namespace) mounts the remote bucket (`remote.configure` + `remote.mount`, which pulls the
metadata only), and `weed mount` serves that filer directory over FUSE. A read of a file not yet
cached makes the local volume server fetch it from the remote S3.

Cold: the remote.configure + remote.mount step (timed, counted) and the first read, from an
empty local SeaweedFS. Warm: the second read through the same mount, the content now in the
local volume server (and weed mount's chunk cache).
"""

from __future__ import annotations

import time

from .common import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    Daemon,
    MountPeer,
    PeerError,
    first_line,
    free_port,
    run,
    tcp_answers,
    tool,
    wait_for,
    wait_mounted,
)

GRPC_OFFSET = 10000
REMOTE = "origin"


class SeaweedRemote(MountPeer):
    name = "seaweedfs-remote"
    cold_means = ("remote.configure + remote.mount (metadata) on an empty local SeaweedFS, "
                  "then the first read through weed mount")
    warm_means = "second read through the same weed mount (content cached in the local volume)"

    def version(self) -> str:
        return first_line([tool("weed"), "version"])

    def _start_local(self) -> None:
        self.ports = {k: free_port(grpc_offset=GRPC_OFFSET)
                      for k in ("master", "volume", "filer", "admin")}
        data = self.work / "weed-data"
        data.mkdir()
        argv = [tool("weed"), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                *(f"-{k}.port={p}" for k, p in self.ports.items()),
                "-s3=false", "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
                # the remote S3 lives at a private address, which SeaweedFS refuses by default
                "-filer.allowUntrustedRemoteEndpoints=true",
                "-volume.allowUntrustedRemoteEndpoints=true"]
        self.local = Daemon(argv, self.work / "weed-local.log")
        wait_for(lambda: (self.local.check_alive() or True) and
                 tcp_answers("127.0.0.1", self.ports["filer"]),
                 timeout_s=60, what="the local SeaweedFS filer")

    def _shell(self, commands: str) -> str:
        argv = [tool("weed"), "shell", f"-master=127.0.0.1:{self.ports['master']}",
                f"-filer=127.0.0.1:{self.ports['filer']}"]
        out = run(argv, input_text=commands + "\nexit\n", timeout_s=600)
        if "error" in out.lower():
            raise PeerError(f"weed shell: {out.strip()[-1500:]}")
        return out

    def _remote_mount(self) -> None:
        s3 = self.s3
        self._shell(f"remote.configure -name={REMOTE} -type=s3 -s3.access_key={ACCESS_KEY} "
                    f"-s3.secret_key={SECRET_KEY} -s3.endpoint={s3.endpoint} "
                    f"-s3.region={REGION} -s3.force_path_style=true\n"
                    f"remote.mount -dir=/buckets/{s3.bucket} -remote={REMOTE}/{s3.bucket}")

    def start(self) -> float:
        self._start_local()
        t0 = time.perf_counter()
        self._remote_mount()
        prep_s = time.perf_counter() - t0
        self.mnt.mkdir()
        self.argv = [tool("weed"), "mount", f"-filer=127.0.0.1:{self.ports['filer']}",
                     f"-dir={self.mnt}", f"-filer.path=/buckets/{self.s3.bucket}/{self.s3.prefix}",
                     f"-cacheDir={self.work / 'mount-cache'}"]
        self.daemon = Daemon(self.argv, self.work / "weed-mount.log")
        wait_mounted(self.mnt, self.daemon)
        return prep_s

    def stop(self) -> None:
        super().stop()
        if getattr(self, "local", None) is not None:
            self.note_rss("weed mini (local)", self.local)
            self.local.stop()
            self.local = None
