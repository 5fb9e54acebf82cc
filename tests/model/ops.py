"""The model-based checker's operations, their generator and their results.

Rules of this module (it is pure: no I/O):
- An operation is a frozen `Op`: a kind, one or two paths relative to the sequence's own
  directory, up to three numbers, and the client that issues it (0 or 1; two clients are two
  mounts, on a cluster two different nodes' gateways). Paths come from a small fixed pool, so a
  random sequence keeps hitting names that exist (and, often enough, names that do not, parents
  that are files, non-empty directories, a directory and its own subtree).
- Ops are generated from a `Picker` (choice among a few values), so the same generator serves
  `random.Random` (the kernel path, shrunk by delta debugging) and hypothesis (the libnfs path,
  shrunk by hypothesis: its choices shrink towards each list's first entry).
- A result is ("ok", payload) or ("err", ERRNO_NAME); `canonical()` is the one place where two
  errnos count as the same answer, each with the POSIX text that allows it.
- File bytes are a pattern of (seed, absolute offset), so a write is a few numbers, the guest's
  C executor (modelops.c) makes the same bytes, and an offset mistake shows in the bytes.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass
from functools import lru_cache

# The names a sequence works on (relative to its own directory). Nested under a and b so that
# renames across directories and into a directory's own subtree come up.
PATHS = ("a", "b", "c", "a/a", "a/b", "b/a", "b/b", "a/a/a", "a/b/b")
# Symlink targets: an existing-looking name, a nested one, one that never exists, the link's
# own directory. Relative only, and never "..": a target must not leave the sequence's root.
LINK_TARGETS = ("a", "a/b", "zz", ".")
# Sizes and offsets around the 4 KiB page, the 64 KiB chunk the servers under test are given
# (MODEL_CHUNK_BYTES) and several chunks; offsets past the end make sparse files.
MODEL_CHUNK_BYTES = 64 << 10
OFFSETS = (0, 1, 4095, 65535, 65536, 100_000, 131_072, 200_003)
WRITE_SIZES = (1, 10, 4096, 5000, 65_536, 70_000, 140_000, 300_000)
READ_SIZES = (1, 100, 4096, 70_000, 1 << 20)
TRUNC_SIZES = (0, 1, 4095, 65_536, 65_537, 150_000, 400_000)
FILE_MODES = (0o644, 0o600, 0o755, 0o444)
DIR_MODES = (0o755, 0o700)
CHMOD_MODES = (0o640, 0o755, 0o700, 0o4755)
SEEDS = (1, 2, 3, 4)
# Kinds, repeated by weight (a Picker's choice among them is uniform).
KIND_WEIGHTS = {
    "create": 12, "write": 14, "read": 10, "truncate": 8, "mkdir": 10, "rmdir": 6,
    "unlink": 6, "rename": 12, "link": 4, "symlink": 4, "readlink": 3, "chmod": 4,
    "stat": 8, "list": 6, "populate": 1,
}  # fmt: skip
# populate(dir, n): n empty files p000... in one go, so that listings span several READDIR
# replies (their cookies and verifiers); only list, rmdir and renames of the directory see them.
POPULATE_COUNTS = (20, 120)
KINDS = tuple(k for k, w in KIND_WEIGHTS.items() for _ in range(w))
# libnfs walks symlinks itself, with rules of its own: it follows a final symlink in link()
# (Linux does not; POSIX leaves it to the implementation), and its loop limit differs from
# Linux's. That is the client's behaviour, not the server's. So the libnfs path (symlinks=False
# below) makes symlinks only at LEAF_LINKS, names no op walks through, renames or links: the
# server's SYMLINK, READLINK and their attributes are still checked (readlink and stat look at
# them, listings and the final tree show them); the kernel path makes symlinks anywhere.
LEAF_LINKS = ("la", "a/la", "b/lb")


@dataclass(frozen=True)
class Op:
    kind: str
    path: str
    path2: str = ""  # rename/link: the new name; symlink: the target
    n1: int = 0  # write/read: offset; truncate: size; create/mkdir/chmod: mode
    n2: int = 0  # write/read: size
    n3: int = 0  # write: pattern seed
    client: int = 0

    def __repr__(self) -> str:
        args = {
            "create": f"{self.path!r}, mode={self.n1:o}",
            "write": f"{self.path!r}, off={self.n1}, size={self.n2}, seed={self.n3}",
            "read": f"{self.path!r}, off={self.n1}, size={self.n2}",
            "truncate": f"{self.path!r}, {self.n1}",
            "populate": f"{self.path!r}, {self.n1}",
            "mkdir": f"{self.path!r}, mode={self.n1:o}",
            "chmod": f"{self.path!r}, {self.n1:o}",
            "rename": f"{self.path!r}, {self.path2!r}",
            "link": f"{self.path!r}, {self.path2!r}",
            "symlink": f"target={self.path2!r}, {self.path!r}",
        }.get(self.kind, repr(self.path))
        via = f" @{self.client}" if self.client else ""
        return f"{self.kind}({args}){via}"


class Picker:
    """What the generator needs: choose one of a few values."""

    def __init__(self, choose: Callable[[Sequence], object]) -> None:
        self.choose = choose


def gen_op(pick: Picker, clients: int = 1, symlinks: bool = True) -> Op:
    """One op; with symlinks=False, symlinks only at LEAF_LINKS (see there)."""
    kind = pick.choose(KINDS)
    if symlinks:
        path = pick.choose(PATHS)
    elif kind == "symlink":
        path = pick.choose(LEAF_LINKS)
    elif kind == "readlink":
        path = pick.choose((*LEAF_LINKS, "a", "c"))  # a non-symlink or nothing: EINVAL, ENOENT
    else:
        path = pick.choose(PATHS + LEAF_LINKS if kind == "stat" else PATHS)
    client = pick.choose(range(clients)) if clients > 1 else 0
    c = pick.choose
    match kind:
        case "create":
            return Op(kind, path, n1=c(FILE_MODES), client=client)
        case "write":
            return Op(kind, path, n1=c(OFFSETS), n2=c(WRITE_SIZES), n3=c(SEEDS), client=client)
        case "read":
            return Op(kind, path, n1=c(OFFSETS), n2=c(READ_SIZES), client=client)
        case "truncate":
            return Op(kind, path, n1=c(TRUNC_SIZES), client=client)
        case "mkdir":
            return Op(kind, path, n1=c(DIR_MODES), client=client)
        case "chmod":
            return Op(kind, path, n1=c(CHMOD_MODES), client=client)
        case "rename" | "link":
            return Op(kind, path, path2=c(PATHS), client=client)
        case "symlink":
            return Op(kind, path, path2=c(LINK_TARGETS), client=client)
        case "populate":
            return Op(kind, path, n1=c(POPULATE_COUNTS), client=client)
    return Op(kind, path, client=client)


def gen_ops(rng, n: int, clients: int = 1, symlinks: bool = True) -> list[Op]:
    """`n` ops from a random.Random (the kernel path's sequences)."""
    pick = Picker(lambda seq: seq[rng.randrange(len(seq))])
    return [gen_op(pick, clients, symlinks) for _ in range(n)]


def populate_names(n: int) -> list[str]:
    """The names populate(dir, n) creates, in order (modelops.c makes the same)."""
    return [f"p{i:03d}" for i in range(n)]


# -------------------------------------------------------------------------- file bytes ----

PATTERN_PERIOD = 65_521  # prime, and not a multiple of any size above: offsets show


@lru_cache(maxsize=8)
def _pattern_table(seed: int) -> bytes:
    # The same LCG as modelops.c's pattern_table().
    x = (seed * 7919 + 1) & 0x7FFFFFFF
    out = bytearray(PATTERN_PERIOD)
    for i in range(PATTERN_PERIOD):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out[i] = (x >> 16) & 0xFF
    return bytes(out)


def pattern(seed: int, offset: int, size: int) -> bytes:
    """The bytes a write(seed) puts at [offset, offset+size)."""
    table = _pattern_table(seed)
    start = offset % PATTERN_PERIOD
    reps = (start + size) // PATTERN_PERIOD + 1
    return (table * reps)[start:start + size]


def digest(data: bytes) -> tuple[int, int]:
    """What a read reports: (length, crc32) (the guest prints the same two numbers)."""
    return (len(data), zlib.crc32(data))


# ---------------------------------------------------------------------------- results ----

Result = tuple  # ("ok", payload) | ("err", "ENOENT")

# Where POSIX lets a call answer one of two errnos, the pair is one answer. Each entry cites why.
_SAME_ERRNO = {
    # rmdir(2), rename(2): "[EEXIST] or [ENOTEMPTY] ... the directory is not empty".
    ("rmdir", "EEXIST"): "ENOTEMPTY",
    ("rename", "EEXIST"): "ENOTEMPTY",
    # unlink(2) of a directory: POSIX says EPERM; Linux (and the NFS client's mapping of
    # NFS3ERR_ISDIR) says EISDIR.
    ("unlink", "EPERM"): "EISDIR",
    # link(2) of a directory: POSIX and Linux say EPERM (the client's VFS answers it before
    # asking the server); over NFSv3 the server answers LINK of a directory with
    # NFS3ERR_ISDIR, as knfsd's nfsd_link does, which libnfs passes on as EISDIR.
    ("link", "EISDIR"): "EPERM",
}


def canonical(kind: str, result: Result) -> Result:
    if result[0] == "err":
        return ("err", _SAME_ERRNO.get((kind, result[1]), result[1]))
    return result


# What is compared, and what is left out on purpose:
# - every op's success or errno (canonical, with the alternatives POSIX allows), and its payload:
#   bytes read (length and crc32), readlink's target, lstat's type, permission bits (setuid
#   included), size and link count, a directory's sorted names;
# - the final tree, read back through NFS (on the kernel path after a remount, cold cache).
# Not compared: atime, mtime and ctime (two clocks; NFSv3 clients keep atime loosely, and
#   relatime on the local side), uid/gid (every client is root, without squashing here;
#   squashing is export policy, tested with access control), inode numbers, st_blocks and
#   st_dev, and a directory's size (below).
# A tree: relative path -> (type, permission bits, size, nlink, content), where content is the
# crc32 of a file's bytes or a symlink's target. A directory's size is not compared (None):
# POSIX leaves st_size of a directory unspecified (ext4 grows it in blocks as entries come,
# objcache always says 4096). Its link count is compared: POSIX leaves it open too, but both
# follow the Unix convention (2 + subdirectories), and a rename across directories that
# forgets a parent's count is a real bug (fsck checks the same counts).
Tree = dict[str, tuple]


def agree(op: Op, want: Result, got: Result, alternatives: Set[str] = frozenset()) -> bool:
    """Whether NFS's answer `got` is the local `want`: the same payload, or the same errno
    (canonical), or, where both failed, another errno that also applied (`alternatives`,
    from localfs.applicable_errors)."""
    w, g = canonical(op.kind, want), canonical(op.kind, got)
    if w == g:
        return True
    if w[0] == g[0] == "err":
        return g[1] in {canonical(op.kind, ("err", e))[1] for e in alternatives}
    return False


def describe_diff(ops: Sequence[Op], want: Sequence[Result], got: Sequence[Result],
                  want_tree: Tree | None, got_tree: Tree | None,
                  alternatives: Sequence[Set[str]] | None = None) -> str | None:
    """None if the two runs agree; else what first differs (results, then the final tree)."""
    for i, op in enumerate(ops):
        if i >= len(want) or i >= len(got):
            break
        if not agree(op, want[i], got[i], alternatives[i] if alternatives else frozenset()):
            return f"op {i} {op!r}: local {want[i]}, nfs {got[i]}"
    if len(want) != len(got):
        return f"local ran {len(want)} ops, nfs {len(got)}"
    if want_tree is not None and got_tree is not None and want_tree != got_tree:
        lines = []
        for p in sorted(set(want_tree) | set(got_tree)):
            if want_tree.get(p) != got_tree.get(p):
                lines.append(f"  {p}: local {want_tree.get(p)}, nfs {got_tree.get(p)}")
        return "final tree differs:\n" + "\n".join(lines)
    return None


def script(ops: Sequence[Op], want: Sequence[Result] | None = None,
           got: Sequence[Result] | None = None) -> str:
    """The sequence as numbered lines, with both sides' results when given."""
    lines = []
    for i, op in enumerate(ops):
        line = f"{i:3d} {op!r}"
        if want is not None and got is not None and i < len(want) and i < len(got):
            mark = "" if canonical(op.kind, want[i]) == canonical(op.kind, got[i]) else "  *"
            line += f"  -> local {want[i]}  nfs {got[i]}{mark}"
        lines.append(line)
    return "\n".join(lines)
