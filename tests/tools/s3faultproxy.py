"""An HTTP reverse proxy in front of an S3 server that injects the faults S3 clients must survive.

    proxy = FaultProxy("http://127.0.0.1:8333", slowdown_rate=0.3, reset_rate=0.1).start()
    ... point the client at proxy.endpoint ...
    proxy.inject("stall", 2)   # the next two requests stall, whatever the rates say
    proxy.counts               # {"requests": .., "forwarded": .., "slowdown": .., ...}
    proxy.stop()

Per request, one action:
- "forward": the request and the response pass byte for byte (keep-alive, chunked bodies and
  `Expect: 100-continue` included).
- "slowdown": answer 503 SlowDown (S3's XML error) without forwarding, and close.
- "reset": a TCP RST (SO_LINGER 0) instead of forwarding: the server never saw the request.
- "reset_after": forward, read the server's whole response, then RST the client: the server
  did the work but the client does not know (the case of non-idempotent requests).
- "stall": hold the request `stall_s` seconds without forwarding, then close.
A slow server: `delay_s` (settable at any time) holds every forwarded request that long first.

Thread-based (a thread per client connection), so that it serves sync and trio code alike.
"""

from __future__ import annotations

import collections
import contextlib
import random
import select
import socket
import struct
import threading
import time
from typing import BinaryIO
from urllib.parse import urlsplit

ACTIONS = ("forward", "slowdown", "reset", "reset_after", "stall")
MAX_HEAD_BYTES = 64 << 10
BLOCK = 64 << 10
SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        *,
        slowdown_rate: float = 0.0,
        reset_rate: float = 0.0,
        reset_after_rate: float = 0.0,
        stall_rate: float = 0.0,
        stall_s: float = 5.0,
        delay_s: float = 0.0,
        seed: int | None = None,
    ) -> None:
        u = urlsplit(upstream)
        assert u.scheme == "http" and u.hostname and u.port, upstream
        self.upstream = (u.hostname, u.port)
        self.stall_s = stall_s
        self.delay_s = delay_s
        self.rates: dict[str, float] = {}
        self.set_rates(slowdown=slowdown_rate, reset=reset_rate, reset_after=reset_after_rate,
                       stall=stall_rate)
        self.counts: collections.Counter[str] = collections.Counter()
        self._rng = random.Random(seed)
        self._forced: collections.deque[str] = collections.deque()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._peers: set[_Peer] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    @property
    def endpoint(self) -> str:
        assert self._listener is not None, "not started"
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    def set_rates(self, **rates: float) -> None:
        """Fault rates by action name (slowdown, reset, reset_after, stall); their sum <= 1."""
        for name, rate in rates.items():
            assert name in ACTIONS[1:] and 0.0 <= rate <= 1.0, (name, rate)
        self.rates = {**self.rates, **rates}
        assert sum(self.rates.values()) <= 1.0 + 1e-9, self.rates

    def inject(self, action: str, count: int = 1) -> None:
        """The next `count` requests get `action`, before the rates are consulted."""
        assert action in ACTIONS, action
        with self._lock:
            self._forced.extend([action] * count)

    def _choose(self) -> str:
        with self._lock:
            self.counts["requests"] += 1
            if self._forced:
                action = self._forced.popleft()
            else:
                x = self._rng.random()
                action = "forward"
                for name, rate in self.rates.items():
                    if x < rate:
                        action = name
                        break
                    x -= rate
            self.counts[action if action != "forward" else "forwarded"] += 1
            return action

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> FaultProxy:
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(0.2)  # the accept loop looks at _stopping this often
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            peers = list(self._peers)
        for peer in peers:
            peer.wake()
        for t in self._threads:
            t.join(timeout=5)
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        t.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [t]

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            sock.settimeout(None)
            self._spawn(self._serve, self._track(_Peer(sock)))

    def _track(self, peer: _Peer) -> _Peer:
        with self._lock:
            self._peers.add(peer)
        return peer

    def _untrack(self, peer: _Peer) -> None:
        peer.close()
        with self._lock:
            self._peers.discard(peer)

    # -- one client connection --------------------------------------------------------------

    def _serve(self, client: _Peer) -> None:
        up: _Peer | None = None
        try:
            while not self._stopping.is_set():
                head = _read_head(client.rfile)
                if head is None:
                    return
                if up is None or up.closed or up.stale():
                    if up is not None:
                        self._untrack(up)
                    up = self._track(_Peer(socket.create_connection(self.upstream)))
                if not self._one(head, client, up):
                    return
        except (OSError, ValueError):
            return  # either side went away (or stop() woke us): the client sees a close
        finally:
            if up is not None:
                self._untrack(up)
            self._untrack(client)

    def _one(self, head: bytes, client: _Peer, up: _Peer) -> bool:
        """Handle one request; False when the client connection is to be closed."""
        headers = _headers(head)
        expect = headers.get("expect", "").lower() == "100-continue"
        action = self._choose()
        if action == "reset":
            client.reset()
            return False
        if action == "stall":
            self._stopping.wait(self.stall_s)
            return False
        if action == "slowdown":
            if not expect:
                _relay_body(client.rfile, headers, None)  # read and drop it
            client.sock.sendall(_slowdown_response())
            return False
        if self.delay_s:
            self._stopping.wait(self.delay_s)
        up.sock.sendall(head)
        method = head.split(b" ", 1)[0].decode("ascii", "replace")
        if expect:
            status, interim = _read_response_head(up.rfile)
            client.sock.sendall(interim)
            if status != 100:  # a final answer before the body: the client sends none
                _relay_response_body(up, _headers(interim), method, status, client.sock)
                return False
        _relay_body(client.rfile, headers, up.sock)
        status, resp_head = _read_response_head(up.rfile)
        while 100 <= status < 200:  # interim responses pass through
            client.sock.sendall(resp_head)
            status, resp_head = _read_response_head(up.rfile)
        resp_headers = _headers(resp_head)
        if action == "reset_after":
            _relay_response_body(up, resp_headers, method, status, None)
            client.reset()
            return False
        client.sock.sendall(resp_head)
        _relay_response_body(up, resp_headers, method, status, client.sock)
        return resp_headers.get("connection", "").lower() != "close" and not up.closed


