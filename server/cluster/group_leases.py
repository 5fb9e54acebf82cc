"""The lease side of GroupRuntime (group.py): the leader grants leases on its inodes to other
nodes' gateways and takes them back before it changes them (leases.py has the rules of both
sides' tables).

    gateway ──GetInodes/Lookup/ReadHead(lease)──▶ leader   grant: reply.lease_s
    leader, before proposing a change to inodes I:  begin_change(I)
        ──Revoke(change, I)──▶ each holder          it drops what it holds of I
        ◀──RevokeAck(change)──                      or its lease runs out (wait_until)
        propose; applied                            end_change(I)

Rules:
- A grant is made in the same step as the read it covers (no wait between them: a change
  could apply meanwhile): GetInodes and Lookup are read on the event loop; a ReadHead only
  when answered there too (GroupReads.read_now).
- Grants only on this node's group, as its ready leader, to another node that asked, outside
  a ring change, and only while the lease horizon (statemachine.py) covers the lease's whole
  record: a horizon too close is moved on (a log entry, HORIZON_S ahead) and this reply goes
  without a lease. A new leader whose group's horizon is still ahead waits out one lease
  before its first change (a predecessor may have leases out that it cannot name); one whose
  group never leased (or long ago) does not wait.
- The changes: the Propose actions of the txn cores (GroupTxn._do) whose records change
  inodes — TxnLocal, TxnPrepare (the TxnFinish after it applies under the prepare's locks,
  which refuse reads meanwhile), a committing TxnDecision's own ops. Their locks
  (Application.locks_of) are the inodes changed.
- Revoke and RevokeAck are one-way: a change may come from a transaction of the holder
  itself, whose gateway waits for it; a RevokeAck names the change it answers, and one for
  a change no longer waiting is ignored.
- A step of a ring change applied here starts a quiet period: inodes it brought may have
  been leased by their old group (which stops granting on them once it exported them).
  A NodeList alone moves no state (the group's first one, at bootstrap, included).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from typing import TYPE_CHECKING, Any

import trio

from raft.driver import ProposalOutcomeUnknown
from raft.errors import RaftError
from server.cluster import protocol as p
from server.cluster.leases import LeaseTable, record_s
from server.cluster.statemachine import encode_lease_entry
from server.fs.record_codec import decode as decode_value
from txn.records import TxnDecision, TxnLocal, TxnPrepare, TxnRecord

if TYPE_CHECKING:
    from server.cluster.group import GroupRuntime

    _Base = GroupRuntime
else:
    _Base = object

log = logging.getLogger("objcache.group")

HORIZON_S = 60.0  # how far ahead a lease horizon entry is set (one log entry per this)
LEASE_LIMIT = 100_000  # inodes with leases out, at most (leases.py LeaseTable.limit)


def idle_table(lease_s: float) -> LeaseTable:
    """A table with no quiet period: nothing was leased before it."""
    return LeaseTable(lease_s, started=trio.current_time() - record_s(lease_s), limit=LEASE_LIMIT)


class GroupLeases(_Base):
    def _init_leases(self) -> None:
        self.leases = idle_table(self.config.lease_s)  # granting waits for leadership anyway
        self._revoking: dict[int, tuple[set[int], trio.Event]] = {}  # change -> nodes to ack
        self._change_ids = itertools.count(1)
        self._extending = False  # a lease horizon entry is being proposed
        self.lease_stats = {"granted": 0, "revokes_sent": 0, "revokes_acked": 0,
                            "changes_waited": 0}
        self.plane.register(p.RevokeAck, self._on_revoke_ack)

    # -- granting ---------------------------------------------------------------------------

    def _lease_reply(self, peer: int, request: Any, reply: Any) -> Any:
        """`reply` to another node's GetInodes or Lookup, with a lease when one may be granted
        (module rules)."""
        if not (request.lease and self.config.lease_s > 0 and peer != self.node_id
                and self._serving() and self.sm.freeze is None and self._horizon_covers()):
            return reply
        if isinstance(request, p.GetInodes):
            inos = list(request.inos)
        elif isinstance(request, p.ReadHead):
            if not reply.inode:
                return reply
            inos = [request.ino]
        elif not reply.dir:
            return reply
        else:
            inos = [request.dir_ino]
            if reply.child:
                inos.append(decode_value(reply.child).ino)
        lease = self.leases.grant(peer, inos, trio.current_time())
        if lease is None:
            return reply
        self.lease_stats["granted"] += 1
        return dataclasses.replace(reply, lease_s=lease)

    def _horizon_covers(self) -> bool:
        """The applied horizon lasts past a lease granted now; if it will not for long, a new
        one is proposed (this reply then goes without a lease if it does not cover it)."""
        lease_ns = int(record_s(self.config.lease_s) * 1e9)
        now = time.time_ns()
        left = self.sm.lease_horizon_ns - now
        if left < HORIZON_S * 1e9 / 2 and not self._extending:
            self._extending = True
            self._spawn(self._extend_horizon, now + int(HORIZON_S * 1e9))
        return left > lease_ns

    async def _extend_horizon(self, horizon_ns: int) -> None:
        try:
            await self.driver.propose(encode_lease_entry(horizon_ns))
        except (RaftError, ProposalOutcomeUnknown) as e:
            log.debug("group %d: lease horizon not proposed: %s", self.group, e)
        finally:
            self._extending = False

    def _leases_at_leadership(self) -> None:
        """This node's cores became ready as leader: a fresh table, quiet if the group's
        horizon is still ahead (module rules)."""
        self.leases = idle_table(self.config.lease_s)
        if self.sm.lease_horizon_ns > time.time_ns():
            self.leases.quiet_from(trio.current_time())

    def _leases_after_ring_change(self) -> None:
        self.leases.quiet_from(trio.current_time())

    # -- changing ---------------------------------------------------------------------------

    def _changed_inos(self, record: TxnRecord) -> tuple[int, ...]:
        if isinstance(record, TxnPrepare):
            return record.locks
        if isinstance(record, TxnLocal) or (isinstance(record, TxnDecision) and record.commit
                                            and record.ops):
            return self.sm.app.locks_of(record.ops)
        return ()

    async def _propose_change(self, record: TxnRecord, data: bytes) -> None:
        """Propose a txn record once no node may still answer from a lease on what it
        changes (module rules); no lease on those inodes is granted until it applied."""
        inos = self._changed_inos(record)
        if not inos:
            await self._propose(data)
            return
        now = trio.current_time()
        table = self.leases  # a new term's table (_leases_at_leadership) knows nothing of this
        until, revoke = table.begin_change(inos, now)
        try:
            if until > now:
                await self._take_back(table, until, revoke)
                if self.leases is not table:  # another term began meanwhile, whose table may
                    return  # have granted on these: dropped, as a leadership change drops
                    # proposals (the cores or the gateway try again)
            await self._propose(data)
        finally:
            table.end_change(inos, trio.current_time())

    async def _take_back(self, table: LeaseTable, until: float,
                         revoke: dict[int, list[int]]) -> None:
        """Send the Revokes and wait for their acks (and any quiet period), at most until
        `until`, when every lease on the inodes has run out anyway."""
        self.lease_stats["changes_waited"] += 1
        change = next(self._change_ids)
        pending = set(revoke)  # a holder the plane cannot reach now never acks: its lease ends
        done = trio.Event()
        self._revoking[change] = (pending, done)
        for node, inos in revoke.items():
            self.lease_stats["revokes_sent"] += self.plane.send(
                node, p.Revoke(self.group, change, tuple(inos)))
        try:
            with trio.move_on_at(until):
                if pending:
                    await done.wait()
                await trio.sleep_until(table.quiet_until())
        finally:
            del self._revoking[change]
        for node, inos in revoke.items():
            if node not in pending:
                for ino in inos:
                    table.release(ino, node)

    async def _on_revoke_ack(self, peer: int, ack: p.RevokeAck) -> None:
        waiting = self._revoking.get(ack.change)
        if waiting is None or ack.group != self.group:
            return  # a change that stopped waiting (its leases ran out), or a stray
        pending, done = waiting
        if peer in pending:
            pending.discard(peer)
            self.lease_stats["revokes_acked"] += 1
            if not pending:
                done.set()
