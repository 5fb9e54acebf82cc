"""Network namespaces for a fault campaign: one namespace per node, each with its own address on
a private bridge, and link cuts between chosen nodes.

    net = FaultNet(nodes=6).create()          # bridge + 6 namespaces, 10.X.Y.1 is the host side
    net.addr(3)                               # "10.X.Y.13": node 3's address
    net.exec_argv(3, [...])                   # the argv that runs a command inside node 3's netns
    net.cut(1, 4); net.heal_all()             # a link cut between two nodes (both directions)
    net.destroy()                             # idempotent; also run at interpreter exit

Rules:
- Everything is made with iproute2 (`ip`): a bridge in the host namespace holds the host side of
  one veth pair per node; the node side is `eth0` in the node's namespace. The host (the test,
  its NFS clients, the admin CLI, the S3 proxy) reaches every node on the bridge address.
- A cut is a `prohibit` route to the peer's /32 in each of the two namespaces: packets between
  the two are refused in both directions (established connections too: a route change
  invalidates the sockets' cached routes), while both still reach the host.
- Names carry a per-run tag (interface names are at most 15 bytes); `sweep()` removes what a
  killed earlier run left behind (names with the campaign prefix), so a failed run never
  poisons the next one.
"""

from __future__ import annotations

import atexit
import random
import subprocess

PREFIX = "ocf"  # every namespace, bridge and veth of a campaign starts with this


class NetError(RuntimeError):
    pass


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    res = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                         timeout=30)
    if check and res.returncode != 0:
        raise NetError(f"{' '.join(argv)}: {res.stderr.strip()}")
    return res


def sweep() -> None:
    """Remove every namespace and link a campaign made (a killed run leaves them)."""
    for name in ip("netns", "list").stdout.split():
        if name.startswith(PREFIX):
            ip("netns", "del", name, check=False)
    for line in ip("-o", "link", "show").stdout.splitlines():
        name = line.split(":", 2)[1].strip().split("@")[0]
        if name.startswith(PREFIX):
            ip("link", "del", name, check=False)


class FaultNet:
    def __init__(self, nodes: int, *, seed: int | None = None) -> None:
        rng = random.Random(seed)
        self.tag = f"{rng.randrange(16**4):04x}"
        self.nodes = nodes
        self.subnet = self._free_subnet(rng)
        self.bridge = f"{PREFIX}b{self.tag}"
        self.cuts: set[tuple[int, int]] = set()
        self.created = False

    @staticmethod
    def _free_subnet(rng: random.Random) -> str:
        used = ip("-o", "-4", "addr", "show").stdout
        for _ in range(100):
            net = f"10.{rng.randrange(200, 250)}.{rng.randrange(1, 250)}"
            if f" {net}." not in used:
                return net
        raise NetError("no free 10.x.y.0/24")

    @property
    def host_addr(self) -> str:
        return f"{self.subnet}.1"

    def addr(self, node_id: int) -> str:
        assert 1 <= node_id <= 200, node_id
        return f"{self.subnet}.{10 + node_id}"

    def ns(self, node_id: int) -> str:
        return f"{PREFIX}{self.tag}n{node_id}"

    def exec_argv(self, node_id: int, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(node_id), *argv]

    def create(self) -> FaultNet:
        atexit.register(self.destroy)
        self.created = True
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.host_addr}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for i in range(1, self.nodes + 1):
            self.add_node(i)
        return self

    def add_node(self, node_id: int) -> None:
        ns, host_end = self.ns(node_id), f"{PREFIX}{self.tag}h{node_id}"
        ip("netns", "add", ns)
        ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("link", "set", host_end, "master", self.bridge)
        ip("link", "set", host_end, "up")
        ip("addr", "add", f"{self.addr(node_id)}/24", "dev", "eth0", ns=ns)
        ip("link", "set", "eth0", "up", ns=ns)
        ip("link", "set", "lo", "up", ns=ns)

    def cut(self, a: int, b: int) -> None:
        """Refuse every packet between nodes a and b (both directions)."""
        pair = (min(a, b), max(a, b))
        if pair in self.cuts:
            return
        ip("route", "add", "prohibit", f"{self.addr(b)}/32", ns=self.ns(a))
        ip("route", "add", "prohibit", f"{self.addr(a)}/32", ns=self.ns(b))
        self.cuts.add(pair)

    def partition(self, side: set[int], others: set[int]) -> None:
        for a in side:
            for b in others:
                self.cut(a, b)

    def heal_all(self) -> None:
        for a, b in sorted(self.cuts):
            ip("route", "del", "prohibit", f"{self.addr(b)}/32", ns=self.ns(a), check=False)
            ip("route", "del", "prohibit", f"{self.addr(a)}/32", ns=self.ns(b), check=False)
        self.cuts.clear()

    def destroy(self) -> None:
        if not self.created:
            return
        self.created = False
        for i in range(1, self.nodes + 1):
            ip("netns", "del", self.ns(i), check=False)  # its veth pair goes with it
        ip("link", "del", self.bridge, check=False)
