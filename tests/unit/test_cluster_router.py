"""server/cluster/router.py: a call to a group that does not answer ends at the router's
deadline, each try bounded by what is left of it (no cancel scope does it)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import trio

from server.cluster import protocol as p
from server.cluster.nodelist import NodeInfo, NodeList
from server.cluster.router import GroupRouter
from server.rpc.frames import RemoteError, RpcTimeout


def info(node_id: int, group: int) -> NodeInfo:
    return NodeInfo(node_id, group, f"127.0.0.1:{21000 + 3 * node_id}",
                    f"127.0.0.1:{20000 + 3 * node_id}")


class SilentPlane:
    """Every call waits out its timeout (a peer that never answers), or refuses at once."""

    config = SimpleNamespace(tls_cert_path=None)

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse
        self.timeouts: list[float] = []
        self.peers: dict[int, str] = {}

    def add_peer(self, node_id: int, url: str) -> None:
        self.peers[node_id] = url

    async def call(self, target: int, request: object, timeout_s: float) -> object:
        self.timeouts.append(timeout_s)
        if self.refuse:
            await trio.sleep(0)
            raise RemoteError(p.NOT_LEADER, "0")  # no leader known: the router pauses
        await trio.sleep(timeout_s)
        raise RpcTimeout("no reply")


@pytest.mark.parametrize("refuse", [False, True])
async def test_a_group_that_does_not_answer_is_unavailable_at_the_deadline(
        refuse, autojump_clock):
    plane = SilentPlane(refuse)
    nodes = NodeList(1, (info(1, 1), info(2, 2), info(3, 2)))
    router = GroupRouter(plane, 1, nodes, None, vnodes=64, request_timeout_s=5.0,
                         try_timeout_s=2.0)  # type: ignore[arg-type]
    start = trio.current_time()
    with pytest.raises(p.Unavailable):
        await router.call(2, p.GetInodes(0, (5,)))
    took = trio.current_time() - start
    assert 5.0 <= took <= 5.0 + 1e-6
    assert plane.timeouts and max(plane.timeouts) <= 2.0
    if not refuse:  # tries of 2 s, 2 s, then what was left (less the 20 ms pauses)
        assert plane.timeouts[:2] == [2.0, 2.0] and 0.9 < plane.timeouts[2] < 1.0
    assert router.stats["unavailable"] == 1
