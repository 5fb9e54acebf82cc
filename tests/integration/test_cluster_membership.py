"""server/cluster/membership.py: founders agree on the first NodeList over real RpcPlanes on
loopback, whatever order they start in."""

from __future__ import annotations

import pytest
import trio
from serverproc import free_port

from server.cluster.membership import BootstrapError, bootstrap_nodelist, peer_url, serve_hello
from server.cluster.nodelist import NodeInfo, NodeList
from server.rpc.plane import RpcConfig, RpcPlane

pytestmark = pytest.mark.integration
SECRET = b"cluster-secret-for-tests-0123456789"


class Founder:
    def __init__(self, node_id: int, group: int, port: int, nfs_port: int):
        self.plane = RpcPlane(RpcConfig(node_id=node_id, cluster_secret=SECRET, port=port))
        self.me = NodeInfo(node_id, group, f"127.0.0.1:{port}", f"127.0.0.1:{nfs_port}")
        self.result: NodeList | BaseException | None = None

    async def run(self, peers: dict[int, str], timeout_s: float, delay_s: float = 0.0) -> None:
        await trio.sleep(delay_s)  # a founder that starts late, not a wait for a condition
        async with trio.open_nursery() as nursery:
            await nursery.start(self.plane.run)
            try:
                self.result = await bootstrap_nodelist(self.plane, self.me, peers, timeout_s)
            except BootstrapError as e:
                self.result = e
            nursery.cancel_scope.cancel()


def founders(groups: list[int]) -> tuple[list[Founder], dict[int, str]]:
    base = free_port(count=2 * len(groups))
    out = [Founder(i + 1, g, base + 2 * i, base + 2 * i + 1) for i, g in enumerate(groups)]
    return out, {f.me.node_id: f.me.rpc for f in out}


async def test_three_founders_in_any_order_agree() -> None:
    nodes, peers = founders([1, 2, 3])
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            # Node 3 starts well after the others asked it; node 2 is given itself in peers.
            nursery.start_soon(nodes[0].run, {2: peers[2], 3: peers[3]}, 20)
            nursery.start_soon(nodes[1].run, peers, 20, 0.2)
            nursery.start_soon(nodes[2].run, {1: peers[1], 2: peers[2]}, 20, 0.8)
    lists = [n.result for n in nodes]
    assert all(isinstance(x, NodeList) for x in lists), lists
    assert lists[0] == lists[1] == lists[2]
    assert len({x.encode() for x in lists}) == 1  # type: ignore[union-attr]
    nl = lists[0]
    assert isinstance(nl, NodeList)
    assert nl.version == 1 and nl.nodes == tuple(n.me for n in nodes)
    assert nl.groups() == {1: (1,), 2: (2,), 3: (3,)}


async def test_one_group_of_three() -> None:
    nodes, peers = founders([7, 7, 7])
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i, n in enumerate(nodes):
                nursery.start_soon(n.run, peers, 20, 0.1 * (2 - i))
    assert {n.result for n in nodes} == {NodeList(1, tuple(n.me for n in nodes))}
    assert nodes[0].result.groups() == {7: (1, 2, 3)}  # type: ignore[union-attr]


async def test_a_single_founder_needs_nobody() -> None:
    (node,), peers = founders([1])
    with trio.fail_after(10):
        await node.run(peers, 5)
    assert node.result == NodeList(1, (node.me,))


async def test_a_missing_founder_is_named_after_the_timeout() -> None:
    nodes, peers = founders([1, 2, 3])
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(nodes[0].run, peers, 2.0)
            nursery.start_soon(nodes[1].run, peers, 2.0)  # node 3 never starts
    for n in nodes[:2]:
        assert isinstance(n.result, BootstrapError)
        assert "founding peers [3] did not answer within 2.0 s" in str(n.result)


async def test_founders_with_different_peer_lists_are_refused_at_once() -> None:
    nodes, peers = founders([1, 2, 3])
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(nodes[0].run, peers, 10)
            nursery.start_soon(nodes[1].run, {1: peers[1]}, 10)  # does not know node 3
            nursery.start_soon(nodes[2].run, peers, 10)
    assert isinstance(nodes[0].result, BootstrapError)
    assert "every founder needs the same cluster.peers" in str(nodes[0].result)


async def test_an_invalid_list_is_refused() -> None:
    nodes, peers = founders([1, 1])
    nodes[1].me = NodeInfo(2, 1, nodes[0].me.rpc, nodes[1].me.nfs)  # claims node 1's address
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            for n in nodes:
                nursery.start_soon(n.run, peers, 10)
    assert isinstance(nodes[0].result, BootstrapError)
    assert "share an RPC address" in str(nodes[0].result)


async def test_serve_hello_is_idempotent() -> None:
    plane = RpcPlane(RpcConfig(node_id=1, cluster_secret=SECRET))
    me = NodeInfo(1, 1, "127.0.0.1:1", "127.0.0.1:2")
    serve_hello(plane, me, (1, 2))
    serve_hello(plane, me, (2,))  # the same founders: this node is always one


def test_peer_urls() -> None:
    plane = RpcPlane(RpcConfig(node_id=1, cluster_secret=SECRET))
    assert peer_url(plane, "127.0.0.1:7001") == "ws://127.0.0.1:7001/"
    assert peer_url(plane, "::1:7001") == "ws://[::1]:7001/"  # str(Listen) of an IPv6 host
    assert peer_url(plane, "[::1]:7001") == "ws://[::1]:7001/"
    with pytest.raises(BootstrapError, match="expected HOST:PORT"):
        peer_url(plane, "nowhere")
