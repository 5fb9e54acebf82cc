"""Leases on other groups' metadata (server/cluster/leases.py, group_leases.py,
gateway_leases.py) on node processes, through libnfs against different nodes' gateways.

- Three one-member groups: node 3's gateway answers GETATTR and LOOKUP of group 1's inodes
  from leased replies; a chmod and a rename through node 2 are seen through node 3 at once
  (group 1 took node 3's lease back before it applied them).
- A READ past the first chunk through node 3 takes the inode from its lease (one round trip,
  to the chunk's group); a truncate through node 2 is seen by the next READ.
- kill -9 of the node holding a lease: a change waits for that lease to run out (at most one
  lease), not longer.
- One group of three replicas: a follower's gateway holds a lease from the leader; the leader
  is killed; the new leader waits out one lease before its first change, so that follower
  never answers from the old reply after the change was acknowledged.
"""

from __future__ import annotations

import os
import time

import pytest
from clusterproc import LocalCluster
from nfsclient import LibNfs

from server.fs.config import FsConfig

pytestmark = pytest.mark.integration

LEASE_S = 1.0  # server/config.py ClusterConfig.lease_s (the default LocalCluster runs with)


def mode(fs: LibNfs, path: str) -> int:
    return fs.stat(path).mode & 0o7777


def held(cluster: LocalCluster, node: int) -> float:
    return cluster.metric(node, "objcache_gateway_leases_total", 'event="hits"')


def hold(cluster: LocalCluster, node: int, fs: LibNfs, path: str, want_mode: int,
         lease_s: float = LEASE_S) -> None:
    """stat `path` through `node` until its gateway answers from a leased reply (the first
    grant may wait for the group's lease horizon to be committed, and a directory whose
    lease a change took back is not leased again for one lease)."""
    before = held(cluster, node)
    for _ in range(int((lease_s + 2) / 0.05)):
        assert mode(fs, path) == want_mode
        if held(cluster, node) > before:
            return
        time.sleep(0.05)
    raise AssertionError(f"node {node} never answered {path} from a lease")


def test_a_change_through_one_node_is_seen_at_once_through_a_node_holding_a_lease(cluster):
    one, two, three = (LibNfs(cluster.export_url(n)) for n in (1, 2, 3))
    try:
        one.mkdir("/d")  # in node 1's group (dir_placement "local"), and so are its files
        one.write_file("/d/f", b"leased", 0o644)
        hold(cluster, 3, three, "/d/f", 0o644)  # node 3 answers from leased replies
        assert cluster.metric(1, "objcache_group_leases_total", 'event="granted"') > 0

        two.chmod("/d/f", 0o600)
        assert mode(three, "/d/f") == 0o600  # at once: the lease was taken back first
        two.rename("/d/f", "/d/g")
        with pytest.raises(OSError):
            three.stat("/d/f")
        assert mode(three, "/d/g") == 0o600
        assert cluster.metric(1, "objcache_group_leases_total", 'event="revokes_acked"') > 0
        assert three.listdir("/d") == ["g"]
    finally:
        for fs in (one, two, three):
            fs.close()


def test_a_change_waits_at_most_one_lease_for_a_killed_holder(cluster):
    one, two, three = (LibNfs(cluster.export_url(n)) for n in (1, 2, 3))
    try:
        one.mkdir("/d")
        one.write_file("/d/f", b"x", 0o644)
        hold(cluster, 3, three, "/d/f", 0o644)
        three.close()
        cluster.kill9(3)
        waited = cluster.metric(1, "objcache_group_leases_total", 'event="changes_waited"')
        start = time.monotonic()
        two.chmod("/d/f", 0o600)
        took = time.monotonic() - start
        assert mode(two, "/d/f") == 0o600 and mode(one, "/d/f") == 0o600
        # A lease of node 3's was still running, or ran out during the kill: either way
        # the chmod waited no longer than one lease plus a client round trip or two.
        assert took < LEASE_S + 1.0, took
        assert cluster.metric(1, "objcache_group_leases_total",
                              'event="changes_waited"') >= waited
    finally:
        for fs in (one, two):
            fs.close()


def test_a_new_leader_waits_out_its_predecessors_leases(tmp_path):
    # Leases of 5 s: longer than an election, so the holder's lease still runs when the
    # new leader could first commit the change.
    c = LocalCluster(tmp_path / "group3", nodes=3, replicas=3,
                     up_args=("--lease-s", "5")).up()
    clients: list[LibNfs] = []
    try:
        leader = c.leader(1)
        holder, changer = (n for n in (1, 2, 3) if n != leader)
        through_holder, through_changer = LibNfs(c.export_url(holder)), LibNfs(
            c.export_url(changer))
        clients += [through_holder, through_changer]
        through_changer.mkdir("/d")
        through_changer.write_file("/d/f", b"x", 0o644)
        hold(c, holder, through_holder, "/d/f", 0o644, 5)  # a follower's gateway holds replies
        c.kill9(leader)
        # The new leader knows no grant of the old one: its first change waits one lease,
        # so the holder's reply has run out before the change is acknowledged.
        start = time.monotonic()
        through_changer.chmod("/d/f", 0o600)
        assert mode(through_holder, "/d/f") == 0o600
        assert time.monotonic() - start < 5 + 5  # an election, one lease, some slack
        assert c.leader(1) in (holder, changer)
    finally:
        for fs in clients:
            fs.close()
        c.down(check=False)


def test_reads_past_the_first_chunk_through_a_lease_follow_a_truncate(cluster):
    chunk = FsConfig().chunk_size
    data = os.urandom(chunk + 4096)
    one, two, three = (LibNfs(cluster.export_url(n)) for n in (1, 2, 3))
    try:
        one.mkdir("/d")
        one.write_file("/d/big", data, 0o644)
        hold(cluster, 3, three, "/d/big", 0o644)
        fh = three.open("/d/big", os.O_RDONLY)
        before = held(cluster, 3)
        assert three.pread(fh, chunk, 4096) == data[chunk:]  # the inode from the lease
        assert held(cluster, 3) > before
        two.truncate("/d/big", chunk + 10)  # the lease is taken back before it applies
        assert three.pread(fh, chunk, 4096) == data[chunk:chunk + 10]
        three.fclose(fh)
    finally:
        for fs in (one, two, three):
            fs.close()
