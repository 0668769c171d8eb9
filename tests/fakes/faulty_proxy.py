"""A loopback TCP proxy in front of a fake upstream that misbehaves the way real upstream connections do.

Each `FaultyProxy` has one fixed `mode` for every connection it takes (a test gives each fault its own proxy, and the
gateway a connection per proxy):

- ``refuse``: a port that is bound but not listening: every connect is refused (RST), and no other process can
  take the port meanwhile.
- ``blackhole``: a listening socket whose accept queue is full (backlog 0, filled by the proxy's own connects, never
  accepted): the kernel drops further SYNs, so a connect hangs until the client's connect timeout. Deterministic on
  Linux loopback, unlike a non-routable address.
- ``reset``: accept, read the whole request, then reset the connection (SO_LINGER 0) before any response byte.
- ``silence``: forward the request, pass the response's head (status line and headers) back, then nothing more
  until the client gives up.
- ``cut``: pass the response's head and `cut_after` bytes of its body, then close the connection.
- ``trickle``: pass the response one byte every `interval` seconds for its first `trickle_bytes` bytes, then the
  rest as it comes.
- ``slow_close``: ask the upstream for HTTP/1.0 (no chunked encoding: a stream's body ends only with the
  connection), pass everything, then keep the connection open `hold` seconds before closing it.

Every forwarded request asks the upstream to close its connection after the answer (`Connection: close`), so one
proxied connection carries one exchange and the fault applies to each request alike.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Literal

from tests.fakes.tcpproxy import _close

Mode = Literal["refuse", "blackhole", "reset", "silence", "cut", "trickle", "slow_close"]
_HEAD_END = b"\r\n\r\n"


class FaultyProxy:
    def __init__(self, mode: Mode, target: tuple[str, int] | None = None, *, cut_after: int = 0,
                 interval: float = 0.25, trickle_bytes: int = 8, hold: float = 10.0) -> None:
        if mode not in ("refuse", "blackhole") and target is None:
            raise ValueError(f"mode {mode!r} forwards to a target")
        self.mode = mode
        self.target = target
        self.cut_after = cut_after
        self.interval = interval
        self.trickle_bytes = trickle_bytes
        self.hold = hold
        self._closed = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        if mode == "refuse":
            return  # bound, never listening: the kernel answers every SYN with a reset
        if mode == "blackhole":
            self._listener.listen(0)
            # Backlog 0 holds one established connection; ours fills it (and a second waits in SYN-SENT for good
            # measure). Nobody accepts them, so every later SYN is dropped.
            for _ in range(2):
                filler = socket.socket()
                filler.setblocking(False)
                try:
                    filler.connect(("127.0.0.1", self.port))
                except BlockingIOError:
                    pass
                self._track(filler)
            return
        self._listener.listen(64)
        threading.Thread(target=self._accept, name=f"faulty-proxy-{mode}", daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            _close(sock)
        _close(self._listener)

    # -- internals ---------------------------------------------------------------------------------------------
    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.add(sock)

    def _forget(self, *socks: socket.socket) -> None:
        with self._lock:
            for sock in socks:
                self._open.discard(sock)
        for sock in socks:
            _close(sock)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            request = _read_request(client)
            if request is None:
                return
            if self.mode == "reset":
                # Linger on, timeout 0: close() sends RST instead of FIN (no shutdown first: that would send a FIN).
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                with self._lock:
                    self._open.discard(client)
                client.close()
                return
            assert self.target is not None
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
            self._track(upstream)
            upstream.sendall(_rewrite(request, http10=self.mode == "slow_close"))
            self._relay(upstream, client)
        except OSError:
            pass
        finally:
            self._forget(client, *((upstream,) if upstream is not None else ()))

    def _relay(self, upstream: socket.socket, client: socket.socket) -> None:
        """Pass the response back, shaped by the mode, until the upstream closes (it was asked to)."""
        head = b""
        while _HEAD_END not in head:  # the head first, whole: the modes below count body bytes
            data = upstream.recv(65536)
            if not data:
                return
            head += data
        end = head.index(_HEAD_END) + len(_HEAD_END)
        head, body = head[:end], head[end:]
        if self.mode == "silence":
            client.sendall(head)
            _wait_until_gone(client, None)  # nothing more, until the client gives up (or the proxy closes)
            return
        if self.mode == "trickle":
            self._trickle(upstream, client, head + body)
            return
        if self.mode == "cut":
            client.sendall(head)
            left = self.cut_after
            while left > 0:
                if body:
                    piece, body = body[:left], body[left:]
                    client.sendall(piece)
                    left -= len(piece)
                    continue
                body = upstream.recv(65536)
                if not body:
                    return
            return  # closing now ends the body short of its length (or chunked end)
        client.sendall(head + body)
        while data := upstream.recv(65536):
            client.sendall(data)
        if self.mode == "slow_close":
            _wait_until_gone(client, self.hold)

    def _trickle(self, upstream: socket.socket, client: socket.socket, pending: bytes) -> None:
        sent = 0
        while True:
            while pending and sent < self.trickle_bytes:
                client.sendall(pending[:1])
                pending = pending[1:]
                sent += 1
                if self._closed.wait(self.interval):
                    return
            if pending:
                client.sendall(pending)
                pending = b""
            data = upstream.recv(65536)
            if not data:
                return
            pending = data


def _read_request(sock: socket.socket) -> bytes | None:
    """One whole HTTP request (head and Content-Length body), or None if the client went away first."""
    data = b""
    while _HEAD_END not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    end = data.index(_HEAD_END) + len(_HEAD_END)
    length = 0
    for line in data[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(data) - end < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    return data


def _rewrite(request: bytes, *, http10: bool) -> bytes:
    """The request with `Connection: close` (one exchange per proxied connection) and, for http10, HTTP/1.0."""
    end = request.index(_HEAD_END)
    lines = request[:end].split(b"\r\n")
    first = lines[0]
    if http10:
        first = first.rsplit(b" ", 1)[0] + b" HTTP/1.0"
    kept = [line for line in lines[1:] if not line.lower().startswith(b"connection:")]
    return b"\r\n".join([first, *kept, b"Connection: close"]) + request[end:]


def _wait_until_gone(sock: socket.socket, timeout: float | None) -> None:
    """Keep the connection open until its peer closes it (the request was read whole: nothing else comes) or
    `timeout` seconds pass."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except OSError:  # the timeout (TimeoutError is an OSError) or a reset
        pass


