"""Duplicate request cache (RFC 1813 §4.4): replay, in-progress drop, bounds."""

from __future__ import annotations

from nfs_gateway.drc import DrcHit, DrcKey, DrcLimits, DuplicateRequestCache


def key(xid: int, host: str = "10.0.0.1", crc: int = 0) -> DrcKey:
    return DrcKey(host, xid, 100003, 3, 12, crc, 4)


def test_new_in_progress_then_replay():
    drc = DuplicateRequestCache()
    assert drc.begin(key(1)) is None  # new: run it
    assert drc.begin(key(1)) == DrcHit(None)  # retransmission while running: drop
    drc.finish(key(1), b"reply")
    assert drc.begin(key(1)) == DrcHit(b"reply")
    assert drc.begin(key(1, crc=5)) is None  # different args: a different call
    assert drc.begin(key(1, host="10.0.0.2")) is None  # different client


def test_abandoned_call_runs_again():
    drc = DuplicateRequestCache()
    drc.begin(key(1))
    drc.abandon(key(1))
    assert drc.begin(key(1)) is None


def test_bounded_by_entries_oldest_completed_evicted_first():
    drc = DuplicateRequestCache(DrcLimits(max_entries=3))
    for xid in (1, 2, 3):
        drc.begin(key(xid))
        drc.finish(key(xid), b"r%d" % xid)
    drc.begin(key(4))
    assert len(drc) == 3
    assert drc.begin(key(1)) is None  # evicted, so it is new again (and evicts 2)
    assert drc.begin(key(3)) == DrcHit(b"r3")


def test_in_progress_entries_are_never_evicted():
    drc = DuplicateRequestCache(DrcLimits(max_entries=2))
    drc.begin(key(1))
    drc.begin(key(2))
    assert drc.begin(key(3)) is None  # full of in-progress: runs uncached
    assert drc.uncached == 1
    assert drc.begin(key(1)) == DrcHit(None) and drc.begin(key(2)) == DrcHit(None)
    drc.finish(key(3), b"x")  # was uncached: ignored
    assert len(drc) == 2


def test_bounded_by_bytes():
    drc = DuplicateRequestCache(DrcLimits(max_entries=100, max_bytes=100, max_reply_bytes=60))
    for xid in range(10):
        drc.begin(key(xid))
        drc.finish(key(xid), bytes(40))
        assert drc.nbytes <= 100
    assert drc.begin(key(9)) == DrcHit(bytes(40))
    drc.begin(key(50))
    drc.finish(key(50), bytes(61))  # over max_reply_bytes: not kept
    assert drc.begin(key(50)) is None
