"""The data directory freshness check (server/cluster/freshness.py): durability counters
advanced on disk before they are reported, peers' records never lowered, a report below the
record refused and counted, a start-up check that stops on a stale answer and goes on after
its wait when peers are silent. Real LevelDBs; the plane is a table of peers' handlers."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from server.cluster.freshness import MINE, Freshness, Report, Seen, StaleDataDir
from server.cluster.nodelist import NodeInfo, NodeList
from server.cluster.statemachine import NODELIST
from server.rpc.codec import decode, encode
from server.rpc.frames import PeerUnavailable
from storage.kv import KvStore


class Plane:
    """call(peer, Report) answered by that peer's Freshness handler, through the codec; a
    peer not in the table is unreachable."""

    def __init__(self, me: int, peers: dict[int, Freshness]) -> None:
        self.me = me
        self.peers = peers

    async def call(self, peer_id: int, msg: Report, timeout_s: float) -> Seen:
        if peer_id not in self.peers:
            await trio.sleep(timeout_s)
            raise PeerUnavailable(f"node {peer_id}")
        reply = await self.peers[peer_id]._on_report(self.me, decode(encode(msg)))
        return decode(encode(reply))


async def _fresh(tmp_path: Path, node_id: int, name: str = "") -> Freshness:
    kv = await KvStore.open(tmp_path / (name or f"n{node_id}"))
    return await Freshness(kv, node_id).open()


async def test_the_counter_is_on_disk_before_it_is_reported(tmp_path: Path) -> None:
    f = await _fresh(tmp_path, 1)
    assert f.counter == 0
    await f.advance()
    await f.advance()
    assert await f.kv.get(MINE) == (2).to_bytes(8, "big")
    await f.kv.close()
    again = await _fresh(tmp_path, 1)
    assert again.counter == 2
    await again.kv.close()


async def test_a_peer_records_the_highest_report_and_refuses_a_lower_one(tmp_path: Path) -> None:
    peer = await _fresh(tmp_path, 2)
    assert await peer._on_report(1, Report(5)) == Seen(0, False)
    assert await peer._on_report(1, Report(7)) == Seen(5, False)
    assert await peer._on_report(1, Report(7)) == Seen(7, False)
    assert await peer._on_report(1, Report(6)) == Seen(7, True)  # an old copy of node 1
    assert await peer._on_report(3, Report(1)) == Seen(0, False)  # per node
    assert await peer._on_report(1, Report(8)) == Seen(7, False)  # the record is not lowered
    assert peer.stats["stale_refused"] == 1 and peer.stats["reports"] == 6
    await peer.kv.close()
    reopened = await _fresh(tmp_path, 2)  # the record survives a restart of the peer
    assert await reopened._on_report(1, Report(2)) == Seen(8, True)
    await reopened.kv.close()


async def test_a_node_that_left_may_return_with_a_new_data_directory(tmp_path: Path) -> None:
    # Regression (test_elastic: node 2 leaves, then joins again with an empty directory): a
    # record of a node id the applied NodeList no longer has is of an ended membership.
    peer = await _fresh(tmp_path, 1)
    one, two = (NodeInfo(n, n, f"127.0.0.1:{n}0", f"127.0.0.1:{n}1") for n in (1, 2))
    listed = NodeList(4, (one, two))
    await peer.kv.write([(NODELIST, listed.encode())], sync=True)
    assert await peer._on_report(2, Report(7)) == Seen(0, False)
    assert await peer._on_report(2, Report(2)) == Seen(7, True)  # still listed: refused
    after_leave = NodeList(5, (one,))
    await peer.kv.write([(NODELIST, after_leave.encode())], sync=True)
    assert await peer._on_report(2, Report(1)) == Seen(1, False)  # left: a new directory
    assert await peer._on_report(2, Report(2)) == Seen(1, False)  # and its record from now
    assert peer.stats["stale_refused"] == 1
    await peer.kv.close()


async def test_the_start_check_stops_a_node_on_an_old_data_directory(tmp_path: Path) -> None:
    peers = {2: await _fresh(tmp_path, 2), 3: await _fresh(tmp_path, 3)}
    node = await _fresh(tmp_path, 1)
    await node.check(Plane(1, peers), [2, 3], wait_s=5)  # a first start: nobody saw it
    for _ in range(3):
        await node.advance()
        for peer_id in peers:
            await node._report(Plane(1, peers), peer_id, [])
    old = await _fresh(tmp_path, 1, "copy")  # its data directory as it was: counter 1
    await old.kv.write([(MINE, (1).to_bytes(8, "big"))], sync=True)
    old = await old.open()
    with pytest.raises(StaleDataDir, match=r"older than what node \d saw: durability counter "
                                           r"1 < 3"):
        await old.check(Plane(1, peers), [2, 3], wait_s=5)
    await node.check(Plane(1, peers), [2, 3], wait_s=5)  # the real one passes


async def test_silent_peers_delay_the_start_check_but_do_not_stop_it(tmp_path: Path) -> None:
    peers = {2: await _fresh(tmp_path, 2)}
    node = await _fresh(tmp_path, 1)
    with trio.fail_after(10):
        t0 = trio.current_time()
        await node.check(Plane(1, peers), [2, 3], wait_s=1.0)  # node 3 never answers
        assert trio.current_time() - t0 >= 1.0


async def test_a_stale_answer_while_running_stops_the_node(tmp_path: Path) -> None:
    peer = await _fresh(tmp_path, 2)
    await peer._on_report(1, Report(50))  # what the real node 1 had reported
    node = await _fresh(tmp_path, 1)
    with pytest.raises(StaleDataDir), trio.fail_after(10):
        await node.run(Plane(1, {2: peer}), lambda: [2])
