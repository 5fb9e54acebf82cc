"""Bootstrap of a static cluster's first NodeList.

Every founding node knows its own NodeInfo and its peers' node ids and RPC addresses
(cluster.peers), but not their groups or NFS addresses. Each asks every peer `cl.hello` and
builds NodeList(version=1) from the answers and itself.

Rules:
- The list is a pure function of the founders' own NodeInfos, so every founder computes the
  same one (NodeList keeps its nodes sorted, hence one encoding).
- A founder answers `cl.hello` for as long as its plane runs, also after its own bootstrap
  and on a restart (a peer may still be asking): call serve_hello at every start.
- Peers start in any order: unanswered peers are asked again with capped, jittered backoff
  until the deadline; then BootstrapError names the ones that never answered.
- A peer that was given another set of founders, or answers as another node, is a
  configuration error: BootstrapError at once, not a retry.
"""

from __future__ import annotations

import logging
import random
import weakref
from dataclasses import dataclass

import trio

from server.cluster.nodelist import NodeInfo, NodeList
from server.config import ConfigError, parse_listen
from server.node import StartupError
from server.rpc.codec import message
from server.rpc.frames import ConnectionLost, PeerUnavailable, RemoteError, RpcTimeout
from server.rpc.plane import RpcPlane

log = logging.getLogger("objcache.membership")

TRY_TIMEOUT_S = 2.0  # one hello; a live peer answers at once
BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 1.0


@message("cl.hello")
@dataclass(frozen=True, slots=True)
class Hello:
    node_id: int  # the asking node


@message("cl.hello_reply")
@dataclass(frozen=True, slots=True)
class HelloReply:
    info: NodeInfo  # the answering node
    founders: tuple[int, ...]  # the node ids it was configured with (sorted, itself included)


class BootstrapError(StartupError):
    """The founders did not agree on a node list in time, or are configured inconsistently."""


_serving: weakref.WeakKeyDictionary[RpcPlane, tuple[NodeInfo, tuple[int, ...]]] = (
    weakref.WeakKeyDictionary())


def serve_hello(plane: RpcPlane, me: NodeInfo, founders: tuple[int, ...]) -> None:
    """Answer `cl.hello` on `plane` with `me`; idempotent for the same arguments."""
    founders = tuple(sorted(set(founders) | {me.node_id}))
    known = _serving.get(plane)
    if known is not None:
        assert known == (me, founders), f"plane already answers hello as {known}"
        return

    async def on_hello(peer_id: int, msg: Hello) -> HelloReply:
        if msg.node_id != peer_id:
            raise RemoteError("bad-hello", f"node {peer_id} asked as node {msg.node_id}")
        return HelloReply(me, founders)

    plane.register(Hello, on_hello)
    _serving[plane] = (me, founders)


async def bootstrap_nodelist(plane: RpcPlane, me: NodeInfo, peers: dict[int, str],
                             timeout_s: float) -> NodeList:
    """The founders' NodeList (version 1): ask every peer in `peers` (node id -> RPC
    HOST:PORT; this node may be among them) until all answered. Raises BootstrapError."""
    others = {i: addr for i, addr in peers.items() if i != me.node_id}
    founders = tuple(sorted({*others, me.node_id}))
    serve_hello(plane, me, founders)
    for peer_id, addr in others.items():
        plane.add_peer(peer_id, peer_url(plane, addr))  # a no-op if the peer is known
    infos: dict[int, NodeInfo] = {}
    rng = random.Random(me.node_id)
    try:
        with trio.move_on_after(timeout_s):
            async with trio.open_nursery() as nursery:
                for peer_id in others:
                    nursery.start_soon(_ask, plane, me.node_id, peer_id, founders, infos, rng)
    except* BootstrapError as group:  # one plain error, not trio's group of one
        raise group.exceptions[0] from None
    missing = sorted(set(others) - set(infos))
    if missing:
        raise BootstrapError(
            f"node {me.node_id}: founding peers {missing} did not answer within {timeout_s} s "
            f"(are they started, at {', '.join(others[i] for i in missing)}, with the same "
            f"cluster secret?)")
    try:
        nodelist = NodeList(1, (me, *infos.values()))
    except ValueError as e:
        raise BootstrapError(f"the founders' node list is not valid: {e}") from None
    log.info("node %d: node list agreed: %s", me.node_id, nodelist.groups())
    return nodelist


def peer_url(plane: RpcPlane, addr: str) -> str:
    """The plane URL of a peer at HOST:PORT (ws, or wss when the plane uses TLS)."""
    try:
        listen = parse_listen(f"peer address {addr!r}", addr)
    except ConfigError as e:
        raise BootstrapError(str(e)) from None
    if listen is None:
        raise BootstrapError(f"peer address {addr!r}: expected HOST:PORT")
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    return f"{'wss' if plane.config.tls_cert_path else 'ws'}://{host}:{listen.port}/"


async def _ask(plane: RpcPlane, my_id: int, peer_id: int, founders: tuple[int, ...],
               infos: dict[int, NodeInfo], rng: random.Random) -> None:
    backoff_s = BACKOFF_INITIAL_S
    while True:
        try:
            reply = await plane.call(peer_id, Hello(my_id), TRY_TIMEOUT_S)
            break
        except (PeerUnavailable, RpcTimeout, ConnectionLost, RemoteError) as e:
            # RemoteError: typically "no_handler" (the peer's plane runs, its bootstrap not yet).
            log.debug("node %d: hello to node %d: %r; asking again", my_id, peer_id, e)
        await trio.sleep(rng.uniform(backoff_s / 2, backoff_s))
        backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
    _check_reply(peer_id, founders, reply)
    infos[peer_id] = reply.info


def _check_reply(peer_id: int, founders: tuple[int, ...], reply: object) -> None:
    if not isinstance(reply, HelloReply):
        raise BootstrapError(f"node {peer_id} answered hello with {type(reply).__name__}")
    if reply.info.node_id != peer_id:
        raise BootstrapError(f"node {peer_id}'s address answers as node {reply.info.node_id}")
    if reply.founders != founders:
        raise BootstrapError(
            f"node {peer_id} was configured with founders {list(reply.founders)}, this node "
            f"with {list(founders)}: every founder needs the same cluster.peers")
