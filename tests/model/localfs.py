"""The model: the same operations on a local directory, through the host kernel's syscalls.

Each op is one POSIX call (two for read/write: open, then pread/pwrite), so its errno is what
the local file system says POSIX wants. The umask is 0 while ops run, as on the NFS side (the
guest executor and the libnfs context set it to 0 too), so a create's mode is what is asked.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from model.ops import Op, Result, Tree, digest, pattern, populate_names


def err_name(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, f"E{e.errno}")


@contextlib.contextmanager
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def kind_of(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return f"other{stat.S_IFMT(mode):o}"


def stat_tuple(mode: int, size: int, nlink: int) -> tuple:
    """What a stat op reports (see ops.Tree on why a directory's size is None)."""
    kind = kind_of(mode)
    if kind == "dir":
        return (kind, stat.S_IMODE(mode), None, nlink)
    return (kind, stat.S_IMODE(mode), size, nlink)


class LocalApplier:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def p(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def run(self, ops: Sequence[Op]) -> list[Result]:
        with umask_zero():
            return [self.apply(op) for op in ops]

    def run_with_alternatives(self, ops: Sequence[Op]) -> tuple[list[Result], list[set[str]]]:
        """The results, and for each op the errnos that POSIX lets it answer in the state it
        ran in (see applicable_errors)."""
        results, alts = [], []
        with umask_zero():
            for op in ops:
                alts.append(applicable_errors(self.root, op))
                results.append(self.apply(op))
        return results, alts

    def apply(self, op: Op) -> Result:
        try:
            return ("ok", getattr(self, "op_" + op.kind)(op))
        except OSError as e:
            return ("err", err_name(e))

    def op_create(self, op: Op) -> None:
        os.close(os.open(self.p(op.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, op.n1))

    def op_populate(self, op: Op) -> None:
        for name in populate_names(op.n1):
            self.op_create(Op("create", f"{op.path}/{name}", n1=0o644))

    def op_write(self, op: Op) -> None:
        fd = os.open(self.p(op.path), os.O_WRONLY)
        try:
            data = pattern(op.n3, op.n1, op.n2)
            assert os.pwrite(fd, data, op.n1) == len(data)
        finally:
            os.close(fd)

    def op_read(self, op: Op) -> tuple[int, int]:
        fd = os.open(self.p(op.path), os.O_RDONLY)
        try:
            out = bytearray()
            while len(out) < op.n2:
                piece = os.pread(fd, op.n2 - len(out), op.n1 + len(out))
                if not piece:
                    break
                out += piece
            return digest(bytes(out))
        finally:
            os.close(fd)

    def op_truncate(self, op: Op) -> None:
        os.truncate(self.p(op.path), op.n1)

    def op_mkdir(self, op: Op) -> None:
        os.mkdir(self.p(op.path), op.n1)

    def op_rmdir(self, op: Op) -> None:
        os.rmdir(self.p(op.path))

    def op_unlink(self, op: Op) -> None:
        os.unlink(self.p(op.path))

    def op_rename(self, op: Op) -> None:
        os.rename(self.p(op.path), self.p(op.path2))

    def op_link(self, op: Op) -> None:
        os.link(self.p(op.path), self.p(op.path2), follow_symlinks=False)

    def op_symlink(self, op: Op) -> None:
        os.symlink(op.path2, self.p(op.path))

    def op_readlink(self, op: Op) -> str:
        return os.readlink(self.p(op.path))

    def op_chmod(self, op: Op) -> None:
        os.chmod(self.p(op.path), op.n1)

    def op_stat(self, op: Op) -> tuple:
        st = os.lstat(self.p(op.path))
        return stat_tuple(st.st_mode, st.st_size, st.st_nlink)

    def op_list(self, op: Op) -> tuple[str, ...]:
        return tuple(sorted(os.listdir(self.p(op.path))))


def _parent_error(root: Path, rel: str) -> str | None:
    """Why `rel`'s parent cannot be walked (ENOENT, ENOTDIR, ELOOP), or None."""
    parent = os.path.dirname(rel)
    if not parent:
        return None
    try:
        st = os.stat(os.path.join(root, parent))
    except OSError as e:
        return err_name(e)
    return None if stat.S_ISDIR(st.st_mode) else "ENOTDIR"


def _lstat(root: Path, rel: str) -> os.stat_result | None:
    try:
        return os.lstat(os.path.join(root, rel))
    except OSError:
        return None


def applicable_errors(root: Path, op: Op) -> set[str]:
    """Every errno that applies to `op` in the present state of `root`, for the calls with two
    names (rename, link), where more than one condition can hold at once. POSIX (XSH 2.3 Error
    Numbers): "If more than one error occurs in processing a function call, any one of the
    possible errors may be returned, as the order of detection is undefined." Linux checks the
    names in one order; an NFS server, seeing only (dir, name) pairs, in another (knfsd answers
    LINK of a directory with ISDIR before it looks at the new name)."""
    if op.kind not in ("rename", "link"):
        return set()
    errs = {e for e in (_parent_error(root, op.path), _parent_error(root, op.path2)) if e}
    src, dst = _lstat(root, op.path), _lstat(root, op.path2)
    if src is None:
        errs.add("ENOENT")
    if op.kind == "link":
        if src is not None and stat.S_ISDIR(src.st_mode):
            errs.add("EPERM")
        if dst is not None:
            errs.add("EEXIST")
        return errs
    if src is not None and dst is not None and src.st_ino != dst.st_ino:
        src_dir, dst_dir = stat.S_ISDIR(src.st_mode), stat.S_ISDIR(dst.st_mode)
        if src_dir and not dst_dir:
            errs.add("ENOTDIR")
        if dst_dir and not src_dir:
            errs.add("EISDIR")
        if dst_dir and os.listdir(os.path.join(root, op.path2)):
            errs.add("ENOTEMPTY")
    if src is not None and stat.S_ISDIR(src.st_mode) and (op.path2 + "/").startswith(
            op.path + "/") and op.path2 != op.path:
        errs.add("EINVAL")
    return errs


def local_tree(root: Path) -> Tree:
    """Every entry under `root` (root itself left out): see ops.Tree."""
    tree: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            entry = stat_tuple(st.st_mode, st.st_size, st.st_nlink)
            if entry[0] == "file":
                with open(full, "rb") as f:
                    content = zlib.crc32(f.read())
            elif entry[0] == "symlink":
                content = os.readlink(full)
            else:
                content = None
            tree[rel] = (*entry, content)
    return tree
