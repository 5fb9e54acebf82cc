"""objcache through a third-party NFS client: libnfs-utils (nfs-cp, nfs-ls, nfs-cat).

Each test runs against a real `objcache serve` process (see conftest.py). Directories are made
with tests/tools/nfsmeta.c (libnfs too), since libnfs-utils has no mkdir.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from serverproc import nfs_cat, nfs_cp, nfs_ls, nfsmeta

pytestmark = pytest.mark.integration

MiB = 1 << 20
CHUNK = 4 * MiB

# Relative path -> size. Odd sizes straddle 4 KiB pages, 64 KiB and 1 MiB transfer sizes and
# the 16 MiB chunk size is left to the 1 GiB test.
TREE_FILES = {
    "empty": 0,
    "one-byte": 1,
    "a/page-minus-1": 4095,
    "a/page-plus-1": 4097,
    "a/b/odd 65537 bytes": 65537,
    "a/b/c/mib-minus-1": MiB - 1,
    "a/b/c/mib-plus-1": MiB + 1,
    "a/b/c/d/deep": 12345,
    "few mib.bin": 3 * MiB + 517,
    "ünïcödé ファイル.dat": 777,
    "dir with space/naïve café.txt": 31,
    "dir with space/empty too": 0,
}
TREE_DIRS = ["a", "a/b", "a/b/c", "a/b/c/d", "dir with space", "empty dir"]


def _write_random(path: Path, size: int) -> str:
    """Write `size` random bytes; return their sha256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(CHUNK, left))
            h.update(block)
            f.write(block)
            left -= len(block)
    return h.hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _make_local_tree(root: Path) -> dict[str, str]:
    for d in TREE_DIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
    return {rel: _write_random(root / rel, size) for rel, size in TREE_FILES.items()}


def _upload_tree(server, local: Path, remote_dir: str) -> None:
    nfsmeta(server.export_url(), "mkdir", remote_dir)
    for d in TREE_DIRS:
        nfsmeta(server.export_url(), "mkdir", f"{remote_dir}/{d}")
    for rel in TREE_FILES:
        nfs_cp(local / rel, server.url(f"{remote_dir}/{rel}"))


def test_tree_round_trip_checksums_and_listing(nfs_server, tmp_path: Path) -> None:
    local, back = tmp_path / "local", tmp_path / "back"
    sums = _make_local_tree(local)
    _upload_tree(nfs_server, local, "/tree")

    for rel in TREE_FILES:
        (back / rel).parent.mkdir(parents=True, exist_ok=True)
        nfs_cp(nfs_server.url(f"/tree/{rel}"), back / rel)
    got = {rel: _sha256_file(back / rel) for rel in TREE_FILES}
    assert got == sums
    uni = "ünïcödé ファイル.dat"
    assert nfs_cat(nfs_server.url(f"/tree/{uni}")) == (local / uni).read_bytes()

    listing = {e.name: e for e in nfs_ls(nfs_server.url("/tree"), recursive=True)}
    assert set(listing) == set(TREE_FILES) | set(TREE_DIRS)
    for rel, size in TREE_FILES.items():
        assert listing[rel].mode.startswith("-"), listing[rel]
        assert listing[rel].size == size, listing[rel]
        assert listing[rel].nlink == 1, listing[rel]
    for d in TREE_DIRS:
        assert listing[d].mode.startswith("d"), listing[d]

    top = {e.name: e for e in nfs_ls(nfs_server.url("/tree/dir with space"))}
    assert set(top) == {"naïve café.txt", "empty too"}
    assert top["naïve café.txt"].size == 31


def test_nfs_cp_refuses_to_overwrite(nfs_server, tmp_path: Path) -> None:
    """CREATE of an existing name is refused (libnfs asks for GUARDED/EXCLUSIVE creation)."""
    src = tmp_path / "f"
    src.write_bytes(b"first")
    nfs_cp(src, nfs_server.url("/f"))
    (tmp_path / "g").write_bytes(b"second")
    res = nfs_cp(tmp_path / "g", nfs_server.url("/f"), check=False)
    assert res.returncode != 0
    assert nfs_cat(nfs_server.url("/f")) == b"first"


