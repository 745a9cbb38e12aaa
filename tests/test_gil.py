"""The batch runs without the GIL: other Python threads keep running while a
connection waits on the server. On the socket-object transport (TLS's) each
send / recv_into takes the GIL for the call, and a wait (poll) is without it.

A socketpair stands in for the server here (it answers late on purpose, which
a real server cannot be told to do); the bytes are real RESP.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from checks import interrupt_main_after
from resp_fuzz import TRANSPORTS, engine_on

from lmcache_valkey import ValkeyConnectionError

pytestmark = pytest.mark.engine


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_other_threads_run_while_a_batch_waits(transport: str) -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    conn = engine_on(ours, transport, "socketpair", timeout_s=5)
    ticks = 0
    stop = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    def answer_late() -> None:
        theirs.recv(1 << 16)
        time.sleep(0.3)
        theirs.sendall(b"$5\r\nhello\r\n")

    counter = threading.Thread(target=count)
    server = threading.Thread(target=answer_late)
    counter.start()
    server.start()
    dest = bytearray(5)
    try:
        before = ticks
        values, errors, _ = conn.batch_get_into([b"k"], [dest])
        during = ticks - before
    finally:
        stop.set()
        counter.join()
        server.join()
        ours.close()
        theirs.close()
    assert values == [5] and dest == b"hello" and not errors
    # With the GIL held for 0.3 s the counter could not move at all.
    assert during > 10_000


@pytest.mark.parametrize("stage", ["waiting", "mid-body", "sending"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_ctrl_c_stops_a_batch_on_the_main_thread(transport: str, stage: str) -> None:
    """A blocking call runs its batch on the caller's thread (workers.py);
    Ctrl-C there must raise KeyboardInterrupt at once, not after the batch or
    op_timeout_s, and leave the connection marked failed (half a reply is on
    the wire). "mid-body": the server sent a header and part of the value,
    so the fd transport is in its one blocking receive (MSG_WAITALL).
    "sending": a SET whose value the server does not read, so the fd
    transport is in a blocking sendmsg."""
    assert threading.current_thread() is threading.main_thread()
    ours, theirs = socket.socketpair()
    if transport == "socket":
        ours.setblocking(False)
    conn = engine_on(ours, transport, "socketpair", timeout_s=30)
    dest = bytearray(1 << 20)

    def answer_part() -> None:
        if stage == "sending":
            return   # reads nothing: the client's send fills the socket and waits
        theirs.recv(1 << 16)
        if stage == "mid-body":
            theirs.sendall(b"$1048576\r\n" + b"x" * 1000)

    server = threading.Thread(target=answer_part)
    server.start()
    timer = interrupt_main_after(0.3)
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt) as ei:
            if stage == "sending":
                conn.batch_set([b"k"], [bytearray(32 << 20)])
            else:
                conn.batch_get_into([b"k"], [dest])
        assert time.monotonic() - t0 < 5
        assert ei.value.partial[0] == [False if stage == "sending" else None]  # none done
        assert conn.failed
        with pytest.raises(ValkeyConnectionError, match="interrupted by a signal"):
            conn.batch_get_into([b"k"], [dest])
    finally:
        timer.cancel()
        server.join()
        ours.close()
        theirs.close()
