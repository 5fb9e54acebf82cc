"""Exports: which directories are served, to whom, and as whom (exports(5) semantics).

Rules:
- An export is named by its path (what MOUNT asks for) and by a small integer id that goes into
  every file handle, so a handle names its export without a lookup by path.
- `check_client` enforces the allowed networks (a client outside them: backend.Access, which is
  NFS3ERR_ACCES / MNT3ERR_ACCES) and, unless `insecure`, a reserved source port (< 1024): a
  client from another port is refused with backend.Perm (NFS3ERR_PERM: the caller is not
  privileged, RFC 1813 §2.6), as Linux nfsd does. `read_only` is the refusal of a modifying
  call on a read-only export (backend.ReadOnly: NFS3ERR_ROFS).
- Every refusal is counted by (reason, export) in `refusals` (objcache_export_refusals_total)
  and logged without flooding (sparselog.py): the 1st, 2nd, 4th, 8th, ... refusal of one client
  address for one (export, reason), with the count so far.
- `effective_cred` applies squashing exactly as Linux nfsd_setuser does: with root_squash, uid 0
  becomes anon_uid and gid 0 (also among the supplementary gids) becomes anon_gid; all_squash maps
  everyone; AUTH_NONE calls (no cred) run as anon.
- Both run for every NFS call, so their answers are memoized (bounded: cleared when full).
  Only admissions are remembered: every refusal is decided, logged and counted afresh.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from nfs_gateway.backend import Access, Cred, FsError, Perm, ReadOnly
from nfs_gateway.sparselog import SparseLog

log = logging.getLogger("objcache.exports")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
ALL_NETWORKS: tuple[Network, ...] = (
    ipaddress.ip_network("0.0.0.0/0"),
    ipaddress.ip_network("::/0"),
)
MAX_EXPORTS = 4096
MEMO_ENTRIES = 4096  # remembered admissions and squashed credentials (each)
LOG_MEMORY_ENTRIES = 4096  # (client address, export, reason) whose refusals are being counted
MAX_PATH_BYTES = 1024  # MNTPATHLEN (RFC 1813 appendix I)
RESERVED_PORT_LIMIT = 1024


@dataclass(frozen=True)
class Export:
    path: str
    export_id: int
    clients: tuple[Network, ...] = ALL_NETWORKS
    read_only: bool = False
    root_squash: bool = True
    all_squash: bool = False
    anon_uid: int = 65534
    anon_gid: int = 65534
    insecure: bool = False

    def __post_init__(self) -> None:
        if not self.path.startswith("/") or len(self.path.encode()) > MAX_PATH_BYTES:
            raise ValueError(f"export path must be absolute and <= 1024 bytes: {self.path!r}")
        if normalize_path(self.path) != self.path or {".", ".."} & set(self.path.split("/")):
            raise ValueError(f"export path not normalized: {self.path!r}")
        if not 0 <= self.export_id < 2**32:
            raise ValueError(f"export_id out of range: {self.export_id}")


def normalize_path(path: str) -> str:
    """Collapse repeated and trailing slashes: MOUNT clients send "/a/", "//a", "/a"."""
    parts = [p for p in path.split("/") if p]
    return "/" + "/".join(parts)


def _parse_host(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.ip_address(host.split("%", 1)[0])
    # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d; match them as IPv4.
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class ExportTable:
    def __init__(self, exports: Sequence[Export]) -> None:
        if len(exports) > MAX_EXPORTS:
            raise ValueError(f"at most {MAX_EXPORTS} exports")
        self._by_path = {e.path: e for e in exports}
        self._by_id = {e.export_id: e for e in exports}
        if len(self._by_path) != len(exports) or len(self._by_id) != len(exports):
            raise ValueError("export paths and ids must be unique")
        self._all = tuple(exports)
        # (reason, export path) -> refusals, for metrics; reasons: address, bad_address,
        # insecure_port, read_only. Bounded: reasons are fixed and exports are configured.
        self.refusals: Counter[tuple[str, str]] = Counter()
        self._log = SparseLog(LOG_MEMORY_ENTRIES)  # by (client address, export, reason)
        self._admitted: dict[tuple[int, str, bool], bool] = {}
        self._creds: dict[tuple[int, Cred | None], Cred] = {}

    def by_path(self, path: str) -> Export | None:
        return self._by_path.get(normalize_path(path))

    def containing(self, path: str) -> Export | None:
        """The export whose path is the longest whole-component prefix of `path`: knfsd and
        ganesha let a client mount a directory below an export (libnfs always mounts the
        parent directory of the file it opens)."""
        parts = normalize_path(path).split("/")
        for n in range(len(parts), 0, -1):
            export = self._by_path.get(normalize_path("/".join(parts[:n])))
            if export is not None:
                return export
        return None

    def by_id(self, export_id: int) -> Export | None:
        return self._by_id.get(export_id)

    def all(self) -> Sequence[Export]:
        return self._all

    def check_client(self, export: Export, client: tuple[str, int]) -> None:
        """Raise Access (not an allowed address) or Perm (not a reserved port) unless `client`
        (address, port) may use `export`."""
        host, port = client
        key = (export.export_id, host, port < RESERVED_PORT_LIMIT)
        if key in self._admitted:
            return
        self._check_client(export, client)
        if len(self._admitted) >= MEMO_ENTRIES:
            self._admitted.clear()
        self._admitted[key] = True

    def _check_client(self, export: Export, client: tuple[str, int]) -> None:
        host, port = client
        try:
            addr = _parse_host(host)
        except ValueError:
            raise self._refusal(export, client, "bad_address") from None
        if not any(addr.version == net.version and addr in net for net in export.clients):
            raise self._refusal(export, client, "address")
        if port >= RESERVED_PORT_LIMIT and not export.insecure:
            raise self._refusal(export, client, "insecure_port")

    def _refusal(self, export: Export, client: tuple[str, int], reason: str) -> FsError:
        self._count(export, client, reason)
        if reason == "insecure_port":
            return Perm(f"client {client[0]} port {client[1]} refused by export {export.path}: "
                        "not a reserved port")
        return Access(f"client {client[0]} refused by export {export.path}: {reason}")

    def read_only(self, export: Export, client: tuple[str, int]) -> ReadOnly:
        """The refusal of a modifying call on a read-only export: counted, logged, returned."""
        self._count(export, client, "read_only")
        return ReadOnly(f"export {export.path} is read-only")

    def _count(self, export: Export, client: tuple[str, int], reason: str) -> None:
        self.refusals[(reason, export.path)] += 1
        n = self._log.count((client[0], export.path, reason))
        if n is not None:
            log.warning("refused %s:%d access to export %s (%s); %d refusals of this client "
                        "for this reason so far", *client, export.path, reason, n)

    def effective_cred(self, export: Export, ctx_cred: Cred | None) -> Cred:
        """The identity the backend checks permissions for, after squashing."""
        key = (export.export_id, ctx_cred)
        cred = self._creds.get(key)
        if cred is None:
            cred = self._squash(export, ctx_cred)
            if len(self._creds) >= MEMO_ENTRIES:
                self._creds.clear()
            self._creds[key] = cred
        return cred

    def _squash(self, export: Export, ctx_cred: Cred | None) -> Cred:
        anon = Cred(export.anon_uid, export.anon_gid, (), ctx_cred.machine if ctx_cred else "")
        if ctx_cred is None or export.all_squash:
            return anon
        if not export.root_squash:
            return ctx_cred
        uid = export.anon_uid if ctx_cred.uid == 0 else ctx_cred.uid
        gid = export.anon_gid if ctx_cred.gid == 0 else ctx_cred.gid
        gids = tuple(export.anon_gid if g == 0 else g for g in ctx_cred.gids)
        return Cred(uid, gid, gids, ctx_cred.machine)
