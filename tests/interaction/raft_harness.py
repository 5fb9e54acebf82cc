"""Drives RawNodes step by step from a text script and prints a deterministic transcript.

The style of etcd-io/raft's datadriven interaction tests: every command prints what happened,
the transcript is compared with a golden file. Messages travel only when a script says so
(`deliver-msgs`, `stabilize`), so every interleaving in a script is deliberate.

Commands (ids are node ids):
  add-nodes N [join] [pre_vote=false] [check_quorum=false] [max_inflight=K] [max_size=B]
                      [snapshot_retry=H]
                      N new members; founding members share a bootstrapped log, `join`
                      members start empty (to be added with add-learner)
  campaign ID | propose ID DATA | transfer-leader ID TO | read-index ID CTX
  add-learner ID NODE | promote ID NODE | remove ID NODE   (proposed at leader ID)
  tick ID N | tick-heartbeat ID | tick-election ID
  process-ready [ID...] | deliver-msgs [ID...] | stabilize [ID...]
  partition ID... (cut these off from the others) | heal
  compact ID INDEX     (the application snapshots at INDEX and compacts the log)
  crash-restart ID     (memory storage survives: everything acknowledged was saved)
  status ID | raft-log ID
"""

from __future__ import annotations

import random
import shlex

from raft.conf_change import ConfChange, ConfChangeType
from raft.config import Config
from raft.describe import describe_entry, describe_message, describe_meta
from raft.errors import RaftError
from raft.memory_storage import MemoryStorage
from raft.messages import Message
from raft.node import RawNode, bootstrap_log
from raft.ready import Ready
from raft.types import EntryType

SNAPSHOT_CHUNK_BYTES = 8  # tiny, so transcripts show a snapshot travelling in pieces


class App:
    """The state machine: the list of applied payloads; a snapshot is that list joined."""

    def __init__(self) -> None:
        self.applied: list[bytes] = []
        self.snapshot: tuple[object, bytes] | None = None  # (meta, data)

    def snapshot_data(self) -> bytes:
        return b"|".join(self.applied)


