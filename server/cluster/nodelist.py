"""The node list: every node, its group and its addresses, and the ring version.

Rules:
- A NodeList is replicated state: a group stores `encode()` under its state-machine key and
  replaces it only by a membership transaction (a new NodeList with a higher version). Every
  node derives its Ring from it, so equal NodeLists mean equal placement.
- It is checked on construction, also when decoded from a peer or from disk: node ids unique
  and >= 1, 1 to MAX_GROUP_MEMBERS members per group, addresses HOST:PORT, RPC addresses
  distinct. Nodes are kept sorted by id, so one list has one encoding.
- The wire and disk form is the RPC codec's (tags "cl.node_info", "cl.node_list"); a changed
  field list needs a new version there.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.cluster.ring import Ring
from server.config import ConfigError, parse_listen
from server.rpc import codec
from server.rpc.codec import message

MAX_GROUP_MEMBERS = 5  # a group is 1 to 5 replicas (DESIGN.md)


@message("cl.node_info")
@dataclass(frozen=True, slots=True)
class NodeInfo:
    node_id: int
    group: int
    rpc: str  # HOST:PORT of the node's RPC plane
    nfs: str  # HOST:PORT of its NFS (and MOUNT) service

    def __post_init__(self) -> None:
        if self.node_id < 1:
            raise ValueError(f"node id {self.node_id}: node ids are >= 1")
        if self.group < 1:
            raise ValueError(f"node {self.node_id}: group {self.group}: group ids are >= 1")
        for what, addr in (("rpc", self.rpc), ("nfs", self.nfs)):
            try:
                if parse_listen(f"node {self.node_id} {what}", addr) is None:
                    raise ValueError(f"node {self.node_id}: {what} address cannot be 'off'")
            except ConfigError as e:
                raise ValueError(str(e)) from None


@message("cl.node_list")
@dataclass(frozen=True, slots=True)
class NodeList:
    version: int
    nodes: tuple[NodeInfo, ...]

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError(f"node list version {self.version}: versions are >= 1")
        nodes = tuple(sorted(self.nodes, key=lambda n: n.node_id))
        object.__setattr__(self, "nodes", nodes)  # canonical order: one list, one encoding
        _check(nodes)

    # -- storage -----------------------------------------------------------------------------

    def encode(self) -> bytes:
        return codec.encode(self)

    @staticmethod
    def decode(data: bytes) -> NodeList:
        """Raises codec.CodecError on bytes that are not a valid NodeList."""
        obj = codec.decode(data)
        if not isinstance(obj, NodeList):
            raise codec.CodecError(f"expected a NodeList, got {type(obj).__name__}")
        return obj

    # -- views -------------------------------------------------------------------------------

    def groups(self) -> dict[int, tuple[int, ...]]:
        """Group id -> its members' node ids, both sorted."""
        out: dict[int, list[int]] = {}
        for n in self.nodes:  # sorted by id, so each member list is sorted
            out.setdefault(n.group, []).append(n.node_id)
        return {g: tuple(out[g]) for g in sorted(out)}

    def members(self, group: int) -> tuple[int, ...]:
        """The node ids of `group`, sorted; () if there is no such group."""
        return tuple(n.node_id for n in self.nodes if n.group == group)

    def has(self, node_id: int) -> bool:
        return any(n.node_id == node_id for n in self.nodes)

    def node(self, node_id: int) -> NodeInfo:
        """Raises KeyError for a node not in the list."""
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(node_id)

    def ring(self, vnodes: int = 64) -> Ring:
        return Ring(self.groups(), self.version, vnodes)


def _check(nodes: tuple[NodeInfo, ...]) -> None:
    if not nodes:
        raise ValueError("a node list needs at least one node")
    ids = [n.node_id for n in nodes]
    if len(set(ids)) != len(ids):
        raise ValueError(f"node ids are not unique: {ids}")
    rpcs = [n.rpc for n in nodes]
    if len(set(rpcs)) != len(rpcs):
        raise ValueError(f"two nodes share an RPC address: {rpcs}")
    sizes: dict[int, int] = {}
    for n in nodes:
        sizes[n.group] = sizes.get(n.group, 0) + 1
    for group, size in sorted(sizes.items()):
        if size > MAX_GROUP_MEMBERS:
            raise ValueError(f"group {group} has {size} members; at most {MAX_GROUP_MEMBERS}")
