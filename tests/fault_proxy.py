"""A loopback TCP proxy that injects network faults between a client and a
real server, switchable while connections are open.

A real server cannot be told to stop answering for a while, to reset every
connection, or to half-close one, but the network between it and the client
does all of these; this proxy plays that network. It forwards bytes as they
are (so it works for TLS too) and listens on 127.0.0.1 only.

Modes (``proxy.set_mode(...)`` applies a mode to every open connection and
to the ones accepted while it holds, and returns once it is in force):

* ``PASS``       forward both ways.
* ``STALL``      forward nothing and read nothing; keep every socket open
                 (a hung server or a black-holed link: the kernel buffers
                 fill, then the client waits).
* ``DROP``       reset both sides of every connection (RST, as a crashed
                 middlebox or a killed peer would); new ones are reset at once.
* ``HALF_CLOSE`` send FIN to the client (it reads end-of-stream) and stop
                 forwarding, while still draining what the client sends.

``accepted`` counts the client connections ever accepted, so a test can see
that a broken connection was replaced by a new one; ``open_connections``
counts those still held. One selector thread does all the I/O on
non-blocking sockets, so a mode switch never waits for a blocked call.
"""

from __future__ import annotations

import contextlib
import queue
import selectors
import socket
import struct
import threading
from typing import Any

PASS = "pass"
STALL = "stall"
DROP = "drop"
HALF_CLOSE = "half_close"
MODES = (PASS, STALL, DROP, HALF_CLOSE)

# Bytes held per direction before the proxy stops reading that side: keeps
# TCP back-pressure end to end instead of buffering a whole batch here.
_HIGH_WATER = 1 << 20
_CHUNK = 256 * 1024


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets RST, not FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Link:
    """One client connection and, unless it was refused or half-closed on
    accept, its connection to the server."""

    __slots__ = ("client", "server", "to_server", "to_client", "half_closed")

    def __init__(self, client: socket.socket, server: socket.socket | None) -> None:
        self.client = client
        self.server = server
        self.to_server = bytearray()   # read from the client, not yet sent on
        self.to_client = bytearray()
        self.half_closed = False


class FaultProxy(contextlib.AbstractContextManager["FaultProxy"]):
    """``with FaultProxy(server.host, server.port) as proxy: url = proxy.url``"""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.host, self.port = "127.0.0.1", self._listener.getsockname()[1]
        self.url = f"valkey://{self.host}:{self.port}"
        self.mode = PASS
        self.accepted = 0
        self._links: list[_Link] = []
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._commands: queue.SimpleQueue[tuple[str, threading.Event]] = queue.SimpleQueue()
        self._sel.register(self._listener, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._interest: dict[socket.socket, int] = {}
        self._thread = threading.Thread(target=self._loop, name="fault-proxy", daemon=True)
        self._thread.start()

    # -- control (any thread) --------------------------------------------------

    @property
    def open_connections(self) -> int:
        return len(self._links)

    def set_mode(self, mode: str, timeout_s: float = 5.0) -> None:
        """Switch every connection (open and future) to `mode`; returns once
        the proxy thread has applied it."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self._command(mode, timeout_s)

    def close(self) -> None:
        if self._thread.is_alive():
            self._command("stop", 5.0)
            self._thread.join(5.0)

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _command(self, what: str, timeout_s: float) -> None:
        done = threading.Event()
        self._commands.put((what, done))
        self._wake_w.send(b"x")
        if not done.wait(timeout_s):
            raise TimeoutError(f"fault proxy did not apply {what!r} within {timeout_s}s")

    # -- the proxy thread ------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                for key, mask in self._sel.select():
                    tag: Any = key.data
                    if tag == "accept":
                        self._accept()
                    elif tag == "wake":
                        if not self._on_commands():
                            return
                    else:
                        self._pump(tag, key.fileobj, mask)  # type: ignore[arg-type]
        finally:
            for link in list(self._links):
                self._close_link(link, reset=False)
            self._sel.close()
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()

    def _on_commands(self) -> bool:
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(4096)
        while True:
            try:
                what, done = self._commands.get_nowait()
            except queue.Empty:
                return True
            if what == "stop":
                done.set()
                return False
            self.mode = what
            for link in list(self._links):
                self._apply_mode(link)
            done.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except BlockingIOError:
                return
            self.accepted += 1
            client.setblocking(False)
            if self.mode == DROP:
                _reset(client)
                continue
            server: socket.socket | None = None
            if self.mode != HALF_CLOSE:
                try:
                    server = socket.create_connection(self.upstream, timeout=5)
                except OSError:
                    _reset(client)  # upstream down: the client sees a reset
                    continue
                server.setblocking(False)
                server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client, server)
            self._links.append(link)
            self._apply_mode(link)

    def _apply_mode(self, link: _Link) -> None:
        if self.mode == DROP:
            self._close_link(link, reset=True)
            return
        if self.mode == HALF_CLOSE and not link.half_closed:
            link.half_closed = True
            with contextlib.suppress(OSError):
                link.client.shutdown(socket.SHUT_WR)
        self._update_interest(link)

    def _update_interest(self, link: _Link) -> None:
        client_ev = server_ev = 0
        if link.half_closed:
            client_ev = selectors.EVENT_READ  # drain, and notice when the client leaves
        elif self.mode == PASS:
            client_ev = _side_events(sends=link.to_server, receives=link.to_client)
            server_ev = _side_events(sends=link.to_client, receives=link.to_server)
        self._set_interest(link.client, client_ev, link)
        if link.server is not None:
            self._set_interest(link.server, server_ev, link)

    def _set_interest(self, sock: socket.socket, events: int, link: _Link) -> None:
        old = self._interest.get(sock, 0)
        if events == old:
            return
        if not events:
            self._sel.unregister(sock)
            del self._interest[sock]
        elif not old:
            self._sel.register(sock, events, link)
            self._interest[sock] = events
        else:
            self._sel.modify(sock, events, link)
            self._interest[sock] = events

    def _pump(self, link: _Link, sock: socket.socket, mask: int) -> None:
        if link not in self._links:  # closed by an earlier event of the same select
            return
        from_client = sock is link.client
        try:
            if mask & selectors.EVENT_READ:
                data = sock.recv(_CHUNK)
                if not data:  # the peer closed: so does the proxy (FIN onward)
                    self._close_link(link, reset=False)
                    return
                if not link.half_closed:
                    (link.to_server if from_client else link.to_client).extend(data)
            if mask & selectors.EVENT_WRITE:
                pending = link.to_client if from_client else link.to_server
                sent = sock.send(pending)
                del pending[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # reset by a peer
            self._close_link(link, reset=True)
            return
        self._update_interest(link)

    def _close_link(self, link: _Link, *, reset: bool) -> None:
        if link not in self._links:
            return
        self._links.remove(link)
        for sock in (link.client, link.server):
            if sock is None:
                continue
            if sock in self._interest:
                self._sel.unregister(sock)
                del self._interest[sock]
            if reset:
                _reset(sock)
            else:
                sock.close()


def _side_events(sends: bytearray, receives: bytearray) -> int:
    """Selector events for one side of a link: read while what it sends has
    room in its buffer, write while there is something for it."""
    events = selectors.EVENT_READ if len(sends) < _HIGH_WATER else 0
    if receives:
        events |= selectors.EVENT_WRITE
    return events
