"""Requests from a gateway (any node) to a group's leader, their replies and error codes.

Rules:
- Each request is a frozen dataclass with an RPC codec tag ("cl.<name>"). The router sends it
  to the leader of the group that owns the state it names (ring.py), or calls the local
  handler directly when this node leads that group. Both paths run the same handler.
- Every request carries `ring_version`. The handler compares it with its group's NodeList
  version first and answers RemoteError(STALE_RING) when they differ: placement changed, the
  caller refreshes its NodeList and retries.
- Reads are served by the leader from its applied state after a read barrier (ReadIndex), so
  a read sees every change acknowledged before it was sent (close-to-open for NFS clients).
- Inode and Dirent values travel as `server.fs.record_codec.encode` bytes; b"" means "none".
- Failures are RemoteError(code, message) with the codes below; anything else is a bug.
- GetInodes and Lookup from another node may ask for a lease (`lease`): the reply's `lease_s`
  > 0 lets that node's gateway answer them again from the reply until it ends, and the
  group's leader sends Revoke before it changes what the reply shows (server/cluster/leases.py,
  group_leases.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from server.rpc.codec import message
from txn.messages import (
    DecisionNotice,
    FinishAck,
    OutcomeAnswer,
    OutcomeQuery,
    PrepareRequest,
    PrepareVote,
)

# RemoteError codes (server/rpc/frames.py). The router retries NOT_LEADER (message: the
# leader's node id as decimal, "0" if unknown) and STALE_RING (message: the group's version);
# UNAVAILABLE and timeouts past the request's deadline become NFS3ERR_JUKEBOX at the gateway.
NOT_LEADER = "not-leader"
STALE_RING = "stale-ring"
UNAVAILABLE = "unavailable"
STORE_FAILED = "store-failed"  # an upload the object store refused after its retries: the
# caller (write-back) decides when to try again, the router does not retry it
NOSPC = "nospc"  # the node's cache is full of bytes write-back cannot upload (NFS3ERR_NOSPC)
ORIGIN_CHANGED = "origin-changed"  # the bucket object changed since the inode was loaded: the
# gateway revalidates the file (server/cluster/bucket.py)
MOVING = "moving"  # the state is moving to another group (a ring change, ringstate.py): the
# router waits and retries until the new ring is installed
WRONG_GROUP = "wrong-group"  # the named state is not placed in this group (a bug or a race
# with a ring change; retried like STALE_RING after a refresh)
SCAN_EXPIRED = "scan-expired"  # a ScanState page of a scan this leader no longer holds
# (state_scan.py): the caller starts the scan over


# -- reads -------------------------------------------------------------------------------------


@message("cl.get_inodes", 2)
@dataclass(frozen=True, slots=True)
class GetInodes:
    """The inodes (all placed in the called group)."""

    ring_version: int
    inos: tuple[int, ...]
    lease: bool = False  # the calling node's gateway would hold the reply (module rules)


@message("cl.inodes", 2)
@dataclass(frozen=True, slots=True)
class InodesReply:
    inodes: tuple[bytes, ...]  # encoded Inode per requested ino, b"" if it does not exist
    lease_s: float = 0.0  # > 0: leased to the caller for that long from when it sent


@message("cl.lookup", 2)
@dataclass(frozen=True, slots=True)
class Lookup:
    """One name in a directory placed in the called group."""

    ring_version: int
    dir_ino: int
    name: bytes
    lease: bool = False  # as GetInodes.lease


@message("cl.lookup_reply", 2)
@dataclass(frozen=True, slots=True)
class LookupReply:
    dir: bytes  # encoded Inode of the directory, b"" if it does not exist
    dirent: bytes  # encoded Dirent, b"" if the name is absent
    child: bytes  # encoded Inode of the child when it lives in this group too, else b""
    lease_s: float = 0.0  # as InodesReply.lease_s: on the directory, and on the child if shown


@message("cl.revoke")
@dataclass(frozen=True, slots=True)
class Revoke:
    """One-way, from a group's leader to a node holding leases on `inos`: drop every reply
    that shows them, then answer RevokeAck (one-way too: a leader waiting for it may be
    serving a transaction of that very node)."""

    group: int
    change: int  # the leader's id of the change waiting (echoed in the ack)
    inos: tuple[int, ...]


@message("cl.revoke_ack")
@dataclass(frozen=True, slots=True)
class RevokeAck:
    group: int
    change: int


@message("cl.read_dir")
@dataclass(frozen=True, slots=True)
class ReadDir:
    """A page of a directory's entries after `cookie` (0: from the start), in cookie order."""

    ring_version: int
    dir_ino: int
    cookie: int
    max_entries: int


@message("cl.read_dir_reply")
@dataclass(frozen=True, slots=True)
class ReadDirReply:
    dir: bytes  # encoded Inode of the directory, b"" if it does not exist
    entries: tuple[tuple[int, bytes, int, int], ...]  # (cookie, name, ino, ftype)
    eof: bool