class Harness:
    def __init__(self) -> None:
        self.nodes: dict[int, RawNode] = {}
        self.configs: dict[int, Config] = {}
        self.storages: dict[int, MemoryStorage] = {}
        self.apps: dict[int, App] = {}
        self.in_flight: list[Message] = []
        self.isolated: set[int] | None = None
        self.out: list[str] = []

    def run(self, script: str) -> str:
        for raw in script.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                self.out.append(raw)
                continue
            self.out.append(f"> {line}")
            args = shlex.split(line)
            command = getattr(self, "cmd_" + args[0].replace("-", "_"))
            try:
                command(*args[1:])
            except RaftError as e:
                self.print(f"error: {type(e).__name__}: {e}")
        return "\n".join(self.out) + "\n"

    def print(self, text: str, indent: int = 1) -> None:
        self.out.append("  " * indent + text)

    # -- set-up --------------------------------------------------------------------------------

    def cmd_add_nodes(self, n: str, *opts: str) -> None:
        join = "join" in opts
        flags = dict(o.split("=") for o in opts if "=" in o)
        first = max(self.nodes, default=0) + 1
        ids = list(range(first, first + int(n)))
        for node_id in ids:
            storage = MemoryStorage()
            if not join:
                hard_state, entries = bootstrap_log(ids)
                storage.save_sync(hard_state, entries)
            self.storages[node_id] = storage
            self.apps[node_id] = App()
            self.configs[node_id] = Config(
                id=node_id,
                snapshot_chunk_bytes=SNAPSHOT_CHUNK_BYTES,
                pre_vote=flags.get("pre_vote", "true") == "true",
                check_quorum=flags.get("check_quorum", "true") == "true",
                max_inflight_msgs=int(flags.get("max_inflight", "64")),
                max_size_per_msg_bytes=int(flags.get("max_size", str(1 << 20))),
                snapshot_retry_heartbeats=int(flags.get("snapshot_retry", "5")),
            )
            self._start(node_id)
        self.process(ids)

    def _start(self, node_id: int) -> None:
        config = self.configs[node_id]
        self.nodes[node_id] = RawNode(config, self.storages[node_id], random.Random(node_id))

    def cmd_crash_restart(self, node_id: str) -> None:
        nid = int(node_id)
        self.in_flight = [m for m in self.in_flight if m.to != nid]
        app = self.apps[nid]
        # Memory is lost: the app restarts from its snapshot, the log is re-applied after it.
        data = app.snapshot[1] if app.snapshot and self.storages[nid].snapshot else b""
        app.applied = data.split(b"|") if data else []
        self._start(nid)
        self.print(f"restarted {nid}: {self._status_line(nid)}")

    # -- inputs --------------------------------------------------------------------------------

    def cmd_campaign(self, node_id: str) -> None:
        self.nodes[int(node_id)].campaign()

    def cmd_propose(self, node_id: str, data: str) -> None:
        index = self.nodes[int(node_id)].propose(data.encode())
        self.print(f"proposed at index {index}")

    def _conf_change(self, node_id: str, kind: ConfChangeType, target: str) -> None:
        index = self.nodes[int(node_id)].propose_conf_change(ConfChange(kind, int(target)))
        self.print(f"proposed {kind.name.lower()} {target} at index {index}")

    def cmd_add_learner(self, node_id: str, target: str) -> None:
        self._conf_change(node_id, ConfChangeType.ADD_LEARNER, target)

    def cmd_promote(self, node_id: str, target: str) -> None:
        self._conf_change(node_id, ConfChangeType.PROMOTE, target)

    def cmd_remove(self, node_id: str, target: str) -> None:
        self._conf_change(node_id, ConfChangeType.REMOVE, target)

    def cmd_transfer_leader(self, node_id: str, to: str) -> None:
        self.nodes[int(node_id)].transfer_leader(int(to))

    def cmd_read_index(self, node_id: str, context: str) -> None:
        self.nodes[int(node_id)].read_index(context.encode())

    def cmd_tick(self, node_id: str, n: str) -> None:
        for _ in range(int(n)):
            self.nodes[int(node_id)].tick()

    def cmd_tick_heartbeat(self, node_id: str) -> None:
        self.cmd_tick(node_id, str(self.configs[int(node_id)].heartbeat_ticks))

    def cmd_tick_election(self, node_id: str) -> None:
        r = self.nodes[int(node_id)].raft
        timeout = r.randomized_election_timeout
        if r.role.value == "leader":
            timeout = self.configs[int(node_id)].election_timeout_ticks
        self.cmd_tick(node_id, str(max(1, timeout - r.election_elapsed)))

    def cmd_partition(self, *ids: str) -> None:
        self.isolated = {int(i) for i in ids}

    def cmd_heal(self) -> None:
        self.isolated = None

    def cmd_compact(self, node_id: str, index: str) -> None:
        nid, idx = int(node_id), int(index)
        app, node = self.apps[nid], self.nodes[nid]
        assert idx == node.raft.log.applied, "the harness snapshots at the applied index"
        meta = node.snapshot_meta()
        app.snapshot = (meta, app.snapshot_data())
        self.storages[nid].create_snapshot(meta.index, meta.conf)
        self.storages[nid].compact_sync(meta.index)
        self.print(f"snapshot {describe_meta(meta)}; log now starts at {meta.index + 1}")

    # -- outputs -------------------------------------------------------------------------------

    def _ids(self, ids: tuple[str, ...]) -> list[int]:
        return [int(i) for i in ids] if ids else sorted(self.nodes)

    def cmd_process_ready(self, *ids: str) -> None:
        self.process(self._ids(ids))

    def process(self, ids: list[int]) -> bool:
        busy = False
        for nid in ids:
            node = self.nodes[nid]
            if node.has_ready():
                busy = True
                self.handle_ready(nid, node.ready())
        return busy

    def handle_ready(self, nid: int, rd: Ready) -> None:
        self.print(f"{nid} handling Ready", 0)
        self.print_ready(rd)
        self.in_flight.extend(rd.messages)
        storage, app = self.storages[nid], self.apps[nid]
        if rd.snapshot is not None:
            app.applied = rd.snapshot.data.split(b"|") if rd.snapshot.data else []
            app.snapshot = (rd.snapshot.meta, rd.snapshot.data)
        storage.save_sync(rd.hard_state, rd.entries, rd.snapshot.meta if rd.snapshot else None)
        self.in_flight.extend(rd.messages_after_persist)
        app.applied.extend(e.data for e in rd.committed_entries if e.type is EntryType.NORMAL)
        self.nodes[nid].advance(rd)
        for req in rd.snapshot_requests:
            self.supply_snapshot_piece(nid, req.to, req.offset)

    def supply_snapshot_piece(self, nid: int, to: int, offset: int) -> None:
        meta, data = self.apps[nid].snapshot  # type: ignore[misc]
        piece = data[offset : offset + SNAPSHOT_CHUNK_BYTES]
        done = offset + len(piece) >= len(data)
        self.nodes[nid].send_snapshot_piece(to, meta, offset, piece, done)  # type: ignore[arg-type]

    def print_ready(self, rd: Ready) -> None:
        if rd.soft_state:
            self.print(f"Lead:{rd.soft_state.lead} State:{rd.soft_state.role.value}")
        if rd.hard_state:
            hs = rd.hard_state
            self.print(f"HardState Term:{hs.term} Vote:{hs.vote} Commit:{hs.commit}")
        if rd.entries:
            self.print("Entries: " + ", ".join(describe_entry(e) for e in rd.entries))
        if rd.snapshot:
            self.print(f"Snapshot: {describe_meta(rd.snapshot.meta)} data={rd.snapshot.data!r}")
        if rd.committed_entries:
            committed = ", ".join(describe_entry(e) for e in rd.committed_entries)
            self.print("CommittedEntries: " + committed)
        for title, msgs in (("Messages", rd.messages), ("AfterPersist", rd.messages_after_persist)):
            if msgs:
                self.print(f"{title}:")
                for m in msgs:
                    self.print(describe_message(m), 2)
        for rs in rd.read_states:
            self.print(f"ReadState: index={rs.index} context={rs.context.decode()}")
        for req in rd.snapshot_requests:
            self.print(f"SnapshotRequest: to={req.to} index={req.index} offset={req.offset}")

    def cmd_deliver_msgs(self, *ids: str) -> None:
        self.deliver(self._ids(ids))

    def deliver(self, ids: list[int]) -> bool:
        wanted = set(ids)
        now = [m for m in self.in_flight if m.to in wanted]
        self.in_flight = [m for m in self.in_flight if m.to not in wanted]
        for m in now:
            if self._cut(m):
                self.print(f"dropped: {describe_message(m)}", 0)
                continue
            self.print(describe_message(m), 0)
            if m.to in self.nodes:
                self.nodes[m.to].step(m)
        return bool(now)

    def _cut(self, m: Message) -> bool:
        return self.isolated is not None and ((m.frm in self.isolated) != (m.to in self.isolated))

    def cmd_stabilize(self, *ids: str) -> None:
        chosen = self._ids(ids)
        for _ in range(1000):
            busy = self.process(chosen)
            busy = self.deliver(chosen) or busy
            if not busy:
                return
        raise AssertionError("stabilize did not converge")

    def _status_line(self, nid: int) -> str:
        st = self.nodes[nid].status()
        return (
            f"{st.role.value} term={st.term} vote={st.vote} lead={st.lead} commit={st.commit}"
            f" applied={st.applied} last={st.last_index} voters={sorted(st.conf.voters)}"
            f" learners={sorted(st.conf.learners)}"
        )

    def cmd_status(self, *ids: str) -> None:
        for nid in self._ids(ids):
            self.print(f"{nid}: {self._status_line(nid)}")
            for peer, desc in sorted(self.nodes[nid].status().progress.items()):
                self.print(f"{peer}: {desc}", 2)

    def cmd_raft_log(self, *ids: str) -> None:
        for nid in self._ids(ids):
            log = self.nodes[nid].raft.log
            entries = log.slice(log.first_index(), log.last_index() + 1, 1 << 30)
            text = ", ".join(describe_entry(e) for e in entries) or "(empty)"
            self.print(f"{nid}: first={log.first_index()} {text}")
            applied = b" ".join(self.apps[nid].applied).decode()
            self.print(f"{nid}: applied data: {applied or '(none)'}")
