"""server/cluster/state_scan.py: ScanState pages that show one moment of a group's state,
against a real LevelDB in tmp_path while writes land between the pages."""

import pytest
import trio

from server.cluster import protocol as p
from server.cluster import state_scan
from server.cluster.state_scan import IDLE_S, MAX_OPEN, StateScans
from server.rpc.frames import RemoteError
from storage.kv import KvStore


def fs_key(i: int) -> bytes:
    return b"fs.k%05d" % i


@pytest.fixture
async def kv(tmp_path):
    store = await KvStore.open(tmp_path / "db")
    await store.write([(fs_key(i), b"v0") for i in range(0, 100, 2)]
                      + [(b"txn/lock/a", b"l"), (b"zz/other", b"not scanned")], sync=False)
    yield store
    await store.close()


async def test_every_page_shows_the_moment_the_first_one_was_read(kv):
    scans = StateScans(kv)
    first = await scans.page(p.ScanState(0, b"", 10))
    assert first.scan_id and first.next_start == fs_key(18) + b"\x00"
    # Between pages: a key in a page already read and one in a page still to come appear, one
    # to come goes away, one changes. The scan sees none of it.
    await kv.write([(fs_key(1), b"new"), (fs_key(51), b"new"), (fs_key(60), None),
                    (fs_key(70), b"v1")], sync=False)
    items = list(first.items)
    req = p.ScanState(0, first.next_start, 10, first.scan_id)
    while True:
        reply = await scans.page(req)
        items += reply.items
        if not reply.next_start:
            assert reply.scan_id == 0
            break
        req = p.ScanState(0, reply.next_start, 10, reply.scan_id)
    assert items == [(fs_key(i), b"v0") for i in range(0, 100, 2)] + [(b"txn/lock/a", b"l")]
    with pytest.raises(RemoteError) as e:  # the last page closed the scan
        await scans.page(req)
    assert e.value.code == p.SCAN_EXPIRED
    fresh = await state_scan.scan(scans.page, page=7)  # a new scan sees the writes
    assert (fs_key(51), b"new") in fresh and (fs_key(70), b"v1") in fresh
    assert all(k != fs_key(60) for k, _ in fresh)


async def test_a_scan_stops_where_asked(kv):
    scans = StateScans(kv)
    rows = await state_scan.scan(scans.page, start=fs_key(10), stop=fs_key(20), page=2)
    assert [k for k, _ in rows] == [fs_key(i) for i in range(10, 20, 2)]
    assert not scans._open  # the last page released its snapshot


async def test_idle_or_crowded_out_scans_are_dropped_and_the_caller_starts_over(
        kv, autojump_clock):
    scans = StateScans(kv)
    idle = await scans.page(p.ScanState(0, b"", 5))
    await trio.sleep(IDLE_S + 1)
    with pytest.raises(RemoteError) as e:
        await scans.page(p.ScanState(0, idle.next_start, 5, idle.scan_id))
    assert e.value.code == p.SCAN_EXPIRED
    crowd = [await scans.page(p.ScanState(0, b"", 5)) for _ in range(MAX_OPEN)]
    for scan in crowd:  # a full table still serves the scans it holds, each one page on
        assert (await scans.page(p.ScanState(0, scan.next_start, 5, scan.scan_id))).items
    assert len(scans._open) == MAX_OPEN
    crowd.append(await scans.page(p.ScanState(0, b"", 5)))
    assert len(scans._open) == MAX_OPEN
    with pytest.raises(RemoteError) as e:  # the oldest made room for the newest
        await scans.page(p.ScanState(0, crowd[0].next_start, 5, crowd[0].scan_id))
    assert e.value.code == p.SCAN_EXPIRED
    assert (await scans.page(p.ScanState(0, crowd[-1].next_start, 5, crowd[-1].scan_id))).items

    # A caller whose scan is dropped mid-way (here: a leader change, every scan closed) gets
    # a whole scan of a later moment, not pages of two.
    pages = 0

    async def call(req: p.ScanState) -> p.ScanStateReply:
        nonlocal pages
        pages += 1
        if pages == 3:
            scans.close()
            await kv.write([(fs_key(3), b"late")], sync=False)
        return await scans.page(req)

    rows = await state_scan.scan(call, page=10)
    assert rows == sorted(rows) and (fs_key(3), b"late") in rows and len(rows) == 52
    scans.close()
    assert not scans._open
