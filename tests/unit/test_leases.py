"""server/cluster/leases.py: the leader's lease table and the gateway's lease cache."""

from __future__ import annotations

import pytest

from server.cluster.leases import LEASE_DRIFT, LEASE_MARGIN_S, LeaseCache, LeaseTable, record_s


def test_the_leaders_record_outlives_the_holders_lease() -> None:
    table = LeaseTable(lease_s=2.0, started=0.0)
    assert table.grant(node=2, inos=[10], now=100.0) == 2.0
    leader_ends = table.holders(10, now=100.0)[2]
    assert leader_ends == pytest.approx(100.0 + 2.0 * (1 + LEASE_DRIFT) + LEASE_MARGIN_S)
    # The holder sent its request at 99.99 and holds the reply for 2 s of its own clock; even
    # if that clock runs LEASE_DRIFT slower, the lease ends first in the leader's time.
    holder_ends_in_real_time = 99.99 + 2.0 * (1 + LEASE_DRIFT)
    assert holder_ends_in_real_time < leader_ends


def test_holders_are_the_running_leases_and_a_release_ends_one() -> None:
    table = LeaseTable(lease_s=1.0, started=0.0)
    table.grant(2, [10, 11], now=50.0)
    table.grant(3, [10], now=50.5)
    assert set(table.holders(10, now=51.0)) == {2, 3}
    assert set(table.holders(10, now=51.0 + 0.1)) == {3}  # node 2's record ran out
    table.release(10, 3)
    assert table.holders(10, now=51.1) == {}
    assert set(table.holders(11, now=50.9)) == {2}
    assert table.holders(12, now=50.0) == {}


def test_a_change_waits_for_the_last_lease_on_its_inodes() -> None:
    table = LeaseTable(lease_s=1.0, started=0.0)
    assert table.wait_until([10], now=50.0) == 50.0  # nobody holds it: no wait
    table.grant(2, [10], now=50.0)
    table.grant(3, [11], now=50.4)
    assert table.wait_until([10, 11], now=50.5) == pytest.approx(50.4 + record_s(1.0))
    table.release(11, 3)
    assert table.wait_until([10, 11], now=50.5) == pytest.approx(50.0 + record_s(1.0))


def test_a_new_leader_waits_out_its_predecessors_leases() -> None:
    table = LeaseTable(lease_s=2.0, started=500.0)
    assert table.quiet_until() == pytest.approx(500.0 + record_s(2.0))
    assert table.wait_until([10], now=500.1) == table.quiet_until()
    assert table.wait_until([10], now=600.0) == 600.0


def test_a_full_table_grants_nothing_until_leases_run_out() -> None:
    table = LeaseTable(lease_s=1.0, started=0.0, limit=3)
    assert table.grant(2, [1, 2], now=10.0) is not None
    assert table.grant(2, [3, 4], now=10.0) is None  # 4 inodes > 3
    assert table.grant(2, [3], now=10.0) is not None
    assert table.grant(3, [5, 6, 7], now=10.0 + record_s(1.0) + 0.01) is not None  # pruned


def hold(cache: LeaseCache, key, reply, inos, *, ring: int, sent_at: float,
         lease_s: float) -> None:
    """A reply stored as a gateway stores one: token taken before its request left."""
    cache.put(key, reply, inos, token=cache.token(), ring_version=ring, sent_at=sent_at,
              lease_s=lease_s)


def test_the_cache_answers_until_the_lease_runs_out_by_the_send_time() -> None:
    cache = LeaseCache(limit=10)
    hold(cache, ("ino", 10), "reply", [10], ring=4, sent_at=100.0, lease_s=2.0)
    assert cache.get(("ino", 10), ring_version=4, now=101.9) == "reply"
    assert cache.get(("ino", 10), ring_version=4, now=102.0) is None
    assert len(cache) == 0


