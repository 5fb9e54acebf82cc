"""Three server.raft_kv processes on loopback over the real WebSocket plane, LevelDB on disk.

Raft paper §5.2 (election after a leader failure), §5.4 (safety: a committed, acknowledged entry
survives any leader change), §5 "persisted state" (a full restart keeps everything).
Kill rounds: OBJCACHE_KILL_ROUNDS (default 20, as issue 3 asks; about 1.5 s each).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from serverproc import free_port

from server.raft_kv import KvClient, KvGet
from server.rpc.frames import ConnectionLost, PeerUnavailable, RpcTimeout
from server.rpc.plane import RpcConfig, RpcPlane

pytestmark = pytest.mark.integration
SECRET = b"raft-cluster-test-secret-0123456789"
TICK_MS = 50
ELECTION_TIMEOUT_S = 10 * TICK_MS / 1000  # raft.config.Config.election_timeout_ticks = 10
IDS = [1, 2, 3]
CLIENT_ID = 100


class Cluster:
    def __init__(self, tmp: Path, extra_args: tuple[str, ...] = ()):
        self.tmp = tmp
        self.extra_args = extra_args
        base = free_port(count=len(IDS))
        self.ports = {i: base + k for k, i in enumerate(IDS)}
        self.secret_file = tmp / "secret"
        self.secret_file.write_bytes(SECRET)
        self.procs: dict[int, subprocess.Popen] = {}

    def url(self, i: int) -> str:
        return f"ws://127.0.0.1:{self.ports[i]}/"

    def start(self, i: int) -> None:
        peers = ",".join(f"{j}={self.url(j)}" for j in IDS)
        with open(self.tmp / f"n{i}.log", "ab") as err:
            self.procs[i] = subprocess.Popen(
                [sys.executable, "-m", "server.raft_kv", "--id", str(i),
                 "--listen", f"127.0.0.1:{self.ports[i]}", "--peers", peers,
                 "--data-dir", str(self.tmp / f"n{i}"), "--secret-file", str(self.secret_file),
                 "--tick-ms", str(TICK_MS), *self.extra_args],
                stdout=subprocess.DEVNULL, stderr=err)

    def kill(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()

    def stop(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGTERM)
        assert self.procs[i].wait(timeout=10) == 0, self.log_tail(i)

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()

    def log_tail(self, i: int) -> str:
        return (self.tmp / f"n{i}.log").read_text()[-3000:]


@pytest.fixture
def cluster(tmp_path):
    # Compact often, so restarted members also catch up through snapshots (paper §7).
    c = Cluster(tmp_path, ("--compact-after-entries", "200", "--compact-keep-entries", "20"))
    for i in IDS:
        c.start(i)
    yield c
    c.stop_all()


async def client_for(nursery: trio.Nursery, cluster: Cluster, secret: bytes = SECRET,
                     node_id: int = CLIENT_ID) -> KvClient:
    # A short backoff cap: the test restarts nodes and wants the client back on them at once.
    plane = RpcPlane(RpcConfig(node_id=node_id, cluster_secret=secret, backoff_max_s=0.2))
    await nursery.start(plane.run)
    for i in IDS:
        plane.add_peer(i, cluster.url(i))
    return KvClient(plane, IDS, try_timeout_s=1.0)


async def find_leader(client: KvClient, alive: list[int], min_term: int = 0,
                      timeout_s: float = 20.0) -> tuple[int, int]:
    """(leader id, term) once a live node reports itself leader in a term >= min_term.

    All live nodes are asked at once every 10 ms, so a node that is still restarting does not
    delay the answer of the others (the measured election time is accurate to ~10 ms)."""
    found: list[tuple[int, int]] = []

    async def ask(i: int) -> None:
        try:
            st = await client.status(i, timeout_s=0.2)
        except (PeerUnavailable, RpcTimeout, ConnectionLost):
            return  # a node that is down or restarting
        if st.role == "leader" and st.term >= min_term:
            found.append((i, st.term))

    with trio.fail_after(timeout_s):
        while not found:
            async with trio.open_nursery() as nursery:
                for i in alive:
                    nursery.start_soon(ask, i)
                await trio.sleep(0.01)
    return max(found, key=lambda f: f[1])


async def wait_until_follows(client: KvClient, node: int, term: int,
                             timeout_s: float = 30.0) -> None:
    """Until `node` runs and has heard of `term` (a restarted member caught up with the
    leader's term)."""
    with trio.fail_after(timeout_s):
        while True:
            try:
                st = await client.status(node, timeout_s=0.2)
                if st.term >= term:
                    return
            except (PeerUnavailable, RpcTimeout, ConnectionLost):
                pass  # still starting
            await trio.sleep(0.01)


class Writers:
    """Concurrent proposers; every put that returned is recorded as acknowledged."""

    def __init__(self, client: KvClient):
        self.client = client
        self.acked: dict[str, bytes] = {}
        self.next = 0

    async def run(self, writer: int) -> None:
        while True:
            key = f"w{writer}-{self.next}"
            self.next += 1
            value = key.encode() * 3
            await self.client.put(key, value, timeout_s=60)
            self.acked[key] = value

    async def wait_for_more(self, n: int) -> None:
        target = len(self.acked) + n
        with trio.fail_after(60):
            while len(self.acked) < target:
                await trio.sleep(0.01)


async def check_all(client: KvClient, acked: dict[str, bytes]) -> None:
    for key, value in acked.items():
        got = await client.get(key, timeout_s=30)
        assert got == value, f"acknowledged {key} reads back {got!r}"


async def test_kill_the_leader_during_proposals(cluster, nursery):
    rounds = int(os.environ.get("OBJCACHE_KILL_ROUNDS", "20"))
    client = await client_for(nursery, cluster)
    leader, term = await find_leader(client, IDS)
    writers = Writers(KvClient(client.plane, IDS, try_timeout_s=1.0))
    async with trio.open_nursery() as load:
        for w in range(4):
            load.start_soon(writers.run, w)
        election_s, terms = [], []
        for _ in range(rounds):
            await writers.wait_for_more(50)
            leader, term = await find_leader(client, IDS, term)
            cluster.kill(leader)
            killed_at = trio.current_time()
            alive = [i for i in IDS if i != leader]
            _, new_term = await find_leader(client, alive, term + 1)
            election_s.append(trio.current_time() - killed_at)
            terms.append(new_term - term)
            term = new_term
            cluster.start(leader)  # back with its data directory: rejoins as a follower
            # The next kill leaves two of three running only once this one runs again: the
            # bound below is for an election among a live majority, not for a process start.
            await wait_until_follows(client, leader, term)
        await writers.wait_for_more(50)
        load.cancel_scope.cancel()
    print(f"elections after kill -9 (s): {[round(t, 3) for t in election_s]}, terms {terms}")
    # A follower times out within [T, 2T) of the last heartbeat (<= 1 tick before the kill);
    # then a PreVote and a vote round, each with an fsync: 0.2 s covers those, the 10 ms poll
    # and scheduling on a shared machine. Measured: 0.47-0.97 s (T = 0.5 s).
    # A split vote (both survivors time out within one round trip, ~2 % of elections here;
    # seen as a term that moved by 2) costs one more randomized timeout: Raft's liveness is
    # probabilistic (paper §5.2), so those get 4T.
    for took, moved in zip(election_s, terms, strict=True):
        bound = 2 * ELECTION_TIMEOUT_S if moved == 1 else 4 * ELECTION_TIMEOUT_S
        assert took < bound + 0.2, (election_s, terms)
    assert sum(moved > 1 for moved in terms) <= max(1, rounds // 5), terms
    await check_all(client, writers.acked)


async def test_full_restart_keeps_state(cluster, nursery):
    client = await client_for(nursery, cluster)
    acked = {}
    for i in range(100):
        await client.put(f"k{i}", b"v%d" % i)
        acked[f"k{i}"] = b"v%d" % i
    for i in IDS:
        cluster.stop(i)
    for i in IDS:
        cluster.start(i)
    await check_all(client, acked)
    await client.put("after", b"restart")
    assert await client.get("after") == b"restart"


async def test_wrong_secret_is_refused(cluster, nursery):
    client = await client_for(nursery, cluster)
    await find_leader(client, IDS)
    intruder = await client_for(nursery, cluster, secret=b"wrong-secret-wrong-secret", node_id=4)
    with pytest.raises(PeerUnavailable):
        await intruder.status(1, timeout_s=1.0)
    st = await client.status(1)
    assert st.auth_failures >= 1


async def test_follower_far_behind_catches_up_from_a_snapshot(tmp_path, nursery):
    # Paper §7: the leader compacted its log past what the follower has, so it sends the
    # state machine (a LevelDB iteration) in InstallSnapshot pieces.
    cluster = Cluster(tmp_path, ("--compact-after-entries", "50", "--compact-keep-entries", "5"))
    try:
        for i in IDS:
            cluster.start(i)
        client = await client_for(nursery, cluster)
        leader, _ = await find_leader(client, IDS)
        lagging = next(i for i in IDS if i != leader)
        cluster.stop(lagging)
        acked = {}
        for i in range(300):
            await client.put(f"s{i}", b"%d" % i)
            acked[f"s{i}"] = b"%d" % i
        with trio.fail_after(20):
            while (await client.status(leader)).first_index <= 60:
                await trio.sleep(0.05)
        cluster.start(lagging)
        leader_commit = (await client.status(leader)).commit
        with trio.fail_after(30):
            while True:
                try:
                    if (await client.status(lagging, timeout_s=0.5)).applied >= leader_commit:
                        break
                except (PeerUnavailable, RpcTimeout, ConnectionLost):
                    pass  # still starting
                await trio.sleep(0.05)
        # Its log now starts after the snapshot it installed, not at 1.
        assert (await client.status(lagging)).first_index > 60
        for key, value in acked.items():  # read at the lagging node itself (ReadIndex there)
            reply = await client.plane.call(lagging, KvGet(key), timeout_s=10)
            assert reply.value == value, key
    finally:
        cluster.stop_all()