class _Peer:
    """One end of a proxied connection: its socket and a buffered reader of it."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.rfile = sock.makefile("rb")
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.rfile.close()  # the socket is really closed only once its makefile is
        self.sock.close()

    def reset(self) -> None:
        """Close with a TCP RST, not a FIN."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def stale(self) -> bool:
        """Whether the server closed this idle keep-alive connection (so that a request is
        not lost to it: only injected faults may reach the client)."""
        if not select.select([self.sock], [], [], 0)[0]:
            return False
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def wake(self) -> None:
        """From another thread: make a blocked read return (stop())."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


def _read_head(f: BinaryIO) -> bytes | None:
    """Request or response line and headers, up to the blank line; None at a clean EOF."""
    lines = []
    size = 0
    while True:
        line = f.readline(MAX_HEAD_BYTES)
        if not line:
            if lines:
                raise ConnectionError("EOF inside an HTTP head")
            return None
        lines.append(line)
        size += len(line)
        if size > MAX_HEAD_BYTES:
            raise ConnectionError("HTTP head too large")
        if line in (b"\r\n", b"\n") and len(lines) > 1:
            return b"".join(lines)


def _read_response_head(f: BinaryIO) -> tuple[int, bytes]:
    head = _read_head(f)
    if head is None:
        raise ConnectionError("the server closed the connection")
    return int(head.split(b" ", 2)[1]), head


def _headers(head: bytes) -> dict[str, str]:
    out = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            out[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return out


def _relay_body(src: BinaryIO, headers: dict[str, str], dst: socket.socket | None) -> None:
    """Copy a request body (Content-Length or chunked) to `dst`, or drop it."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        _relay_chunked(src, dst)
    else:
        _relay_exact(src, int(headers.get("content-length", "0")), dst)


def _relay_response_body(
    up: _Peer, headers: dict[str, str], method: str, status: int, dst: socket.socket | None
) -> None:
    if method == "HEAD" or status in (204, 304):
        return
    if "chunked" in headers.get("transfer-encoding", "").lower():
        _relay_chunked(up.rfile, dst)
    elif "content-length" in headers:
        _relay_exact(up.rfile, int(headers["content-length"]), dst)
    else:  # the body ends when the server closes
        while block := up.rfile.read1(BLOCK):
            if dst is not None:
                dst.sendall(block)
        up.closed = True


def _relay_exact(src: BinaryIO, n: int, dst: socket.socket | None) -> None:
    while n > 0:
        block = src.read1(min(n, BLOCK))
        if not block:
            raise ConnectionError("EOF inside a body")
        n -= len(block)
        if dst is not None:
            dst.sendall(block)


def _relay_chunked(src: BinaryIO, dst: socket.socket | None) -> None:
    while True:
        size_line = src.readline(1024)
        if not size_line:
            raise ConnectionError("EOF inside a chunked body")
        if dst is not None:
            dst.sendall(size_line)
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            break
        _relay_exact(src, size + 2, dst)  # the chunk and its CRLF
    while True:  # trailers, up to the blank line
        line = src.readline(MAX_HEAD_BYTES)
        if dst is not None:
            dst.sendall(line)
        if line in (b"\r\n", b"\n", b""):
            return


def _slowdown_response() -> bytes:
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
    return (
        f"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(SLOWDOWN_BODY)}\r\nDate: {date}\r\nConnection: close\r\n\r\n"
    ).encode() + SLOWDOWN_BODY


DENIED_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
               b"<Message>Access Denied</Message></Error>")
DENIED = (b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: "
          + str(len(DENIED_BODY)).encode() + b"\r\nConnection: close\r\n\r\n" + DENIED_BODY)


class RefusingProxy(FaultProxy):
    """Refuses every upload of a key with `refuse` in it while `refusing` (PUT and POST:
    whole objects, parts, multipart starts and completions), as a bucket policy denying them
    would: 403 AccessDenied, which the store does not retry (a 503 it retries for seconds,
    longer than a gateway waits for the group doing it). Everything else passes. Refusals
    are held until `release` is set: the test acts while the drain is surely flushing."""

    def __init__(self, upstream: str, refuse: str) -> None:
        super().__init__(upstream)
        self.refuse = refuse.encode()
        self.refusing = True
        self.refused = 0
        self.release = threading.Event()

    def _one(self, head: bytes, client: _Peer, up: _Peer) -> bool:
        method, target = head.split(b" ", 2)[:2]
        if self.refusing and method in (b"PUT", b"POST") and self.refuse in target:
            headers = _headers(head)
            if headers.get("expect", "").lower() != "100-continue":
                _relay_body(client.rfile, headers, None)
            with self._lock:
                self.refused += 1
            self.release.wait(60)
            client.sock.sendall(DENIED)
            return False
        return super()._one(head, client, up)