@message("cl.read_head", 2)
@dataclass(frozen=True, slots=True)
class ReadHead:
    """At the inode's group: the inode, and the bytes of [offset, offset+count) clipped to
    the file size that lie inline or in chunk 0 (both live with the inode)."""

    ring_version: int
    ino: int
    offset: int
    count: int
    lease: bool = False  # as GetInodes.lease: on the inode


@message("cl.read_head_reply", 2)
@dataclass(frozen=True, slots=True)
class ReadHeadReply:
    inode: bytes  # b"" if the inode does not exist
    lease_s: float = 0.0  # as InodesReply.lease_s
    data: bytes = b""  # last: chunk bytes ride at the end of a message (server/rpc/codec.py)


@message("cl.read_chunk")
@dataclass(frozen=True, slots=True)
class ReadChunk:
    """At chunk (ino, index)'s group: bytes [offset, offset+count) of that chunk, offsets
    within the chunk. Missing bytes (holes, past the chunk file's end) read as zeros; the
    caller clips to the file size it got from the inode's group.

    A chunk the inode says is backed by the bucket (bucket.py) carries its origin: the owner
    serves the object's bytes (cached or fetched) unless the chunk is materialized. With
    `prefetch` the owner only makes sure the chunk is cached (read-ahead) and answers b""."""

    ring_version: int
    ino: int
    index: int
    offset: int
    count: int
    chunk_size: int = 0
    store: int = 0
    okey: bytes = b""
    etag: bytes = b""
    obase: int = 0
    prefetch: bool = False


@message("cl.read_chunk_reply")
@dataclass(frozen=True, slots=True)
class ReadChunkReply:
    data: bytes  # a memoryview when it came over the bulk channel (router.py): not a record's


@message("cl.drop_cached")
@dataclass(frozen=True, slots=True)
class DropCached:
    """Drop the clean copies of `ino`'s chunks that the called group's leader caches
    (`objcache admin evict`); materialized and written chunks stay."""

    ring_version: int
    ino: int


@message("cl.dropped")
@dataclass(frozen=True, slots=True)
class DroppedReply:
    freed_bytes: int


# -- write-back (flush.py asks, bucket_upload.py / queries.py answer) ----------------------------

MAX_PUT_BYTES = 16 << 20  # a PutObject's file (the flusher sends larger files in parts)


@message("cl.scan_flush")
@dataclass(frozen=True, slots=True)
class ScanFlush:
    """What write-back has to do in the called group, in key order from `start`: the key
    table (keys.BUCKET_KEY) and dirty inodes (keys.DIRTY: value the encoded Inode), at most
    `limit` rows."""

    ring_version: int
    start: bytes
    limit: int


@message("cl.scan_flush_reply")
@dataclass(frozen=True, slots=True)
class ScanFlushReply:
    items: tuple[tuple[bytes, bytes], ...]
    next_start: bytes  # b"" when complete


@message("cl.keys_under")
@dataclass(frozen=True, slots=True)
class KeysUnder:
    """At a store's root group: the keys of the write-back key table that start with
    `prefix` (a listing must not bring back an object that is being moved or deleted)."""

    ring_version: int
    store: int
    prefix: bytes


@message("cl.keys_reply")
@dataclass(frozen=True, slots=True)
class KeysReply:
    keys: tuple[bytes, ...]


@message("cl.put_object")
@dataclass(frozen=True, slots=True)
class PutObject:
    """At the inode's group: PUT the whole file (at most one chunk) if it is at `dver`; no
    store request starts after `stop_ns` (wall clock: the write-back round's claim on the key
    ends, flush_claim.py; 0: no bound)."""

    ring_version: int
    ino: int
    dver: int
    store: int
    key: bytes
    metadata: tuple[tuple[str, str], ...]
    stop_ns: int = 0


@message("cl.put_reply")
@dataclass(frozen=True, slots=True)
class PutReply:
    ok: bool  # False: the inode is gone or at another version (nothing was written)
    etag: str
    size: int
    chunk_version: int = 0  # chunk 0's pin version before its bytes were read (0: none)


@message("cl.put_objects")
@dataclass(frozen=True, slots=True)
class PutObjects:
    """At a group: each PutObject of `puts` in turn (their inodes all the group's), one
    answer each: a write-back lane, several small files for one request (flush_batch.py)."""

    ring_version: int
    puts: tuple[PutObject, ...]


@message("cl.put_objects_reply")
@dataclass(frozen=True, slots=True)
class PutObjectsReply:
    replies: tuple[PutReply, ...]  # one per put, in order
    errors: tuple[tuple[str, str], ...]  # per put: ("", "") or its RemoteError (code, message)


@message("cl.put_part")
@dataclass(frozen=True, slots=True)
class PutPart:
    """At chunk (ino, index)'s group: that chunk's first `length` bytes as part
    `part_number` of multipart upload `upload_id` of `key`; the origin as in ReadChunk;
    `stop_ns` as in PutObject."""

    ring_version: int
    ino: int
    index: int
    chunk_size: int
    length: int
    store: int
    key: bytes
    upload_id: str
    part_number: int
    okey: bytes = b""
    etag: bytes = b""
    obase: int = 0
    stop_ns: int = 0