def test_a_revoke_of_any_inode_a_reply_shows_drops_it() -> None:
    cache = LeaseCache(limit=10)
    lookup = ("lookup", 1, b"a")
    hold(cache, lookup, "dir 1 has a = 10", [1, 10], ring=1, sent_at=0.0, lease_s=5.0)
    hold(cache, ("ino", 10), "inode 10", [10], ring=1, sent_at=0.0, lease_s=5.0)
    hold(cache, ("ino", 1), "inode 1", [1], ring=1, sent_at=0.0, lease_s=5.0)
    assert cache.revoke(10) == 2  # the child changed: its inode and the name that shows it
    assert cache.get(lookup, ring_version=1, now=1.0) is None
    assert cache.get(("ino", 1), ring_version=1, now=1.0) == "inode 1"
    assert cache.revoke(10) == 0
    assert cache.revoke(1) == 1 and len(cache) == 0


def test_the_cache_is_bounded_and_forgets_the_least_recently_used() -> None:
    cache = LeaseCache(limit=2)
    for ino in (1, 2):
        hold(cache, ino, f"r{ino}", [ino], ring=1, sent_at=0.0, lease_s=9.0)
    assert cache.get(1, ring_version=1, now=1.0) == "r1"  # 2 is now the oldest
    hold(cache, 3, "r3", [3], ring=1, sent_at=0.0, lease_s=9.0)
    assert cache.get(2, ring_version=1, now=1.0) is None
    assert cache.get(1, ring_version=1, now=1.0) == "r1"
    assert cache.revoke(2) == 0  # its index went with it


def test_a_ring_change_drops_every_reply() -> None:
    cache = LeaseCache(limit=10)
    hold(cache, 1, "r1", [1], ring=1, sent_at=0.0, lease_s=9.0)
    assert cache.get(1, ring_version=2, now=1.0) is None
    assert len(cache) == 0
    hold(cache, 2, "r2", [2], ring=2, sent_at=0.0, lease_s=9.0)
    hold(cache, 3, "r3", [3], ring=3, sent_at=0.0, lease_s=9.0)  # a newer ring
    assert cache.get(2, ring_version=3, now=1.0) is None
    assert cache.get(3, ring_version=3, now=1.0) == "r3"


def test_no_lease_is_granted_on_an_inode_while_a_change_to_it_is_under_way() -> None:
    table = LeaseTable(lease_s=1.0, started=0.0)
    table.grant(2, [10], now=50.0)
    table.grant(3, [10], now=50.2)
    until, revoke = table.begin_change([10, 11], now=50.5)
    assert until == pytest.approx(50.2 + record_s(1.0))
    assert revoke == {2: [10], 3: [10]}
    assert table.grant(4, [11], now=50.6) is None  # its reply would be stale once applied
    assert table.grant(4, [12], now=50.6) is not None
    table.begin_change([11], now=50.6)  # a second change of 11 overlaps the first
    table.end_change([10, 11], now=50.7)
    assert table.grant(4, [11], now=50.7) is None  # the second change is still under way
    table.end_change([11], now=50.8)
    assert table.grant(4, [11], now=50.8) is not None  # nobody held it: not hot


def test_an_inode_whose_lease_a_change_took_back_stays_unleased_while_it_keeps_changing(
        ) -> None:
    table = LeaseTable(lease_s=1.0, started=0.0)
    assert table.grant(2, [10], now=10.0) is not None
    _, revoke = table.begin_change([10], now=10.5)
    assert revoke == {2: [10]}
    table.release(10, 2)
    table.end_change([10], now=10.6)
    assert table.grant(2, [10], now=11.0) is None  # changed 0.4 s ago: hot
    table.begin_change([10], now=11.5)  # nobody holds it, but it keeps changing
    table.end_change([10], now=11.5)
    assert table.grant(2, [10], now=12.4) is None
    assert table.grant(2, [10], now=12.6) == 1.0  # a whole lease without a change


def test_a_revoke_that_overtook_its_reply_keeps_the_reply_out() -> None:
    cache = LeaseCache(limit=10)
    token = cache.token()  # the request leaves...
    assert cache.revoke(10) == 0  # ...a Revoke of 10 arrives before its reply is stored
    cache.put(("ino", 10), "stale", [10], token=token, ring_version=1, sent_at=0.0, lease_s=9.0)
    assert cache.get(("ino", 10), ring_version=1, now=1.0) is None
    cache.put(("ino", 10), "new", [10], token=cache.token(), ring_version=1, sent_at=2.0,
              lease_s=9.0)
    assert cache.get(("ino", 10), ring_version=1, now=3.0) == "new"
