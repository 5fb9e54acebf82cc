"""A node joins the cluster at start-up (`objcache serve --join HOST:PORT`): it learns the
cluster from a member, then asks it for the ring change (or the replica change) that adds it.

Rules:
- A change refused for good (BAD_CHANGE) ends the start with JoinError; busy or unreachable
  members are asked again, with backoff, until the timeout.
- The node has joined when its own group installed a NodeList that names it.
"""

from __future__ import annotations

import logging

import trio

from server.cluster import protocol as p
from server.cluster.group import GroupRuntime
from server.cluster.nodelist import NodeInfo, NodeList
from server.cluster.ringmsgs import BAD_CHANGE, JoinRequest
from server.rpc.frames import ConnectionLost, PeerUnavailable, RemoteError, RpcTimeout
from server.rpc.plane import RpcPlane

log = logging.getLogger("objcache.ringchange")


async def learn_cluster(plane: RpcPlane, seed_url: str, timeout_s: float) -> tuple[int, NodeList]:
    """The node id at `seed_url` and the cluster's NodeList as it knows it (a joining node
    decides from it whether it founds a new group or joins one as a replica)."""
    with trio.move_on_after(timeout_s):
        while True:
            try:
                seed = await plane.identify(seed_url, 5.0)
                plane.add_peer(seed, seed_url)
                reply = await plane.call(seed, p.GetNodeList(), 10.0)
                return seed, NodeList.decode(reply.nodelist)
            except (RemoteError, PeerUnavailable, RpcTimeout, ConnectionLost) as e:
                log.info("joining through %s: %r; asking again", seed_url, e)
            await trio.sleep(1.0)
    raise JoinError(f"no member answered at {seed_url} in {timeout_s} s")


async def join_cluster(plane: RpcPlane, rt: GroupRuntime, me: NodeInfo, seed: int,
                       timeout_s: float) -> NodeList:
    """Start-up of a joining node (its group member runs, with no NodeList): ask node `seed`
    to add it until the change is made, then return the NodeList its group installed, the
    first that names this node. A change refused for good (BAD_CHANGE) raises JoinError;
    busy or unreachable members are asked again until `timeout_s`."""

    def joined_here() -> bool:
        raw = rt.sm.nodelist_bytes
        return raw is not None and NodeList.decode(raw).has(me.node_id)

    with trio.move_on_after(timeout_s):
        # A new group is ready for the change's steps once it leads itself; a replica waits
        # for its group's leader to add it.
        while rt.driver.node.raft.conf.voters == {me.node_id} and not rt.is_leader():
            await trio.sleep(0.01)
        backoff_s = 0.1
        while not joined_here():
            try:
                await plane.call(seed, JoinRequest(me), 900.0)
            except RemoteError as e:
                if e.code == BAD_CHANGE and "already" not in e.message:
                    raise JoinError(f"node {me.node_id} cannot join: {e.message}") from None
                log.info("node %d: join: %s; asking again", me.node_id, e)
            except (PeerUnavailable, RpcTimeout, ConnectionLost) as e:
                log.info("node %d: join through node %d: %r; asking again", me.node_id, seed, e)
            # The change installs our group's NodeList (or our own resolve loop learns it).
            with trio.move_on_after(backoff_s):
                while not joined_here():
                    await rt.ring_event.wait()
            backoff_s = min(backoff_s * 2, 5.0)
        assert rt.sm.nodelist_bytes is not None
        return NodeList.decode(rt.sm.nodelist_bytes)
    raise JoinError(f"node {me.node_id} did not join through node {seed} in {timeout_s} s")


class JoinError(Exception):
    """A node could not join the cluster (the node's start-up turns it into StartupError)."""
