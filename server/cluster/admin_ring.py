"""`objcache admin join` and `leave`: ring changes (ringchange.py) an admin starts.

join: a node started with `--await-join` (cluster.await_join) is told to join through the
member given with --node (joinorder.py); it becomes a new group, or a replica of its
cluster.group, exactly as a node started with `--join`. leave: the node given with --node
takes the request to the change's coordinator; the leaving group writes back what it can,
hands the rest of its state to the groups that own it under the new ring, and its node stops.
Exit codes as admin.py: 0 done, 1 the cluster refused the change (the message says why), 2 the
cluster could not be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import trio

from server.cluster.nodelist import NodeList
from server.rpc.frames import RemoteError
from server.rpc.plane import RpcPlane

CHANGE_TIMEOUT_S = 900.0  # a leave writes back and moves a group's state


def add_parsers(admin_sub: argparse._SubParsersAction,
                command: Callable[..., argparse.ArgumentParser]) -> None:
    lv = command(admin_sub, "leave", "take a node out of the cluster: a replica leaves its "
                 "group; a one-member group writes back, hands its state to the others")
    lv.add_argument("leaving", type=int, metavar="NODE_ID", help="the node that leaves")
    jn = command(admin_sub, "join", "add a node started with --await-join: a new group, or a "
                 "replica of its cluster.group", node="a member it joins through")
    jn.add_argument("joining", metavar="ID=HOST:PORT",
                    help="the waiting node's id and RPC address")


async def join(make_plane: Callable[[int, str], RpcPlane], through: str,
               args: argparse.Namespace) -> int:
    """Tell the waiting node `args.joining` to join through the member at `through`; wait for
    the outcome (joinorder.py)."""
    from server.cluster.joinorder import JoinDone, JoinOrder
    from server.rpc.connection import NO_HANDLER

    node_s, _, addr = args.joining.partition("=")
    if not node_s.isdigit() or not addr:
        print(f"objcache admin join: expected ID=HOST:PORT, got {args.joining!r}",
              file=sys.stderr)
        return 2
    joining = int(node_s)
    if not args.json:
        print(f"node {joining}: joining through {through} (taking over its share of the "
              "namespace)...", flush=True)

    def refused(e: RemoteError) -> str:
        return (f"node {joining} is not waiting to join (start it with --await-join)"
                if e.code == NO_HANDLER else e.message)

    reply = await _change(make_plane(joining, addr), joining, JoinOrder(through), refused,
                          "join")
    if reply is None:
        return 1
    assert isinstance(reply, JoinDone), reply
    nodelist = NodeList.decode(reply.nodelist)
    group = next(n.group for n in nodelist.nodes if n.node_id == joining)
    if args.json:
        print(json.dumps({"ok": True, "joined": joining, "group": group,
                          "ring_version": nodelist.version,
                          "groups": sorted(nodelist.groups()), "seconds": reply.seconds}))
    else:
        print(f"node {joining} joined group {group}: ring version {nodelist.version}, groups "
              f"{sorted(nodelist.groups())}, in {reply.seconds:.2f} s")
    return 0


async def leave(plane: RpcPlane, node_id: int, args: argparse.Namespace) -> int:
    # Imported here: the ring-change machinery is most of a node; other admin commands (and
    # their start-up time) do without it.
    from server.cluster.ringmsgs import BAD_CHANGE, RING_BUSY, ChangeReply, LeaveRequest

    if not args.json:
        print(f"node {args.leaving}: leaving (writing back, then moving its state)...",
              flush=True)
    reply = await _change(plane, node_id, LeaveRequest(args.leaving),
                          lambda e: e.message if e.code in (BAD_CHANGE, RING_BUSY) else None,
                          "leave")
    if reply is None:
        return 1
    assert isinstance(reply, ChangeReply), reply
    nodelist = NodeList.decode(reply.nodelist)
    if args.json:
        print(json.dumps({"ok": True, "left": args.leaving, "ring_version": nodelist.version,
                          "groups": sorted(nodelist.groups()),
                          "moved_bytes": reply.moved_bytes, "seconds": reply.seconds}))
    else:
        print(f"node {args.leaving} left: ring version {nodelist.version}, groups "
              f"{sorted(nodelist.groups())}, {reply.moved_bytes} bytes moved in "
              f"{reply.seconds:.2f} s")
    return 0


async def _change(plane: RpcPlane, node: int, request: object,
                  refused: Callable[[RemoteError], str | None], command: str) -> Any:
    """Ask `node` for a ring change on an admin plane of its own and wait for the reply; None
    once a refusal (what `refused` turns into a message; None: not a refusal) was printed."""
    async with trio.open_nursery() as nursery:
        await nursery.start(plane.run)
        try:
            return await plane.call(node, request, CHANGE_TIMEOUT_S)
        except RemoteError as e:
            why = refused(e)
            if why is None:
                raise
            print(f"objcache admin {command}: {why}", file=sys.stderr)
            return None
        finally:
            nursery.cancel_scope.cancel()