@message("cl.part_reply")
@dataclass(frozen=True, slots=True)
class PartReply:
    etag: str
    copied: bool  # copied inside the store from the origin object (no bytes moved)
    version: int = 0  # the chunk's pin version before its bytes were read (0: not pinned)


@message("cl.fs_stat")
@dataclass(frozen=True, slots=True)
class FsStatRequest:
    ring_version: int


@message("cl.fs_stat_reply")
@dataclass(frozen=True, slots=True)
class FsStatReply:
    total_bytes: int
    free_bytes: int
    avail_bytes: int
    inodes: int  # inodes placed in this group


@message("cl.max_inode")
@dataclass(frozen=True, slots=True)
class MaxInode:
    """The highest inode id in [lo, hi) placed in the called group (a node whose id returns
    with an empty data directory starts its inode counter above every id it handed out)."""

    ring_version: int
    lo: int
    hi: int


@message("cl.max_inode_reply")
@dataclass(frozen=True, slots=True)
class MaxInodeReply:
    ino: int  # 0: none


@message("cl.scan_state")
@dataclass(frozen=True, slots=True)
class ScanState:
    """For fsck and drain: the group's replicated state in key order, from `start`
    (inclusive) to `stop` (exclusive; b"": the end), at most `limit` pairs; the `fs.` and
    `txn/` key spaces. The pages of one scan show one moment of the state: the first asks with
    scan_id 0, the rest with the scan_id its reply named (server/cluster/state_scan.py)."""

    ring_version: int
    start: bytes
    limit: int
    scan_id: int = 0
    stop: bytes = b""


@message("cl.scan_state_reply")
@dataclass(frozen=True, slots=True)
class ScanStateReply:
    items: tuple[tuple[bytes, bytes], ...]
    next_start: bytes  # b"" when the scan is complete
    scan_id: int = 0  # what the next page asks with (0 once complete)


@message("cl.get_nodelist")
@dataclass(frozen=True, slots=True)
class GetNodeList:
    """The NodeList this node's group applied (ring_version is not checked: a caller with no
    or an old ring asks this to learn the current one)."""

    ring_version: int = 0


@message("cl.nodelist_reply")
@dataclass(frozen=True, slots=True)
class NodeListReply:
    nodelist: bytes  # NodeList.encode()


# -- changes -----------------------------------------------------------------------------------


@message("cl.run_txn")
@dataclass(frozen=True, slots=True)
class RunTxn:
    """Run a transaction with the called group as coordinator. `parts` maps every group with
    effects (this one included, if it has any) to its ops (fsops.encode_ops). Retrying with
    the same txn_id is safe: a decided txn answers its remembered outcome."""

    ring_version: int
    txn_id: bytes
    parts: tuple[tuple[int, bytes], ...]
    retry: bool = False  # set when resending a txn_id whose answer was lost or undecided


@message("cl.txn_reply")
@dataclass(frozen=True, slots=True)
class TxnReply:
    decided: bool  # False: not decided here (leadership lost, too busy): retry the same txn_id
    commit: bool
    reason: str  # why it aborted: txn.records.CONFLICT, fsops reasons (fsops.EEXIST, ...)


@message("cl.txn_message")
@dataclass(frozen=True, slots=True)
class TxnEnvelope:
    """A txn message (txn/messages.py) from one group's leader to another's, with the
    sender's ring version: a group on another version refuses it (STALE_RING) — the
    transaction then times out and aborts, and its gateway re-plans on the new ring."""

    ring_version: int
    message: (PrepareRequest | PrepareVote | DecisionNotice | FinishAck | OutcomeQuery
              | OutcomeAnswer)


@message("cl.ack")
@dataclass(frozen=True, slots=True)
class Ack:
    """The answer to a txn message (txn/messages.py) that the leader took."""


GroupRequest = (GetInodes | Lookup | ReadDir | ReadHead | ReadChunk | FsStatRequest | RunTxn
                | DropCached | ScanFlush | PutObject | PutObjects | PutPart | KeysUnder
                | MaxInode)


# -- the gateway's view of the router (router.py implements it; simulations fake it) ---------


class Unavailable(Exception):
    """The group did not answer within the request's deadline (no leader, partitioned, down).
    The gateway answers NFS3ERR_JUKEBOX: the client retries later."""


class RingChanged(Exception):
    """The placement changed under the request (STALE_RING / WRONG_GROUP). The router has
    refreshed its ring; the gateway re-plans the whole operation against `router.ring`."""


class RingView(Protocol):
    version: int

    def group_of_inode(self, ino: int) -> int: ...

    def group_of_chunk(self, ino: int, index: int) -> int:
        """Chunk 0 is always group_of_inode(ino)."""
        ...


class Router(Protocol):
    @property
    def ring(self) -> RingView: ...

    async def call(self, group: int, request: GroupRequest) -> object:
        """Send `request` (its ring_version is filled in from `ring`) to `group`'s leader and
        return the reply. Leader changes are retried inside; raises Unavailable or
        RingChanged."""
        ...
