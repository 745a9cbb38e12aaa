"""Connection faults, played by a tiny fake RESP server.

A real Valkey server never sends a malformed length, an unknown type byte or a
body without its CRLF, and cannot be told to hang up in the middle of a value,
so these tests use a scripted fake instead: plain TCP on 127.0.0.1 (port 0,
loopback only), one thread, one client. Each fault must surface as an
exception of the right class that names the connection's label, without a
hang; `.partial` must hold exactly the keys completed before the fault; and the
connection must then report `failed` and refuse every later call.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from resp_fuzz import engine_on
from resp_reference import RespReader

from lmcache_valkey._native import RespConnection
from lmcache_valkey.errors import ProtocolError, ValkeyConnectionError, ValkeyTimeoutError

pytestmark = [pytest.mark.engine, pytest.mark.timeout(10)]


@dataclass(frozen=True)
class AwaitRequests:
    """Script step: wait until this many requests (in total) have arrived."""

    count: int


CLOSE = "close"  # script step: send FIN; the fake keeps draining until the test ends
Script = list[bytes | AwaitRequests | str]


class FakeServer(threading.Thread):
    """Accepts one client and plays `script` to it, reading (and parsing with
    the oracle) whatever the client sends so the client never blocks."""

    def __init__(self, script: Script) -> None:
        super().__init__(daemon=True)
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[object] = []
        self._reader = RespReader()
        self._halt = threading.Event()

    def run(self) -> None:
        self.listener.settimeout(5)
        conn, _ = self.listener.accept()
        with conn:
            for step in self.script:
                if isinstance(step, AwaitRequests):
                    self._pump(conn, until=lambda n=step.count: len(self.requests) >= n)
                elif step == CLOSE:
                    # FIN, not close(): closing with unread bytes would send
                    # RST, which may discard replies the client has not read.
                    conn.shutdown(socket.SHUT_WR)
                else:
                    conn.sendall(step)
            self._pump(conn, until=lambda: False)  # then fall silent, but keep reading

    def _pump(self, conn: socket.socket, until: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 10
        while not until() and not self._halt.is_set() and time.monotonic() < deadline:
            if select.select([conn], [], [], 0.05)[0]:
                data = conn.recv(1 << 16)
                if not data:
                    return
                self._reader.feed(data)
                self.requests.extend(self._reader)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self.listener.close()


@pytest.fixture(params=["blocking-fd", "non-blocking-fd", "socket-object"])
def connect(request) -> Iterator[Callable[..., tuple[RespConnection, str, FakeServer]]]:
    """connect(script, **RespConnection options) -> (connection, its label, server).
    Every transport: both fd modes (on a blocking fd, what open_connection
    gives, a body with nothing left to send is received with one blocking
    recvmsg bounded by SO_RCVTIMEO; on a non-blocking one, by poll() and
    non-blocking calls), and the socket object's send / recv_into, the
    transport TLS runs on (RespConnection.over_socket)."""
    opened: list[tuple[FakeServer, socket.socket]] = []

    def make(script: Script, **options) -> tuple[RespConnection, str, FakeServer]:
        server = FakeServer(script)
        server.start()
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.setblocking(request.param == "blocking-fd")
        opened.append((server, sock))
        label = f"fake-valkey@127.0.0.1:{server.port}"
        transport = "socket" if request.param == "socket-object" else "fd"
        conn = engine_on(sock, transport, label, **{"timeout_s": 5.0, **options})
        return conn, label, server

    yield make
    for server, sock in opened:
        sock.close()
        server.stop()


KEYS = [b"k0", b"k1"]
FIRST = b"$3\r\nabc\r\n"  # the first key's reply: complete before every fault


def get_dests() -> list[bytearray]:
    return [bytearray(b"\xee" * 16) for _ in KEYS]


@dataclass(frozen=True)
class Fault:
    after_first: bytes  # what follows the first key's reply
    close: bool  # hang up after it (else stay connected and silent)
    error: type[ValkeyConnectionError]  # the exact class raised
    message: str
    options: tuple = ()  # RespConnection options


FAULTS = {
    "truncated-header-then-close": Fault(
        b"$1", True, ValkeyConnectionError, "connection closed by the server"),
    "bad-length": Fault(b"$abc\r\n", False, ProtocolError, "non-digit in reply header integer"),
    "unknown-type-byte": Fault(b"?what\r\n", False, ProtocolError, "unknown reply type byte b'?'"),
    "absurd-length": Fault(
        b"$99999999999999999\r\n", False, ProtocolError, "bulk reply longer than max_bulk_len"),
    "length-over-small-max-bulk": Fault(
        b"$1000000000\r\n", False, ProtocolError, "bulk reply longer than max_bulk_len",
        (("max_bulk_len", 1 << 20),)),
    # Under the default limit: only the configured one can reject it.
    "length-between-limits": Fault(
        b"$2000000\r\n", False, ProtocolError, "bulk reply longer than max_bulk_len",
        (("max_bulk_len", 1 << 20),)),
    "disconnect-mid-body": Fault(
        b"$10\r\nhel", True, ValkeyConnectionError, "connection closed by the server mid-value"),
    # Silent in the middle of a value: the blocking body receive times out too.
    "stalls-mid-body": Fault(
        b"$10\r\nhel", False, ValkeyTimeoutError, "timed out waiting for the server",
        (("timeout_s", 0.5),)),
    "body-without-crlf": Fault(b"$5\r\nhelloXY", False, ProtocolError, "not terminated by CRLF"),
    "never-answers": Fault(
        b"", False, ValkeyTimeoutError, "timed out waiting for the server", (("timeout_s", 0.5),)),
    "simple-string-to-get": Fault(b"+OK\r\n", False, ProtocolError, "unexpected reply type to GET"),
    "integer-to-get": Fault(b":1\r\n", False, ProtocolError, "unexpected reply type to GET"),
    "array-to-get": Fault(
        b"*1\r\n$1\r\nx\r\n", False, ProtocolError, "unexpected reply type to GET"),
    "disconnect-while-draining-too-large": Fault(
        b"$40\r\n" + b"x" * 10, True, ValkeyConnectionError, "connection closed by the server"),
}


def assert_fails_fast_and_stays_failed(conn: RespConnection, call: Callable[[], object],
                                       error: type, message: str, label: str,
                                       within_s: float) -> ValkeyConnectionError:
    t0 = time.monotonic()
    with pytest.raises(ValkeyConnectionError) as info:
        call()
    elapsed = time.monotonic() - t0
    assert type(info.value) is error, repr(info.value)
    assert label in str(info.value) and message in str(info.value), str(info.value)
    assert elapsed < within_s, f"took {elapsed:.2f}s"
    # Sticky: later calls fail at once, with the same kind of error.
    assert conn.failed
    for later in (lambda: conn.batch_get_into([b"k"], [bytearray(4)]),
                  lambda: conn.batch_exists([b"k"]),
                  lambda: conn.execute("PING")):
        t0 = time.monotonic()
        with pytest.raises(error, match=label):
            later()
        assert time.monotonic() - t0 < 0.5
    return info.value


@pytest.mark.parametrize("name", list(FAULTS))
def test_fault_in_second_reply(name: str, connect) -> None:
    fault = FAULTS[name]
    options = dict(fault.options)
    script: Script = [AwaitRequests(len(KEYS)), FIRST + fault.after_first]
    if fault.close:
        script.append(CLOSE)
    conn, label, server = connect(script, **options)
    dests = get_dests()
    exc = assert_fails_fast_and_stays_failed(
        conn, lambda: conn.batch_get_into(KEYS, dests), fault.error, fault.message, label,
        within_s=2.5 if "timeout_s" in options else 1.0)
    # The first key completed and is reported; the faulted one is a failure.
    values, errors, too_large = exc.partial
    assert values == [3, None] and errors == {} and too_large == {}
    assert dests[0][:3] == b"abc" and dests[0][3:] == b"\xee" * 13
    assert server.requests == [[b"GET", k] for k in KEYS]


def test_timeout_waits_for_op_timeout(connect) -> None:
    conn, label, _ = connect([AwaitRequests(1)], timeout_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(ValkeyTimeoutError, match=label):
        conn.batch_get_into([b"k"], [bytearray(4)])
    assert 0.4 <= time.monotonic() - t0 < 2.5


@pytest.mark.parametrize("size", [20, 300 * 1024], ids=["small", "larger-than-rbuf"])
def test_too_large_value_is_drained_and_connection_stays_usable(size: int, connect) -> None:
    # rbuf_size at its minimum so the larger value drains across many reads.
    conn, _, server = connect(
        [AwaitRequests(2), b"$%d\r\n%s\r\n" % (size, b"Z" * size) + FIRST,
         AwaitRequests(3), b"$3\r\nxyz\r\n"],
        rbuf_size=64 * 1024 + 16)
    dests = get_dests()
    assert conn.batch_get_into(KEYS, dests) == ([None, 3], {}, {0: size})
    assert dests[0] == b"\xee" * 16, "a too-large value must not be written"
    assert dests[1][:3] == b"abc"
    assert not conn.failed
    again = bytearray(8)
    assert conn.batch_get_into([b"k2"], [again]) == ([3], {}, {})
    assert again[:3] == b"xyz"
    assert server.requests == [[b"GET", k] for k in [*KEYS, b"k2"]]


def test_abort_from_another_thread_wakes_a_waiting_batch(connect) -> None:
    conn, label, _ = connect([], timeout_s=30.0)  # silent: only abort() can end the wait
    aborter = threading.Timer(0.2, conn.abort)
    aborter.start()
    try:
        exc = assert_fails_fast_and_stays_failed(
            conn, lambda: conn.batch_get_into(KEYS, get_dests()), ValkeyConnectionError, "",
            label, within_s=2.0)
    finally:
        aborter.join()
    assert exc.partial == ([None, None], {}, {})
