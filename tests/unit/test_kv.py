"""storage/kv.py: the LevelDB adapter, against a real LevelDB in tmp_path."""

import pytest
import trio

from storage.kv import KvConfig, KvError, KvStore, prefix_end


@pytest.fixture
async def kv(tmp_path):
    store = await KvStore.open(tmp_path / "db", KvConfig(threads=2, max_scan_items=1000))
    yield store
    await store.close()


async def test_get_put_delete_in_atomic_batches(kv):
    assert await kv.get(b"a") is None
    await kv.write([(b"a", b"1"), (b"b", b"2")], sync=True)
    assert await kv.get_many([b"a", b"b", b"c"]) == [b"1", b"2", None]
    await kv.write([(b"a", None), (b"c", b"3")], sync=False)
    assert await kv.get_many([b"a", b"b", b"c"]) == [None, b"2", b"3"]


async def test_iterate_prefix_range_limit_reverse(kv):
    await kv.write([(b"p%d" % i, b"%d" % i) for i in range(10)] + [(b"q0", b"x")], sync=False)
    rows = await kv.iterate(prefix=b"p")
    assert [k for k, _ in rows] == [b"p%d" % i for i in range(10)]
    assert [k for k, _ in await kv.iterate(prefix=b"p", start=b"p5", limit=2)] == [b"p5", b"p6"]
    assert [k for k, _ in await kv.iterate(start=b"p3", stop=b"p5")] == [b"p3", b"p4"]
    assert [k for k, _ in await kv.iterate(prefix=b"p", reverse=True, limit=1)] == [b"p9"]
    assert await kv.iterate(prefix=b"zz") == []


async def test_scan_limit_is_bounded_by_config(kv):
    with pytest.raises(AssertionError):
        await kv.iterate(prefix=b"p", limit=10_000)


def test_prefix_end():
    assert prefix_end(b"ab") == b"ac"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") is None


async def test_reopen_sees_synced_data_and_closed_store_refuses(tmp_path):
    kv = await KvStore.open(tmp_path / "db")
    await kv.write([(b"k", b"v")], sync=True)
    await kv.close()
    with pytest.raises(KvError):
        kv.get_sync(b"k")
    kv = await KvStore.open(tmp_path / "db")
    assert await kv.get(b"k") == b"v"
    with pytest.raises(KvError):  # LevelDB allows one handle per database
        await KvStore.open(tmp_path / "db")
    await kv.close()


async def test_concurrent_calls_share_a_bounded_pool(kv):
    async with trio.open_nursery() as n:
        for i in range(50):
            n.start_soon(lambda i=i: kv.write([(b"c%03d" % i, b"x")], sync=False))
    assert len(await kv.iterate(prefix=b"c")) == 50


async def test_inline_when_idle_runs_on_the_loop_thread_only_when_nothing_else_could_run(kv):
    import threading

    threads: list[int] = []
    real = kv.write_sync

    def spy(batch, *, sync):
        threads.append(threading.get_ident())
        real(batch, sync=sync)

    kv.write_sync = spy
    loop_thread = threading.get_ident()
    await kv.write([(b"a", b"1")], sync=True, inline_when_idle=True)
    await kv.write([(b"b", b"2")], sync=True)  # not asked: always a worker thread
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep, 0)  # a runnable task: the loop is not idle
        await kv.write([(b"c", b"3")], sync=True, inline_when_idle=True)
    assert threads[0] == loop_thread
    assert threads[1] != loop_thread and threads[2] != loop_thread
    assert await kv.get_many([b"a", b"b", b"c"], inline_when_idle=True) == [b"1", b"2", b"3"]


async def test_a_snapshot_shows_the_store_as_it_was_until_closed(kv):
    await kv.write([(b"p1", b"old"), (b"p2", b"x")], sync=False)
    view = kv.snapshot_sync()
    await kv.write([(b"p1", b"new"), (b"p2", None), (b"p3", b"y")], sync=False)
    assert view.iterate_sync(prefix=b"p") == [(b"p1", b"old"), (b"p2", b"x")]
    assert view.iterate_sync(start=b"p2", limit=5) == [(b"p2", b"x")]
    assert await kv.iterate(prefix=b"p") == [(b"p1", b"new"), (b"p3", b"y")]
    view.close()
    with pytest.raises(KvError, match="closed"):
        view.iterate_sync(prefix=b"p")
