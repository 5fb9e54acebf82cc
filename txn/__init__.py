"""Transactions over Raft groups: coordinator and participants, every step a log record.

Modules (all pure: no I/O, no clock, no randomness):
- ids.py          deterministic txn ids: txn_id(client_id, request_id, attempt)
- records.py      the log records TxnLocal, TxnPrepare, TxnDecision, TxnFinish, TxnForget; Outcome
- messages.py     PrepareRequest, PrepareVote, DecisionNotice, FinishAck, OutcomeQuery,
                  OutcomeAnswer (sent to a group's leader)
- codec.py        to_cbor / from_cbor for records and messages
- kv.py           the KvView / KvBatch protocols the state machine uses; MemKv, Overlay
- state.py        TxnState: apply(record, view, batch) -> Applied; the Application protocol
- coordinator.py  Coordinator.handle(event) -> [Propose | Send | Reply]
- participant.py  Participant.handle(event) -> [Propose | Send]

How a server wires one group (the driver is small; everything it does is in order):
- Apply loop: for each committed entry holding a txn record (decoded with from_cbor),
  `result = state.apply(record, view, batch)` with the same LevelDB batch as the file-system
  state and the applied index; after the batch is written, on the leader, feed
  `LogApplied(result)` to both the coordinator and the participant.
- Leadership: when this node becomes leader and has applied its log up to its first entry of the
  new term, `Coordinator.handle(BecameLeader(tuple(state.decisions(view))))` and
  `Participant.handle(BecameLeader(tuple(state.prepared(view))))`; on losing it, LostLeadership.
- Requests: a client request becomes `Start(txn_id, parts, known=state.outcome(view, txn_id))`
  at the leader of the primary inode's group; `parts` holds each group's encoded ops.
- Messages from other groups: PrepareVote/FinishAck/OutcomeQuery go to the coordinator
  (VoteReceived/AckReceived/QueryReceived); PrepareRequest to the participant
  (PrepareReceived); DecisionNotice and OutcomeAnswer to the participant (DecisionReceived).
  A follower drops them (the sender retries at the leader).
- Actions: Propose -> raft propose(to_cbor(record)); Send -> RPC to that group's leader (best
  effort); Reply -> answer the waiting client (None: retry the same request).
- Ticks: call handle(Tick()) on both cores every tick interval.
- The Application adapts the fs state machine: locks_of(ops) = the owning inode ids of the
  records in ops, check = a dry run of server/fs/state.apply, apply = the real one.
"""
