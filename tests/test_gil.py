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
from resp_fuzz import TRANSPORTS, engine_on

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
