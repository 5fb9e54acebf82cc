"""Permission checks from AUTH_SYS credentials. Pure.

Rules (POSIX as Linux applies it; Linux knfsd's choices where NFS adds its own):
- Mode bits: the owner class if uid matches, else the group class if the file's gid is the
  primary or a supplementary gid, else other. Only one class is consulted.
- Root (uid 0 after squashing) may read and write anything, and may execute a non-directory only
  if some x bit is set; directories are always searchable for root.
- Owner override (knfsd NFSD_MAY_OWNER_OVERRIDE): the owner may READ/WRITE/truncate their file
  whatever its mode, because open(2) with O_CREAT and mode 0444 must still be able to write the
  file it created; NFS has no open, so the check happens on every READ and WRITE. ACCESS does not
  get the override: it reports the mode bits.
- Refusals by mode bits are Access (NFS3ERR_ACCES); "you are not the owner" refusals (chmod,
  chown, times, sticky directories) are Perm (NFS3ERR_PERM), as Linux returns EPERM for those.
"""

from __future__ import annotations

from nfs_gateway.backend import (
    ACCESS_DELETE,
    ACCESS_EXECUTE,
    ACCESS_EXTEND,
    ACCESS_LOOKUP,
    ACCESS_MODIFY,
    ACCESS_READ,
    Access,
    Cred,
    FileType,
    IsDir,
    Perm,
    SetAttrs,
    TimeHow,
)
from server.fs.records import Inode

R, W, X = 4, 2, 1
S_ISUID, S_ISGID, S_ISVTX = 0o4000, 0o2000, 0o1000


def in_group(cred: Cred, gid: int) -> bool:
    return cred.gid == gid or gid in cred.gids


def mode_class_bits(cred: Cred, inode: Inode) -> int:
    """The rwx bits (0-7) of the class cred falls into."""
    if cred.uid == inode.uid:
        return (inode.mode >> 6) & 7
    if in_group(cred, inode.gid):
        return (inode.mode >> 3) & 7
    return inode.mode & 7


def allowed(cred: Cred, inode: Inode, want: int) -> bool:
    """May cred do every one of `want` (R|W|X bits) by mode bits?"""
    if cred.is_root:
        return not (want & X and inode.ftype != FileType.DIR and not inode.mode & 0o111)
    return want & mode_class_bits(cred, inode) == want


def check(cred: Cred, inode: Inode, want: int) -> None:
    if not allowed(cred, inode, want):
        raise Access(f"mode {inode.mode:o} denies {want:o} to uid {cred.uid}")


def check_io(cred: Cred, inode: Inode, want: int) -> None:
    """READ / WRITE / truncate: mode bits, with the owner override (module rules)."""
    if cred.uid == inode.uid:
        return
    # Read access also lets a client read an executable it may only execute (knfsd does this for
    # READ, since the client's exec needs to fetch the bytes).
    if want == R and allowed(cred, inode, X) and inode.ftype == FileType.REG:
        return
    check(cred, inode, want)


def access_mask(cred: Cred, inode: Inode, mask: int) -> int:
    """ACCESS3 (RFC 1813 §3.3.4) as knfsd maps it: which bits of `mask` cred may do."""
    if inode.ftype == FileType.DIR:
        table = (
            (ACCESS_READ, R),
            (ACCESS_LOOKUP, X),
            (ACCESS_MODIFY, W | X),
            (ACCESS_EXTEND, W | X),
            (ACCESS_DELETE, W | X),
        )
    else:
        table = ((ACCESS_READ, R), (ACCESS_MODIFY, W), (ACCESS_EXTEND, W), (ACCESS_EXECUTE, X))
    granted = 0
    for bit, want in table:
        if mask & bit and allowed(cred, inode, want):
            granted |= bit
    return granted


def check_dir_write(cred: Cred, d: Inode) -> None:
    """Adding or removing an entry needs write and search permission on the directory."""
    check(cred, d, W | X)


def check_sticky(cred: Cred, d: Inode, victim: Inode) -> None:
    """In a sticky directory only root, the directory's owner or the entry's owner may remove or
    rename the entry (POSIX; Linux returns EPERM)."""
    if d.mode & S_ISVTX and not cred.is_root and cred.uid not in (d.uid, victim.uid):
        raise Perm("sticky directory")


def check_setattr(cred: Cred, inode: Inode, s: SetAttrs) -> None:
    """Who may change what (POSIX chmod/chown/utimes/truncate as Linux applies them)."""
    owner = cred.is_root or cred.uid == inode.uid
    if s.mode is not None and not owner:
        raise Perm("only the owner may chmod")
    if s.uid is not None and s.uid != inode.uid and not cred.is_root:
        raise Perm("only root may change the owner")
    if s.gid is not None and s.gid != inode.gid and not cred.is_root:  # noqa: SIM102
        if cred.uid != inode.uid or not in_group(cred, s.gid):
            raise Perm("only the owner may chgrp, and only to a group of theirs")
    if s.uid is not None and s.uid == inode.uid and not owner:
        raise Perm("only the owner may chown")  # chown to the same uid is still a chown
    _check_times(cred, inode, s, owner)
    if s.size is not None:
        if inode.ftype == FileType.DIR:
            raise IsDir("cannot truncate a directory")
        check_io(cred, inode, W)


def _check_times(cred: Cred, inode: Inode, s: SetAttrs, owner: bool) -> None:
    hows = (s.atime, s.mtime)
    if TimeHow.SET_TO_CLIENT_TIME in hows and not owner:
        raise Perm("only the owner may set explicit times")
    if TimeHow.SET_TO_SERVER_TIME in hows and not owner and not allowed(cred, inode, W):
        # utimes(NULL) needs ownership or write permission; Linux says EACCES for the latter.
        raise Access("setting times to now needs write permission")


def chmod_mode(cred: Cred, inode: Inode, mode: int) -> int:
    """The mode actually set: a non-root chmod of a file whose group is not one of the caller's
    drops setgid (Linux inode_change_ok / setattr_prepare)."""
    mode &= 0o7777
    if not cred.is_root and mode & S_ISGID and not in_group(cred, inode.gid):
        mode &= ~S_ISGID
    return mode


def chown_clears(inode: Inode, new_mode: int) -> int:
    """Mode after an owner/group change of a non-directory: setuid goes, setgid goes if it meant
    set-group-ID (group execute set) rather than mandatory locking."""
    if inode.ftype == FileType.DIR:
        return new_mode
    new_mode &= ~S_ISUID
    if new_mode & 0o010:
        new_mode &= ~S_ISGID
    return new_mode


def write_clears_suid(cred: Cred, inode: Inode) -> bool:
    """A write by anyone but root drops setuid/setgid (Linux file_remove_privs)."""
    if cred.is_root:
        return False
    return bool(inode.mode & S_ISUID or (inode.mode & S_ISGID and inode.mode & 0o010))