@pytest.mark.slow
def test_one_gib_file_round_trip(nfs_server, tmp_path: Path) -> None:
    size = 1 << 30
    src = tmp_path / "big.in"
    want = _write_random(src, size)
    nfs_cp(src, nfs_server.url("/big.bin"), timeout_s=900)
    src.unlink()  # keep at most two copies on disk (the server's and one local)

    [entry] = [e for e in nfs_ls(nfs_server.url("/")) if e.name == "big.bin"]
    assert entry.size == size

    # Read back through nfs-cat into a streaming hash: no second local copy.
    h = hashlib.sha256()
    n = 0
    with subprocess.Popen(["nfs-cat", nfs_server.url("/big.bin")], stdout=subprocess.PIPE) as p:
        assert p.stdout is not None
        while block := p.stdout.read(CHUNK):
            h.update(block)
            n += len(block)
        rc = p.wait(timeout=900)
    assert rc == 0
    assert n == size
    assert h.hexdigest() == want


def test_directory_of_10000_entries_listed(nfs_server) -> None:
    n = 10_000
    created = nfsmeta(nfs_server.export_url(), "mkfiles", "/many", n)
    assert created["create"]["ops"] == n

    listing = nfs_ls(nfs_server.url("/many"), timeout_s=300)
    names = [e.name for e in listing]
    assert len(names) == n, f"nfs-ls listed {len(names)} entries, {len(set(names))} distinct"
    assert set(names) == {f"f{i:06d}" for i in range(n)}
    assert all(e.mode.startswith("-") and e.size == 0 for e in listing)

    counted = nfsmeta(nfs_server.export_url(), "count", "/many")
    assert counted["count"]["entries"] == n


def test_data_survives_restart(nfs_server, tmp_path: Path) -> None:
    local = tmp_path / "local"
    local.mkdir()
    sums = {}
    for name, size in {"a.bin": 5 * MiB + 3, "b.txt": 10, "empty": 0}.items():
        sums[name] = _write_random(local / name, size)
    nfsmeta(nfs_server.export_url(), "mkdir", "/keep")
    for name in sums:
        nfs_cp(local / name, nfs_server.url(f"/keep/{name}"))

    nfs_server.restart()  # SIGTERM, exit 0 checked, then the same data dir and port

    listing = {e.name: e.size for e in nfs_ls(nfs_server.url("/keep"))}
    assert listing == {"a.bin": 5 * MiB + 3, "b.txt": 10, "empty": 0}
    for name, want in sums.items():
        got = hashlib.sha256(nfs_cat(nfs_server.url(f"/keep/{name}"))).hexdigest()
        assert got == want, name


def test_mount_of_a_subdirectory(nfs_server, tmp_path: Path) -> None:
    """MOUNT MNT of a directory below the export root answers its handle (as knfsd and
    ganesha do). libnfs always mounts a URL's dirname, so nfs-cp and nfs-ls of anything below
    the root depend on it."""
    nfsmeta(nfs_server.export_url(), "mkdir", "/sub")
    nfsmeta(nfs_server.export_url(), "mkdir", "/sub/deeper")
    (tmp_path / "f").write_bytes(b"below the root")
    nfs_cp(tmp_path / "f", nfs_server.url("/sub/deeper/f"))  # MNT /sub/deeper
    assert [(e.name, e.size) for e in nfs_ls(nfs_server.url("/sub/deeper"))] == [("f", 14)]
    assert nfs_cat(nfs_server.url("/sub/deeper/f")) == b"below the root"
    res = nfs_ls(nfs_server.url("/no-such-dir"), check=False)
    assert res.returncode != 0
