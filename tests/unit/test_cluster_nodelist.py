"""server/cluster/nodelist.py: the replicated node list, its codec and its checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.cluster.nodelist import NodeInfo, NodeList
from server.rpc import codec


def info(node_id: int, group: int) -> NodeInfo:
    return NodeInfo(node_id, group, f"127.0.0.1:{21000 + 3 * node_id}",
                    f"127.0.0.1:{20000 + 3 * node_id}")


@st.composite
def nodelists(draw: st.DrawFn) -> NodeList:
    ids = draw(st.lists(st.integers(1, 2**32), min_size=1, max_size=12, unique=True))
    groups = draw(st.lists(st.integers(1, 4), min_size=len(ids), max_size=len(ids)))
    # At most five members per group: the surplus becomes one-member groups of their own.
    seen: dict[int, int] = {}
    nodes = []
    for i, (node_id, g) in enumerate(zip(ids, groups, strict=True)):
        seen[g] = seen.get(g, 0) + 1
        group = g if seen[g] <= 5 else 100 + i
        nodes.append(NodeInfo(node_id, group, f"10.0.{i}.1:{1 + i}", f"[::1]:{2049 + i}"))
    return NodeList(draw(st.integers(1, 2**63)), tuple(nodes))


@given(nodelists())
def test_round_trip(nl: NodeList) -> None:
    assert NodeList.decode(nl.encode()) == nl
    assert codec.decode(codec.encode(nl)) == nl


def test_order_is_canonical() -> None:
    a = NodeList(1, (info(3, 1), info(1, 1), info(2, 2)))
    b = NodeList(1, (info(1, 1), info(2, 2), info(3, 1)))
    assert a == b and a.encode() == b.encode()
    assert [n.node_id for n in a.nodes] == [1, 2, 3]


def test_views() -> None:
    nl = NodeList(4, (info(5, 2), info(1, 1), info(3, 2), info(2, 1), info(4, 2)))
    assert nl.groups() == {1: (1, 2), 2: (3, 4, 5)}
    assert nl.members(2) == (3, 4, 5) and nl.members(9) == ()
    assert nl.node(3).rpc == "127.0.0.1:21009"
    with pytest.raises(KeyError):
        nl.node(9)
    ring = nl.ring(vnodes=32)
    assert ring.groups == (1, 2) and ring.version == 4 and ring.vnodes == 32


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: NodeList(1, ()), "at least one node"),
        (lambda: NodeList(0, (info(1, 1),)), "versions are >= 1"),
        (lambda: NodeList(1, (info(1, 1), info(1, 2))), "not unique"),
        (lambda: NodeList(1, tuple(info(i, 1) for i in range(1, 7))), "at most 5"),
        (lambda: NodeList(1, (info(1, 1), NodeInfo(2, 1, info(1, 1).rpc, "127.0.0.1:1"))),
         "share an RPC address"),
        (lambda: NodeInfo(0, 1, "127.0.0.1:1", "127.0.0.1:2"), "node ids are >= 1"),
        (lambda: NodeInfo(1, 0, "127.0.0.1:1", "127.0.0.1:2"), "group ids are >= 1"),
        (lambda: NodeInfo(1, 1, "127.0.0.1", "127.0.0.1:2"), "HOST:PORT"),
        (lambda: NodeInfo(1, 1, "127.0.0.1:1", "example.com:2"), "not an IP address"),
        (lambda: NodeInfo(1, 1, "off", "127.0.0.1:2"), "cannot be 'off'"),
    ],
)
def test_invalid_lists_are_refused(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_decode_refuses_garbage_and_invalid_lists() -> None:
    with pytest.raises(codec.CodecError):
        NodeList.decode(b"\xff\x00")
    with pytest.raises(codec.CodecError, match="expected a NodeList"):
        NodeList.decode(codec.encode(info(1, 1)))
    # A list whose bytes are well-formed CBOR but break the rules (two nodes with one id).
    good = NodeList(1, (info(1, 1), info(2, 1)))
    raw = codec.encode(good).replace(b"127.0.0.1:21006", b"127.0.0.1:21003")
    with pytest.raises(codec.CodecError, match="share an RPC address"):
        NodeList.decode(raw)
