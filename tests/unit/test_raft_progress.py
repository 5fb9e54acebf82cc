"""Leader-side flow control per follower (dissertation §10.2.1; etcd's Progress)."""

from __future__ import annotations

import pytest

from raft.progress import Inflights, Progress, ProgressState


def test_inflights_window() -> None:
    window = Inflights(3)
    for last in (5, 7, 9):
        window.add(last)
    assert window.full()
    with pytest.raises(AssertionError):
        window.add(11)
    window.free_le(7)
    assert len(window) == 1 and not window.full()
    window.free_first_one()
    assert len(window) == 0


def test_probe_sends_one_message_at_a_time() -> None:
    pr = Progress(match=0, next=5, max_inflight=4)
    assert not pr.is_paused()
    pr.sent_entries(2, 6)
    assert pr.is_paused() and pr.next == 5  # probing does not advance next
    assert pr.maybe_update(6)
    assert not pr.is_paused() and pr.match == 6 and pr.next == 7


def test_replicate_pipelines_up_to_the_window() -> None:
    pr = Progress(match=4, next=5, max_inflight=2)
    pr.become_replicate()
    pr.sent_entries(3, 7)
    pr.sent_entries(2, 9)
    assert pr.next == 10 and pr.is_paused()
    pr.maybe_update(7)
    pr.inflights.free_le(7)
    assert not pr.is_paused()


def test_rejection_in_replicate_falls_back_to_match() -> None:
    pr = Progress(match=4, next=5, max_inflight=8)
    pr.become_replicate()
    pr.sent_entries(5, 9)
    assert not pr.maybe_decr_to(3, 0)  # stale: at or below match
    assert pr.maybe_decr_to(8, 0)
    assert pr.next == 5


def test_rejection_in_probe_uses_the_hint() -> None:
    pr = Progress(match=0, next=10, max_inflight=8)
    pr.sent_entries(0, 9)
    assert not pr.maybe_decr_to(7, 3)  # stale: not the prev index we probed
    assert pr.maybe_decr_to(9, 3)
    assert pr.next == 4 and not pr.is_paused()


def test_snapshot_state_waits_then_resumes_after_the_snapshot() -> None:
    pr = Progress(match=2, next=3, max_inflight=8)
    pr.become_snapshot(20)
    assert pr.state is ProgressState.SNAPSHOT and pr.is_paused()
    pr.maybe_update(20)
    pr.become_probe()
    assert pr.next == 21 and not pr.is_paused()
