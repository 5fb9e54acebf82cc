"""server/fs/dirindex.py: directories known in full answer misses without LevelDB."""

import pytest
from fs_helpers import ROOT, mkfile

from nfs_gateway.backend import NoEnt, SetAttrs
from server.fs.backend import LocalBackend
from server.fs.dirindex import CompleteDirs


def test_tracks_names_of_known_directories_only():
    c = CompleteDirs(max_names=10)
    assert c.has(1, b"a") is None and c.is_empty(1) is None
    c.created(1)
    assert c.has(1, b"a") is False and c.is_empty(1) is True
    c.linked(1, b"a")
    c.linked(2, b"x")  # unknown directory: ignored
    assert c.has(1, b"a") is True and c.is_empty(1) is False and not c.knows(2)
    c.unlinked(1, b"a")
    assert c.has(1, b"a") is False
    c.removed(1)
    assert not c.knows(1)


def test_bounded_by_total_names_forgetting_old_directories():
    c = CompleteDirs(max_names=3)
    c.created(1)
    c.linked(1, b"a")
    c.linked(1, b"b")
    c.created(2)
    c.linked(2, b"c")
    c.has(1, b"a")  # 1 is now the most recently used
    c.linked(2, b"d")  # 4 names: the least recently used directory goes
    assert not c.knows(2) and c.knows(1)


async def test_backend_lookups_in_new_and_restarted_directories(tmp_path):
    async with LocalBackend(tmp_path) as fs:
        root = await fs.export_root("/")
        d = (await fs.mkdir(ROOT, root, b"d", SetAttrs())).fid
        assert fs._meta.complete.knows(d.ino)
        await mkfile(fs, d, b"f")
        assert (await fs.lookup(ROOT, d, b"f")).attr.size == 0
        with pytest.raises(NoEnt):
            await fs.lookup(ROOT, d, b"g")
    async with LocalBackend(tmp_path) as fs:
        assert not fs._meta.complete.knows(d.ino)  # not known in full after a restart
        assert (await fs.lookup(ROOT, d, b"f")).fid.ino > d.ino
        await fs.remove(ROOT, d, b"f")
        await fs.rmdir(ROOT, root, b"d")  # emptiness from LevelDB, not from the index
