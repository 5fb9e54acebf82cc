"""Drives txn cores and state machines step by step from a text script (TESTING.md tier 2).

Each group is one leader: a TxnState over a MemKv, a Coordinator and a Participant. Proposals
wait until `apply`; messages wait until `deliver` or `drop`. Commands (one per `> ` line):
  groups N                     groups 0..N-1, each with a leader
  start NAME G P:OPS ...       a client asks group G to run txn NAME; OPS like set:5=a,create:7=b
  deliver [N] / drop [N]       deliver / lose the first N queued messages (default: all queued)
  apply G|all                  apply the proposals pending in a group
  tick G|all [N]               N ticks to both cores of the group(s)
  stabilize                    apply and deliver until nothing is pending
  crash G [keep]               the leader goes: in-memory state and unapplied proposals lost
                               (keep: the proposals were replicated and get applied)
  elect G                      a new leader rebuilds its cores from the state machine
  state G|all                  locks, prepared, open decisions and objects
The transcript echoes the script and prints every proposal, apply, message and reply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from txn import coordinator as co
from txn import participant as pa
from txn.actions import Action, Propose, Reply, Send
from txn.kv import KvBatch, KvView, MemKv, Overlay
from txn.messages import (
    DecisionNotice,
    FinishAck,
    OutcomeAnswer,
    OutcomeQuery,
    PrepareRequest,
    PrepareVote,
)
from txn.records import TxnRecord
from txn.state import TxnState


class TextApp:
    """Ops are text: `set:INO=VALUE` or `create:INO=VALUE` (EEXIST if INO has a value)."""

    def _parse(self, ops: bytes) -> list[tuple[str, int, bytes]]:
        out = []
        for item in ops.decode().split(","):
            kind, rest = item.split(":")
            ino, value = rest.split("=")
            out.append((kind, int(ino), value.encode()))
        return out

    def locks_of(self, ops: bytes) -> tuple[int, ...]:
        return tuple(sorted({ino for _, ino, _ in self._parse(ops)}))

    def check(self, ops: bytes, view: KvView) -> str | None:
        for kind, ino, _ in self._parse(ops):
            if kind == "create" and view.get(b"obj/%d" % ino) is not None:
                return "EEXIST"
        return None

    def apply(self, ops: bytes, view: KvView, batch: KvBatch) -> None:
        for _, ino, value in self._parse(ops):
            batch.put(b"obj/%d" % ino, value)


@dataclass
class HGroup:
    gid: int
    kv: MemKv = field(default_factory=MemKv)
    pending: list[TxnRecord] = field(default_factory=list)
    leader: bool = False
    coord: co.Coordinator | None = None
    part: pa.Participant | None = None


_TO_COORDINATOR = {PrepareVote: co.VoteReceived, FinishAck: co.AckReceived,
                   OutcomeQuery: co.QueryReceived}
_TO_PARTICIPANT = {PrepareRequest: pa.PrepareReceived, DecisionNotice: pa.DecisionReceived,
                   OutcomeAnswer: pa.DecisionReceived}


class TxnHarness:
    def __init__(self) -> None:
        self.app = TextApp()
        self.state = TxnState(self.app)
        self.groups: list[HGroup] = []
        self.net: list[tuple[int, int, object]] = []
        self.names: dict[bytes, str] = {}
        self.out: list[str] = []
        self.commands: dict[str, Callable[[list[str]], None]] = {
            "groups": self._groups, "start": self._start, "deliver": self._deliver,
            "drop": self._drop, "apply": self._apply, "tick": self._tick,
            "stabilize": self._stabilize, "crash": self._crash, "elect": self._elect,
            "state": self._state,
        }

    def run(self, script: str) -> str:
        for line in script.splitlines():
            self.out.append(line)
            if line.startswith("> "):
                cmd, *args = line[2:].split()
                self.commands[cmd](args)
        return "\n".join(self.out) + "\n"

    # -- formatting ----------------------------------------------------------------------

    def fmt(self, obj: object) -> str:
        parts = [type(obj).__name__]
        for f in dataclasses.fields(obj):  # type: ignore[arg-type]
            value = getattr(obj, f.name)
            parts.append(f"{f.name}={self._value(value)}")
        return " ".join(parts)

    def _value(self, value: object) -> str:
        if isinstance(value, bytes):
            return self.names.get(value) or repr(value.decode())
        if dataclasses.is_dataclass(value):
            return "(" + self.fmt(value) + ")"
        if isinstance(value, tuple):
            return "[" + ",".join(self._value(v) for v in value) + "]"
        return str(value)

    def say(self, text: str) -> None:
        self.out.append("  " + text)

    # -- actions -------------------------------------------------------------------------

    def perform(self, g: HGroup, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Propose):
                self.say(f"{g.gid} propose {self.fmt(a.record)}")
                g.pending.append(a.record)
            elif isinstance(a, Send):
                self.say(f"{g.gid}->{a.group} {self.fmt(a.message)}")
                self.net.append((g.gid, a.group, a.message))
            else:
                assert isinstance(a, Reply)
                o = a.outcome
                text = "retry" if o is None else "commit" if o.commit else f"abort({o.reason})"
                self.say(f"{g.gid} reply {self.names[a.txn_id]} {text}")

    def _cores(self, g: HGroup) -> tuple[co.Coordinator, pa.Participant]:
        assert g.leader and g.coord is not None and g.part is not None, f"{g.gid} has no leader"
        return g.coord, g.part

    # -- commands ------------------------------------------------------------------------

    def _groups(self, args: list[str]) -> None:
        self.groups = [HGroup(i) for i in range(int(args[0]))]
        for g in self.groups:
            self._elect([str(g.gid)])

    def _start(self, args: list[str]) -> None:
        name, gid, *parts = args
        txn = name.encode().ljust(16, b".")
        self.names[txn] = name
        g = self.groups[int(gid)]
        ops = tuple((int(p.split(":", 1)[0]), p.split(":", 1)[1].encode()) for p in parts)
        start = co.Start(txn, ops, known=self.state.outcome(g.kv, txn))
        self.perform(g, self._cores(g)[0].handle(start))

    def _deliver(self, args: list[str]) -> None:
        n = int(args[0]) if args else len(self.net)
        batch, self.net = self.net[:n], self.net[n:]
        for src, dst, msg in batch:
            g = self.groups[dst]
            self.say(f"deliver {src}->{dst} {type(msg).__name__}")
            if not g.leader:
                self.say(f"{dst} has no leader: dropped")
                continue
            coord, part = self._cores(g)
            if type(msg) in _TO_COORDINATOR:
                self.perform(g, coord.handle(_TO_COORDINATOR[type(msg)](msg)))  # type: ignore[operator]
            else:
                self.perform(g, part.handle(_TO_PARTICIPANT[type(msg)](msg)))  # type: ignore[operator]

    def _drop(self, args: list[str]) -> None:
        n = int(args[0]) if args else len(self.net)
        for src, dst, msg in self.net[:n]:
            self.say(f"drop {src}->{dst} {type(msg).__name__}")
        self.net = self.net[n:]

    def _targets(self, arg: str) -> list[HGroup]:
        return self.groups if arg == "all" else [self.groups[int(arg)]]

    def _apply(self, args: list[str]) -> None:
        for g in self._targets(args[0]):
            self._apply_group(g, feed=True)

    def _apply_group(self, g: HGroup, feed: bool) -> None:
        while g.pending:
            record = g.pending.pop(0)
            batch = Overlay(g.kv)
            result = self.state.apply(record, batch, batch)
            batch.commit()
            self.say(f"{g.gid} applied {type(record).__name__} => {self.fmt(result)}")
            if feed and g.leader:
                coord, part = self._cores(g)
                self.perform(g, coord.handle(co.LogApplied(result)))
                self.perform(g, part.handle(pa.LogApplied(result)))

    def _tick(self, args: list[str]) -> None:
        for _ in range(int(args[1]) if len(args) > 1 else 1):
            for g in self._targets(args[0]):
                if g.leader:
                    coord, part = self._cores(g)
                    self.perform(g, coord.handle(co.Tick()) + part.handle(pa.Tick()))

    def _stabilize(self, _args: list[str]) -> None:
        for _ in range(100):
            if not self.net and not any(g.pending for g in self.groups):
                return
            self._apply(["all"])
            self._deliver([])
        raise AssertionError("did not stabilize")

    def _crash(self, args: list[str]) -> None:
        g = self.groups[int(args[0])]
        coord, part = self._cores(g)
        self.perform(g, coord.handle(co.LostLeadership()) + part.handle(pa.LostLeadership()))
        g.leader, g.coord, g.part = False, None, None
        if args[1:] == ["keep"]:
            self._apply_group(g, feed=False)
        for record in g.pending:
            self.say(f"{g.gid} lost {type(record).__name__}")
        g.pending.clear()

    def _elect(self, args: list[str]) -> None:
        g = self.groups[int(args[0])]
        g.coord, g.part = co.Coordinator(g.gid), pa.Participant(g.gid, self.app)
        g.leader = True
        self.perform(g, g.coord.handle(co.BecameLeader(tuple(self.state.decisions(g.kv)))))
        self.perform(g, g.part.handle(pa.BecameLeader(tuple(self.state.prepared(g.kv)))))

    def _state(self, args: list[str]) -> None:
        for g in self._targets(args[0]):
            locks = {ino: self.names.get(t, "?") for ino, t in self.state.locks(g.kv).items()}
            prepared = [self.names.get(p.txn_id, "?") for p in self.state.prepared(g.kv)]
            decided = [self.names.get(d.txn_id, "?") for d in self.state.decisions(g.kv)]
            objs = {int(k[4:]): v.decode() for k, v in g.kv.scan(b"obj/", 1000)}
            self.say(f"{g.gid} locks={locks} prepared={prepared} decisions={decided} "
                     f"objects={objs}")
