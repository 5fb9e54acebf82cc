"""The cluster: Raft groups placed on a consistent-hash ring, serving one namespace.

Picture (one node; every node runs all of it):

    NFS client ──▶ nfs_gateway ──▶ gateway.ClusterBackend ──▶ router.GroupRouter
                                     (namespace logic,           │ local group: in process
                                      builds txn ops)            │ other groups: RpcPlane call
                                                                 ▼ to that group's leader
                                                            group.GroupRuntime
                                            RunTxn ─▶ txn Coordinator/Participant cores
                                            reads  ─▶ queries.py over the applied state
                                            raft.driver ─▶ apply loop: fsops (fs records)
                                                           + txn.TxnState, one LevelDB batch

Modules and who owns what:
- protocol.py   the requests a gateway sends to a group's leader, their replies and error
                codes (the contract between gateway.py and group.py).
- ring.py       Ring: uhashring with virtual nodes over group ids; inode and chunk placement.
- nodelist.py   NodeList: groups, members, addresses, ring version (replicated state).
- membership.py bootstrap of the first NodeList from the configured peers.
- launcher.py   `objcache cluster up|down`: a local cluster of node processes.
- fsops.py      the txn Application over the fs state machine: ops = an encoded records.Multi;
                locks_of / check / apply, plus the data effects (chunk writes, trims, deletes)
                the runtime performs after each applied batch.
- queries.py    pure read handlers: protocol read requests answered from a KvView + ChunkStore.
- inoalloc.py   cluster-unique inode ids: (node id << 44) | a persisted per-node counter.
- gateway.py    ClusterBackend: the nfs_gateway Backend protocol over a GroupRouter.
- router.py     GroupRouter: finds a group's leader, calls it (in process when it is us),
                retries leader changes and stale rings, raises Unavailable -> NFS3ERR_JUKEBOX.
- group.py      GroupRuntime: this node's group member (driver, log, apply loop, request
                handlers); group_reads.py its reads, group_txn.py its txn cores and leadership.

Rules:
- Every namespace or attribute change is a transaction (txn/): a TxnLocal when all its records
  live in one group, two-phase commit otherwise. The gateway reads optimistically, builds the
  records, and the group decides at apply time (locks, checks); any abort makes the gateway
  re-read and rebuild, so what a client sees is decided by the replicated state alone.
- Placement: inode metadata by inode id, chunk i of inode n by (n, i), chunk 0 with the inode,
  a directory's entries with the directory (ring.py).
- Every request carries the caller's ring version; a group with another version answers
  STALE_RING and the caller refreshes its NodeList before retrying.
"""
