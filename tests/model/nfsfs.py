"""The operations through libnfs (tests/nfsclient.py): one or two mounts of objcache, each op
on the mount of its `client`, under a fresh directory per sequence.

Each op is one libnfs call (read/write: open, then pread/pwrite, then close); libnfs walks the
path with LOOKUPs itself, follows symlinks on the way, and maps the server's nfsstat3 to an
errno. The context's umask is 0 and its directory cache off, so a listing is what the server
answers now.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import zlib
from collections.abc import Sequence

from nfsclient import LibNfs

from model.localfs import stat_tuple
from model.ops import Op, Result, Tree, digest, pattern, populate_names

_RUNS = itertools.count()


def open_client(url: str) -> LibNfs:
    nfs = LibNfs(url)
    nfs.umask(0)
    nfs.set_dircache(False)
    return nfs


class NfsApplier:
    """`clients[i]` serves ops with client == i (a sequence of one client uses clients[0])."""

    def __init__(self, clients: Sequence[LibNfs], prefix: str = "/model") -> None:
        self.clients = list(clients)
        self.prefix = prefix
        self.root = ""

    def new_root(self) -> str:
        """A fresh, empty directory for the next sequence."""
        if self.root == "":
            try:
                self.clients[0].mkdir(self.prefix, 0o755)
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
        self.root = f"{self.prefix}/s{os.getpid()}-{next(_RUNS)}"
        self.clients[0].mkdir(self.root, 0o755)
        return self.root

    def run(self, ops: Sequence[Op]) -> list[Result]:
        self.new_root()
        return [self.apply(op) for op in ops]

    def p(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def apply(self, op: Op) -> Result:
        nfs = self.clients[op.client % len(self.clients)]
        try:
            return ("ok", getattr(self, "op_" + op.kind)(nfs, op))
        except OSError as e:
            if e.errno is None:
                raise  # not an errno from libnfs: a failure of the harness
            if op.kind == "read" and e.errno == errno.EFAULT:
                # libnfs's sync nfs_pread answers every failed READ with -EFAULT and no
                # message. The one READ failure a sequence can cause is READ of a directory,
                # whose NFS3ERR_ISDIR tests/unit/test_nfs3_procs.py checks exactly (and the
                # kernel path checks read(2) of a directory end to end).
                return ("err", "EISDIR")
            return ("err", errno.errorcode.get(e.errno, f"E{e.errno}"))

    def op_create(self, nfs: LibNfs, op: Op) -> None:
        nfs.fclose(nfs.create_file(self.p(op.path), os.O_EXCL | os.O_WRONLY, op.n1))

    def op_populate(self, nfs: LibNfs, op: Op) -> None:
        for name in populate_names(op.n1):
            self.op_create(nfs, Op("create", f"{op.path}/{name}", n1=0o644))

    def op_write(self, nfs: LibNfs, op: Op) -> None:
        fh = nfs.open(self.p(op.path), os.O_WRONLY)
        try:
            nfs.pwrite(fh, op.n1, pattern(op.n3, op.n1, op.n2))
        finally:
            nfs.fclose(fh)

    def op_read(self, nfs: LibNfs, op: Op) -> tuple[int, int]:
        fh = nfs.open(self.p(op.path), os.O_RDONLY)
        try:
            return digest(nfs.pread(fh, op.n1, op.n2))
        finally:
            nfs.fclose(fh)

    def op_truncate(self, nfs: LibNfs, op: Op) -> None:
        nfs.truncate(self.p(op.path), op.n1)

    def op_mkdir(self, nfs: LibNfs, op: Op) -> None:
        nfs.mkdir(self.p(op.path), op.n1)

    def op_rmdir(self, nfs: LibNfs, op: Op) -> None:
        nfs.rmdir(self.p(op.path))

    def op_unlink(self, nfs: LibNfs, op: Op) -> None:
        nfs.unlink(self.p(op.path))

    def op_rename(self, nfs: LibNfs, op: Op) -> None:
        nfs.rename(self.p(op.path), self.p(op.path2))

    def op_link(self, nfs: LibNfs, op: Op) -> None:
        nfs.link(self.p(op.path), self.p(op.path2))

    def op_symlink(self, nfs: LibNfs, op: Op) -> None:
        nfs.symlink(op.path2, self.p(op.path))

    def op_readlink(self, nfs: LibNfs, op: Op) -> str:
        return nfs.readlink(self.p(op.path))

    def op_chmod(self, nfs: LibNfs, op: Op) -> None:
        nfs.chmod(self.p(op.path), op.n1)

    def op_stat(self, nfs: LibNfs, op: Op) -> tuple:
        st = nfs.lstat(self.p(op.path))
        return stat_tuple(st.mode, st.size, st.nlink)

    def op_list(self, nfs: LibNfs, op: Op) -> tuple[str, ...]:
        return tuple(sorted(nfs.listdir(self.p(op.path))))

    def tree(self) -> Tree:
        """The sequence's final tree, read through client 0: see ops.Tree."""
        tree: Tree = {}
        self._walk(self.clients[0], "", tree)
        return tree

    def _walk(self, nfs: LibNfs, rel: str, tree: Tree) -> None:
        base = self.p(rel) if rel else self.root
        for name in sorted(nfs.listdir(base)):
            child = f"{rel}/{name}" if rel else name
            st = nfs.lstat(self.p(child))
            entry = stat_tuple(st.mode, st.size, st.nlink)
            content = None
            if entry[0] == "file":
                fh = nfs.open(self.p(child), os.O_RDONLY)
                try:
                    content = zlib.crc32(nfs.pread(fh, 0, st.size))
                finally:
                    nfs.fclose(fh)
            elif entry[0] == "symlink":
                content = nfs.readlink(self.p(child))
            tree[child] = (*entry, content)
            if stat.S_ISDIR(st.mode):
                self._walk(nfs, child, tree)
