"""The transaction side of GroupRuntime (group.py): the txn cores' wiring and leadership.

Rules:
- The leader serves RunTxn through the txn Coordinator core, and the txn messages of other
  groups through the Coordinator and Participant cores (txn/__init__.py explains the wiring; it
  is followed here step by step). A member that is not the leader answers NOT_LEADER with the
  leader it knows.
- The cores hear about every applied txn record (LogApplied) only while they are "ready": from
  the moment they got BecameLeader, built from a scan of the state made after a read barrier
  (so everything earlier terms committed is applied). Applying and that scan exclude each other
  (`_apply_lock`), so no result falls between the scan and the first LogApplied.
- Proposals asked for by the cores are fire-and-forget: a lost one is retried by the cores on
  their ticks; a result always comes back through the apply path.
- A new leader of a founding group proposes the first NodeList if the state has none, and the
  leader of inode 1's group creates the root directory if it is missing; both are idempotent.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio
from prometheus_client import Counter

from raft.driver import ProposalOutcomeUnknown
from raft.errors import RaftError
from server.cluster import protocol as p
from server.cluster.nodelist import NodeList
from server.cluster.statemachine import StateView, encode_nodelist_entry, encode_txn_entry
from server.fs import keys as fs_keys
from server.rpc import codec
from server.rpc.frames import RemoteError
from txn import coordinator as co
from txn import participant as pa
from txn.actions import Action, LogApplied, LostLeadership, Propose, Reply, Send, Tick
from txn.ids import txn_id
from txn.messages import (
    ALL_MESSAGE_TYPES,
    DecisionNotice,
    FinishAck,
    OutcomeAnswer,
    PrepareRequest,
    PrepareVote,
    TxnMessage,
)
from txn.records import Outcome, TxnLocal
from txn.state import Applied, Decided, LocalApplied

if TYPE_CHECKING:
    from server.cluster.group import GroupRuntime

    _Base = GroupRuntime
else:
    _Base = object

log = logging.getLogger("objcache.group")

# Decided here as coordinator: "local" (one TxnLocal record) or "two_phase" (prepare/decide).
TXN_TOTAL = Counter("objcache_txn_total", "Transactions decided by this node as coordinator",
                    ["kind", "outcome"])

ROOT_INO = 1
_ROOT_TXN = txn_id(b"objcache-root", 0)


def register_txn_messages() -> None:
    """Codec tags for the txn messages groups send each other (txn/messages.py)."""
    for cls in ALL_MESSAGE_TYPES:
        codec.register_type(cls, f"txn.{cls.__name__}", 1)


class GroupTxn(_Base):
    # -- transactions -----------------------------------------------------------------------

    async def _run_txn(self, req: p.RunTxn) -> p.TxnReply:
        if self.admit is not None and not req.retry:
            self.admit(sum(len(ops) for _, ops in req.parts))  # may refuse: cache full
        # Only a retry can have an outcome already; for a first attempt the lookup would cost a
        # thread round trip for nothing (and a wrong "first attempt" flag is still safe: the
        # records' apply answers a decided txn with its remembered outcome).
        known = await trio.to_thread.run_sync(
            self.sm.txn.outcome, StateView(self.kv), req.txn_id) if req.retry else None
        done, box = trio.Event(), []
        self._txn_waiters.setdefault(req.txn_id, []).append((done, box))
        try:
            self._do(self.coordinator.handle(co.Start(req.txn_id, req.parts, known)))
            with trio.move_on_after(self.config.txn_reply_timeout_s):
                await done.wait()
        finally:
            waiters = self._txn_waiters.get(req.txn_id, [])
            if (done, box) in waiters:
                waiters.remove((done, box))
                if not waiters:
                    del self._txn_waiters[req.txn_id]
        outcome = box[0] if box else None
        if outcome is None:
            return p.TxnReply(False, False, "")
        return p.TxnReply(True, outcome.commit, outcome.reason)

    async def _on_txn_envelope(self, peer: int, env: p.TxnEnvelope) -> p.Ack:
        self._check_version(env.ring_version)
        return await self.take_txn_message(peer, env.message)

    async def take_txn_message(self, peer: int, msg: TxnMessage) -> p.Ack:
        if not self._ready_term or not self.is_leader():
            raise RemoteError(p.NOT_LEADER, str(self.leader_id()))
        self.deliver(msg)
        return p.Ack()

    def deliver(self, msg: TxnMessage) -> None:
        """A txn message from another group, to the core that takes it."""
        if isinstance(msg, PrepareRequest):
            actions = self.participant.handle(pa.PrepareReceived(msg))
        elif isinstance(msg, DecisionNotice | OutcomeAnswer):
            actions = self.participant.handle(pa.DecisionReceived(msg))
        elif isinstance(msg, PrepareVote):
            actions = self.coordinator.handle(co.VoteReceived(msg))
        elif isinstance(msg, FinishAck):
            actions = self.coordinator.handle(co.AckReceived(msg))
        else:
            actions = self.coordinator.handle(co.QueryReceived(msg))
        self._do(actions)

    # -- the cores' actions -----------------------------------------------------------------

    def _do(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Propose):  # after the leases on what it changes (group_leases.py)
                self._spawn(self._propose_change, a.record, encode_txn_entry(a.record))
            elif isinstance(a, Send):
                if a.group == self.group:
                    self.deliver(a.message)
                else:
                    self._post(a.group, a.message)
            elif isinstance(a, Reply):
                for done, box in self._txn_waiters.get(a.txn_id, []):
                    box.append(a.outcome)
                    done.set()

    async def _propose(self, data: bytes) -> None:
        try:
            await self.driver.propose(data)
        except (RaftError, ProposalOutcomeUnknown) as e:
            # The cores retry on their ticks; the result of one that did apply comes back
            # through the apply path anyway.
            log.debug("group %d: proposal lost: %s", self.group, e)

    def _feed(self, result: Applied) -> None:
        if isinstance(result, LocalApplied):
            TXN_TOTAL.labels("local", _label(result.outcome)).inc()
        elif isinstance(result, Decided) and result.participants:
            TXN_TOTAL.labels("two_phase", _label(result.outcome)).inc()
        event = LogApplied(result)
        self._do(self.coordinator.handle(event))
        self._do(self.participant.handle(event))

    # -- leadership -------------------------------------------------------------------------

    async def _txn_ticker(self) -> None:
        while True:
            await trio.sleep(self.config.txn_tick_interval_s)
            term = self.driver.node.raft.term
            if self._ready_term and (not self.is_leader() or term != self._ready_term):
                self._lose_leadership()
            if self.is_leader() and not self._ready_term and not self._becoming:
                self._becoming = True
                self._spawn(self._become_leader, term)
            if self._ready_term:
                self._do(self.coordinator.handle(Tick()))
                self._do(self.participant.handle(Tick()))

    async def _become_leader(self, term: int) -> None:
        try:
            await self.driver.read_index()  # everything earlier terms committed is applied
            async with self._apply_lock:
                if not self.is_leader() or self.driver.node.raft.term != term:
                    return
                view = StateView(self.kv)
                decisions, prepared = await trio.to_thread.run_sync(
                    lambda: (self.sm.txn.decisions(view), self.sm.txn.prepared(view)))
                self._ready_term = term
                self._leases_at_leadership()
                self._do(self.coordinator.handle(co.BecameLeader(tuple(decisions))))
                self._do(self.participant.handle(pa.BecameLeader(tuple(prepared))))
            self._ready_event.set()
            self._ready_event = trio.Event()
            log.info("group %d: node %d leads in term %d (%d decisions, %d prepared to resume)",
                     self.group, self.node_id, term, len(decisions), len(prepared))
            await self._bootstrap_state()
        except (RaftError, trio.TooSlowError) as e:
            log.info("group %d: becoming leader in term %d failed: %s", self.group, term, e)
        finally:
            self._becoming = False

    def _lose_leadership(self) -> None:
        self._ready_term = 0
        self._do(self.coordinator.handle(LostLeadership()))
        self._do(self.participant.handle(LostLeadership()))
        log.info("group %d: node %d no longer leads", self.group, self.node_id)

    async def _bootstrap_state(self) -> None:
        if self.sm.nodelist_bytes is None:
            if self._initial_nodelist is None:
                return  # joining: the ring change brings the NodeList (ringchange.py)
            await self._propose(encode_nodelist_entry(self._initial_nodelist))
        current = self.sm.nodelist_bytes
        if current is not None and NodeList.decode(current).ring(
                self.vnodes).group_of_inode(ROOT_INO) != self.group:
            return  # inode 1 lives elsewhere now (a ring change moved it)
        if self._root_ops is not None:
            root = await self.kv.get(fs_keys.inode_key(ROOT_INO))
            if root is None:
                record = TxnLocal(_ROOT_TXN, self._root_ops())
                await self._propose_change(record, encode_txn_entry(record))  # group_leases.py


def _label(outcome: Outcome) -> str:
    return "commit" if outcome.commit else "abort"
