"""Server faults with a real server: down, killed mid-batch, restarted; and
close() while batches are in flight."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from lmcache_valkey import ClientClosedError, ValkeyConnectionError
from lmcache_valkey.embedded import free_port

VALUE = 4 << 20


def wait_until_serving(client, deadline_s: float = 15.0) -> None:
    """Retry through the client's reconnect back-off until the server answers."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            if client.batch_exists(["probe"]) == [False]:
                return
        except ValkeyConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.timeout(30)
def test_server_down_is_a_clear_error_naming_host_port_within_connect_timeout(make_client) -> None:
    port = free_port()  # nothing listens here
    c = make_client(f"valkey://127.0.0.1:{port}", connect_timeout_s=2.0)
    t0 = time.monotonic()
    with pytest.raises(ValkeyConnectionError, match=f"127.0.0.1:{port}"):
        c.batch_get_into(["k"], [bytearray(4)])
    assert time.monotonic() - t0 < 2.0 + 1.0


@pytest.mark.timeout(60)
def test_server_killed_mid_batch_then_restarted(make_server, make_client) -> None:
    s = make_server()
    c = make_client(s.url, num_connections=2, op_timeout_s=5.0)
    keys = [f"k{i}" for i in range(48)]
    value = np.random.default_rng(1).integers(0, 256, VALUE, dtype=np.uint8)
    assert all(c.batch_set(keys, [value] * len(keys)))
    dests = [np.zeros(VALUE, np.uint8) for _ in keys]

    killer = threading.Timer(0.02, s.kill)
    failures = 0
    killer.start()
    t0 = time.monotonic()
    for _ in range(50):  # keep batches running until the kill lands in one
        try:
            c.batch_get_into(keys, dests)
        except ValkeyConnectionError as e:
            failures += 1
            partial = e.partial
            # Keys that completed are exact; the rest are reported failed.
            for n, d in zip(partial, dests):
                if n is not None:
                    assert n == VALUE and (d == value).all()
            break
    killer.join()
    assert failures == 1, "the kill never hit a batch"
    assert time.monotonic() - t0 < 10, "a failed batch must not hang"

    with pytest.raises(ValkeyConnectionError):
        c.batch_exists(["k0"])          # still down
    s.start()                           # same port; data is gone
    wait_until_serving(c)
    assert c.batch_set(["k0"], [value]) == [True]
    assert c.batch_get_into(["k0"], [dests[0]]) == [VALUE]
    assert (dests[0] == value).all()


@pytest.mark.timeout(30)
def test_close_with_batches_in_flight(make_server, make_client) -> None:
    s = make_server()
    c = make_client(s.url, num_connections=2)
    keys = [f"k{i}" for i in range(32)]
    c.batch_set(keys, [bytes(VALUE)] * 32)
    dests = [np.zeros(VALUE, np.uint8) for _ in keys]
    futures = [c.submit_batch_get_into(keys, dests) for _ in range(20)]
    time.sleep(0.05)
    c.close()
    outcomes = {"ok": 0, "closed": 0}
    for f in futures:
        try:
            result = f.result(timeout=10)
            assert result == [VALUE] * 32
            outcomes["ok"] += 1
        except ClientClosedError as e:
            outcomes["closed"] += 1
            assert "closed" in str(e)
    assert outcomes["closed"] > 0
    with pytest.raises(ClientClosedError):
        c.batch_exists(["k"])


@pytest.mark.timeout(30)
def test_server_that_accepts_but_never_answers_auth_fails_within_connect_timeout(make_client) -> None:
    # A listening socket that never speaks: a real server can't be made to hang
    # in its handshake, so a bare loopback listener stands in for one.
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        c = make_client(f"valkey://127.0.0.1:{port}", password="pw",
                        connect_timeout_s=0.5, op_timeout_s=60)
        t0 = time.monotonic()
        with pytest.raises(ValkeyConnectionError, match=f"127.0.0.1:{port}"):
            c.batch_exists(["k"])
        assert time.monotonic() - t0 < 3
