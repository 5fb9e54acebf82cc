"""The driver-facing contract of RawNode: typed refusals, the Ready ordering rule, restart."""

from __future__ import annotations

import random

import pytest

from raft.config import Config
from raft.errors import NotLeader, ProposalDropped
from raft.memory_storage import MemoryStorage
from raft.messages import RequestVoteResponse
from raft.node import RawNode, bootstrap_log
from raft.ready import Ready, Role


def make_group(n: int) -> tuple[dict[int, RawNode], dict[int, MemoryStorage]]:
    nodes, storages = {}, {}
    for i in range(1, n + 1):
        storages[i] = MemoryStorage()
        storages[i].save_sync(*bootstrap_log(list(range(1, n + 1))))
        nodes[i] = RawNode(Config(id=i), storages[i], random.Random(i))
    pump(nodes, storages)  # apply the bootstrap configuration: nobody campaigns before that
    return nodes, storages


def pump(nodes: dict[int, RawNode], storages: dict[int, MemoryStorage]) -> list[Ready]:
    """Handle Readies and deliver messages until quiet; returns every Ready seen."""
    seen: list[Ready] = []
    for _ in range(100):
        msgs = []
        for i, node in nodes.items():
            if node.has_ready():
                rd = node.ready()
                seen.append(rd)
                storages[i].save_sync(rd.hard_state, rd.entries)
                msgs += [*rd.messages, *rd.messages_after_persist]
                node.advance(rd)
        for m in msgs:
            nodes[m.to].step(m)
        if not msgs and not any(n.has_ready() for n in nodes.values()):
            return seen
    raise AssertionError("did not settle")


def test_proposal_at_a_follower_names_the_leader() -> None:
    nodes, storages = make_group(3)
    nodes[1].campaign()
    pump(nodes, storages)
    with pytest.raises(NotLeader) as info:
        nodes[2].propose(b"x")
    assert info.value.leader_hint == 1


def test_vote_grants_wait_for_persistence() -> None:
    """Paper §5 / PySyncObj #84: a vote is durable before the candidate hears of it."""
    nodes, storages = make_group(3)
    nodes[1].campaign()
    readies = pump(nodes, storages)
    for rd in readies:
        assert not any(isinstance(m, RequestVoteResponse) for m in rd.messages)
    grants = [rd for rd in readies if any(
        isinstance(m, RequestVoteResponse) for m in rd.messages_after_persist)]
    assert grants and all(rd.hard_state is not None and rd.hard_state.vote == 1 for rd in grants)


def test_one_ready_at_a_time() -> None:
    nodes, _ = make_group(1)
    nodes[1].campaign()
    assert nodes[1].has_ready()
    nodes[1].ready()
    with pytest.raises(AssertionError):
        nodes[1].ready()


def test_restart_keeps_term_vote_and_log() -> None:
    nodes, storages = make_group(3)
    nodes[1].campaign()
    pump(nodes, storages)
    nodes[1].propose(b"x")
    pump(nodes, storages)
    before = nodes[2].status()
    restarted = RawNode(Config(id=2, applied=before.applied), storages[2], random.Random(9))
    after = restarted.status()
    assert (after.term, after.vote, after.commit, after.last_index) == (
        before.term, before.vote, before.commit, before.last_index)
    assert after.conf == before.conf and after.role is Role.FOLLOWER
    assert not restarted.raft.log.has_next_committed_entries()


def test_uncommitted_payload_is_bounded() -> None:
    storage = MemoryStorage()
    storage.save_sync(*bootstrap_log([1]))
    node = RawNode(Config(id=1, max_uncommitted_bytes=10), storage, random.Random(1))
    nodes, storages = {1: node}, {1: storage}
    pump(nodes, storages)
    node.campaign()
    pump(nodes, storages)
    node.propose(b"x" * 8)
    with pytest.raises(ProposalDropped):
        node.propose(b"y" * 8)
    pump(nodes, storages)  # persisted, committed, applied: room again
    node.propose(b"y" * 8)
