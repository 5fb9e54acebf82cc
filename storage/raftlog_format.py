"""On-disk format of the Raft log (storage/raftlog.py) and its verification at open.

Every value is `version (1 byte) | crc32 of body (4 bytes BE) | CBOR body`; the keys are listed
in raftlog.py. Verification reads the whole retained log once, in a worker thread, and raises
LogCorrupted naming the key, the index and what is wrong: a node refuses to start rather than
serve from damaged state.
"""

from __future__ import annotations

import struct
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any

import cbor2
import plyvel

from raft.types import ConfState, Entry, EntryType, HardState, SnapshotMeta

RECORD_VERSION = 1
HEADER = struct.Struct(">BI")  # version, crc32
INDEX = struct.Struct(">Q")
ENTRY_OVERHEAD_BYTES = 64  # rough per-entry cost of the cache bookkeeping


class LogCorrupted(Exception):
    """The persisted log is damaged; the node must not start from it."""

    def __init__(self, reason: str, *, key: bytes | None = None, index: int | None = None):
        self.reason = reason
        self.key = key
        self.index = index
        where = []
        if index is not None:
            where.append(f"index {index}")
        if key is not None:
            where.append(f"key {key!r}")
        super().__init__(f"raft log corrupted ({', '.join(where) or 'log'}): {reason}")


# ---- record codec (the on-disk plane for the raft log: versioned CBOR with a checksum) ----


def encode_record(body: list[Any]) -> bytes:
    payload = cbor2.dumps(body)
    return HEADER.pack(RECORD_VERSION, zlib.crc32(payload)) + payload


def decode_record(key: bytes, value: bytes, index: int | None = None) -> list[Any]:
    if len(value) < HEADER.size:
        raise LogCorrupted(f"record of {len(value)} bytes is shorter than its header", key=key,
                           index=index)
    version, crc = HEADER.unpack_from(value)
    if version != RECORD_VERSION:
        raise LogCorrupted(f"unknown record version {version}", key=key, index=index)
    payload = value[HEADER.size:]
    actual = zlib.crc32(payload)
    if actual != crc:
        raise LogCorrupted(f"checksum mismatch: stored {crc:#010x}, computed {actual:#010x}",
                           key=key, index=index)
    try:
        body = cbor2.loads(payload)
    except (cbor2.CBORDecodeError, ValueError) as exc:
        raise LogCorrupted(f"undecodable CBOR body: {exc}", key=key, index=index) from exc
    if not isinstance(body, list):
        raise LogCorrupted(f"record body is {type(body).__name__}, not a list", key=key,
                           index=index)
    return body


def _ints(body: list[Any], n: int, key: bytes, what: str) -> list[int]:
    if len(body) != n or not all(type(x) is int and x >= 0 for x in body[:n]):
        raise LogCorrupted(f"malformed {what} record {body!r}", key=key)
    return body


def entry_body(e: Entry) -> list[Any]:
    return [e.index, e.term, int(e.type), e.data]


def decode_entry(key: bytes, value: bytes, index: int) -> Entry:
    body = decode_record(key, value, index)
    if (len(body) != 4 or not all(type(x) is int for x in body[:3])
            or not isinstance(body[3], bytes)):
        raise LogCorrupted(f"malformed entry record {body!r:.200}", key=key, index=index)
    if body[0] != index:
        raise LogCorrupted(f"entry body says index {body[0]}", key=key, index=index)
    try:
        etype = EntryType(body[2])
    except ValueError as exc:
        raise LogCorrupted(f"unknown entry type {body[2]}", key=key, index=index) from exc
    return Entry(term=body[1], index=index, type=etype, data=body[3])


def snapshot_body(s: SnapshotMeta) -> list[Any]:
    return [s.index, s.term, sorted(s.conf.voters), sorted(s.conf.learners)]


