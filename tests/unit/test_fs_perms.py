"""Permission checks (server/fs/perms.py): POSIX mode bits as Linux knfsd applies them."""

import pytest

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
from server.fs import perms
from server.fs.records import Inode

ALL = ACCESS_READ | ACCESS_LOOKUP | ACCESS_MODIFY | ACCESS_EXTEND | ACCESS_DELETE | ACCESS_EXECUTE
ROOT = Cred(0, 0)
OWNER = Cred(1000, 100)
MEMBER = Cred(2000, 200, (100,))  # in the file's group only through a supplementary gid
OTHER = Cred(3000, 300)


def node(mode, ftype=FileType.REG, uid=1000, gid=100):
    return Inode(7, 1, ftype, mode, uid, gid, 0, 1, (0, 0), 0, 0, 0)


@pytest.mark.parametrize(
    ("cred", "mode", "want", "ok"),
    [
        (OWNER, 0o600, perms.R | perms.W, True),
        (OWNER, 0o077, perms.R, False),  # only the owner class counts for the owner
        (MEMBER, 0o040, perms.R, True),
        (MEMBER, 0o404, perms.R, False),  # group class, though other could read
        (OTHER, 0o004, perms.R, True),
        (OTHER, 0o770, perms.R, False),
        (OTHER, 0o001, perms.X, True),
        (ROOT, 0o000, perms.R | perms.W, True),  # root bypasses r and w
        (ROOT, 0o000, perms.X, False),  # but needs an x bit somewhere to execute a file
        (ROOT, 0o010, perms.X, True),
    ],
)
def test_mode_bits(cred, mode, want, ok):
    assert perms.allowed(cred, node(mode), want) is ok


def test_root_may_search_any_directory():
    assert perms.allowed(ROOT, node(0o000, FileType.DIR), perms.X)


@pytest.mark.parametrize(
    ("cred", "ftype", "mode", "granted"),
    [
        (OWNER, FileType.REG, 0o600, ACCESS_READ | ACCESS_MODIFY | ACCESS_EXTEND),
        (OWNER, FileType.REG, 0o700, ACCESS_READ | ACCESS_MODIFY | ACCESS_EXTEND | ACCESS_EXECUTE),
        (OTHER, FileType.REG, 0o644, ACCESS_READ),
        (
            OWNER,
            FileType.DIR,
            0o700,
            ACCESS_READ | ACCESS_LOOKUP | ACCESS_MODIFY | ACCESS_EXTEND | ACCESS_DELETE,
        ),
        (OWNER, FileType.DIR, 0o600, ACCESS_READ),  # modify/delete in a dir need x as well
        (OTHER, FileType.DIR, 0o755, ACCESS_READ | ACCESS_LOOKUP),
        (ROOT, FileType.REG, 0o644, ACCESS_READ | ACCESS_MODIFY | ACCESS_EXTEND),
        (
            ROOT,
            FileType.DIR,
            0o000,
            ACCESS_READ | ACCESS_LOOKUP | ACCESS_MODIFY | ACCESS_EXTEND | ACCESS_DELETE,
        ),
    ],
)
def test_access_mask(cred, ftype, mode, granted):
    # RFC 1813 §3.3.4, mapped as knfsd does: LOOKUP/DELETE only for directories, EXECUTE only
    # for non-directories.
    assert perms.access_mask(cred, node(mode, ftype), ALL) == granted


def test_access_mask_only_answers_what_was_asked():
    assert perms.access_mask(OWNER, node(0o700), ACCESS_READ) == ACCESS_READ


def test_owner_override_for_io_but_not_access():
    f = node(0o000)
    perms.check_io(OWNER, f, perms.W)  # created with mode 0, still writable by its owner
    assert perms.access_mask(OWNER, f, ACCESS_MODIFY) == 0
    with pytest.raises(Access):
        perms.check_io(OTHER, f, perms.R)


def test_sticky_directory():
    d = node(0o1777, FileType.DIR, uid=0, gid=0)
    victim = node(0o644)  # owned by OWNER
    perms.check_sticky(OWNER, d, victim)
    perms.check_sticky(ROOT, d, victim)
    with pytest.raises(Perm):
        perms.check_sticky(OTHER, d, victim)
    perms.check_sticky(OTHER, node(0o777, FileType.DIR), victim)  # not sticky: fine


@pytest.mark.parametrize(
    ("cred", "sattr", "error"),
    [
        (OWNER, SetAttrs(mode=0o600), None),
        (OTHER, SetAttrs(mode=0o600), Perm),
        (ROOT, SetAttrs(mode=0o600), None),
        (OWNER, SetAttrs(uid=5), Perm),  # only root gives files away
        (ROOT, SetAttrs(uid=5), None),
        (OWNER, SetAttrs(uid=1000), None),  # chown to oneself is a no-op
        (OWNER, SetAttrs(gid=100), None),
        (Cred(1000, 100, (500,)), SetAttrs(gid=500), None),  # to a group of theirs
        (OWNER, SetAttrs(gid=500), Perm),
        (MEMBER, SetAttrs(gid=100), None),  # unchanged gid: nothing to refuse
        (MEMBER, SetAttrs(gid=200), Perm),  # not the owner
        (OTHER, SetAttrs(mtime=TimeHow.SET_TO_CLIENT_TIME, mtime_ns=5), Perm),
        (OWNER, SetAttrs(mtime=TimeHow.SET_TO_CLIENT_TIME, mtime_ns=5), None),
        (OTHER, SetAttrs(mtime=TimeHow.SET_TO_SERVER_TIME), Access),  # needs w or ownership
        (Cred(3000, 300), SetAttrs(atime=TimeHow.SET_TO_SERVER_TIME), Access),
        (OTHER, SetAttrs(size=0), Access),
        (OWNER, SetAttrs(size=0), None),
    ],
)
def test_setattr_rules(cred, sattr, error):
    f = node(0o644)
    if error is None:
        perms.check_setattr(cred, f, sattr)
    else:
        with pytest.raises(error):
            perms.check_setattr(cred, f, sattr)


def test_touch_with_write_permission_is_allowed():
    perms.check_setattr(OTHER, node(0o666), SetAttrs(mtime=TimeHow.SET_TO_SERVER_TIME))


def test_truncating_a_directory_is_isdir():
    with pytest.raises(IsDir):
        perms.check_setattr(ROOT, node(0o755, FileType.DIR), SetAttrs(size=0))


def test_chmod_drops_setgid_outside_callers_groups():
    f = node(0o644, gid=999)
    assert perms.chmod_mode(OWNER, f, 0o2755) == 0o755
    assert perms.chmod_mode(ROOT, f, 0o2755) == 0o2755
    assert perms.chmod_mode(OWNER, node(0o644), 0o2755) == 0o2755


def test_chown_clears_setuid_and_group_exec_setgid():
    assert perms.chown_clears(node(0o6755), 0o6755) == 0o755
    assert perms.chown_clears(node(0o6745), 0o6745) == 0o2745  # setgid without g+x stays
    assert perms.chown_clears(node(0o6755, FileType.DIR), 0o6755) == 0o6755


def test_write_by_non_root_clears_setuid():
    assert perms.write_clears_suid(OWNER, node(0o4755))
    assert not perms.write_clears_suid(ROOT, node(0o4755))
    assert not perms.write_clears_suid(OWNER, node(0o755))