def decode_snapshot(key: bytes, value: bytes) -> SnapshotMeta:
    body = decode_record(key, value)
    if (len(body) != 4 or not all(type(x) is int for x in body[:2])
            or not all(isinstance(xs, list) and all(type(x) is int for x in xs)
                       for xs in body[2:])):
        raise LogCorrupted(f"malformed snapshot record {body!r:.200}", key=key)
    return SnapshotMeta(index=body[0], term=body[1],
                        conf=ConfState(frozenset(body[2]), frozenset(body[3])))

@dataclass(slots=True)
class Loaded:
    """What open() found on disk, after verification."""

    hard_state: HardState
    snapshot: SnapshotMeta | None
    marker: tuple[int, int]  # (index, term) of the last compacted entry
    terms: list[int]
    tail: list[Entry]  # the newest entries, up to the cache budget
    sizes: list[int]  # the stored bytes of each retained entry, as terms

# ---- verification at open (runs in a worker thread) ----


def load_and_verify(db: plyvel.DB, prefix: bytes, cache_bytes: int) -> Loaded:
    hs_key, snap_key, marker_key = prefix + b"h", prefix + b"s", prefix + b"c"
    hard_state = HardState()
    if (v := db.get(hs_key)) is not None:
        hard_state = HardState(*_ints(decode_record(hs_key, v), 3, hs_key, "hard state"))
    snapshot = decode_snapshot(snap_key, v) if (v := db.get(snap_key)) is not None else None
    marker = (0, 0)
    if (v := db.get(marker_key)) is not None:
        marker = tuple(_ints(decode_record(marker_key, v), 2, marker_key, "compaction marker"))
    terms, tail, sizes = _scan_entries(db, prefix, marker, cache_bytes)
    last = marker[0] + len(terms)
    last_term = terms[-1] if terms else marker[1]
    if hard_state.commit > last:
        raise LogCorrupted(f"hard state commit {hard_state.commit} is beyond the last entry "
                           f"{last}: the log tail is missing", key=hs_key, index=last + 1)
    if hard_state.term < last_term:
        raise LogCorrupted(f"last entry has term {last_term}, above the hard state term "
                           f"{hard_state.term}", key=hs_key, index=last)
    for key in db.iterator(prefix=prefix, include_value=False):
        if key not in (hs_key, snap_key, marker_key) and key[len(prefix):len(prefix) + 1] != b"e":
            raise LogCorrupted("unknown key under the raft log prefix", key=key)
    return Loaded(hard_state, snapshot, marker, terms, tail, sizes)


def _scan_entries(db: plyvel.DB, prefix: bytes, marker: tuple[int, int],
                  cache_bytes: int) -> tuple[list[int], list[Entry], list[int]]:
    entry_prefix = prefix + b"e"
    terms: list[int] = []
    sizes: list[int] = []
    tail: deque[Entry] = deque()
    tail_bytes = 0
    expect, prev_term = marker[0] + 1, marker[1]
    for key, value in db.iterator(prefix=entry_prefix):
        suffix = key[len(entry_prefix):]
        if len(suffix) != INDEX.size:
            raise LogCorrupted("malformed entry key", key=key)
        index = INDEX.unpack(suffix)[0]
        if index != expect:
            what = "below the first index" if index < expect else f"entry {expect} is missing"
            raise LogCorrupted(f"log not contiguous: found {index}, {what}",
                               key=entry_prefix + INDEX.pack(expect), index=expect)
        e = decode_entry(key, value, index)
        if e.term < prev_term:
            raise LogCorrupted(f"term {e.term} below the previous entry's {prev_term}",
                               key=key, index=index)
        terms.append(e.term)
        sizes.append(len(value))
        tail.append(e)
        tail_bytes += len(e.data) + ENTRY_OVERHEAD_BYTES
        while tail_bytes > cache_bytes and len(tail) > 1:
            tail_bytes -= len(tail.popleft().data) + ENTRY_OVERHEAD_BYTES
        expect, prev_term = index + 1, e.term
    return terms, list(tail), sizes
