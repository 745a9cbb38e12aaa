"""Server faults with a real server: down, killed mid-batch, restarted; and
close() while batches are in flight."""

from __future__ import annotations

import asyncio
import struct
import threading
import time

import numpy as np
import pytest
from checks import raises_within, read_back, retry

from lmcache_valkey import ClientClosedError, ValkeyConnectionError
from lmcache_valkey.server.embedded import free_port

pytestmark = pytest.mark.engine

VALUE = 4 << 20


def wait_until_serving(client, deadline_s: float = 15.0) -> None:
    """Retry through the client's reconnect back-off until the server answers."""
    retry(lambda: client.batch_exists(["probe"]), ValkeyConnectionError, deadline_s, 0.05,
          until=lambda found: found == [False])


def _client_with_stored(make_client, s, n: int, seed: int):
    """A client on `s` and `n` keys stored through it, all of one random
    VALUE: (client, keys, value)."""
    c = make_client(s.url, num_connections=2, op_timeout_s=5.0)
    keys = [f"k{i}" for i in range(n)]
    value = np.random.default_rng(seed).integers(0, 256, VALUE, dtype=np.uint8)
    assert all(c.batch_set(keys, [value] * len(keys)))
    return c, keys, value


@pytest.mark.timeout(30)
def test_server_down_is_a_clear_error_naming_host_port_within_connect_timeout(make_client) -> None:
    port = free_port()  # nothing listens here
    c = make_client(f"valkey://127.0.0.1:{port}", connect_timeout_s=2.0)
    with raises_within(2.0 + 1.0, ValkeyConnectionError, match=f"127.0.0.1:{port}"):
        c.batch_get_into(["k"], [bytearray(4)])


@pytest.mark.timeout(60)
def test_server_killed_mid_batch_then_restarted(make_server, make_client, server_kind) -> None:
    s = make_server(server_kind)  # each of conftest.CONTRACT_SERVERS
    c, keys, value = _client_with_stored(make_client, s, 48, seed=1)
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
            for n, d in zip(partial, dests, strict=True):
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
def test_server_that_accepts_but_never_answers_auth_fails_within_connect_timeout(
        make_client) -> None:
    # A listening socket that never speaks: a real server can't be made to hang
    # in its handshake, so a bare loopback listener stands in for one.
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        c = make_client(f"valkey://127.0.0.1:{port}", password="pw",
                        connect_timeout_s=0.5, op_timeout_s=60)
        with raises_within(3, ValkeyConnectionError, match=f"127.0.0.1:{port}"):
            c.batch_exists(["k"])


# -- kill -9 with persistence: "reported stored" must mean stored ---------------


def generation_values(base: np.ndarray, gen: int, n: int) -> list[np.ndarray]:
    """Per key and per round, a distinct value: (round, key) in its first bytes."""
    out = []
    for i in range(n):
        v = base.copy()
        v[:16] = np.frombuffer(struct.pack("<QQ", gen, i), np.uint8)
        out.append(v)
    return out


@pytest.mark.timeout(90)
def test_server_killed_mid_set_batch_every_key_reported_stored_survives(make_server,
                                                                       make_client) -> None:
    # appendfsync always: the server makes a write durable before it answers
    # +OK, so after kill -9 and a restart every key the client reported True
    # must be there with exactly the bytes of that batch.
    s = make_server(config={"appendonly": "yes", "appendfsync": "always"})
    c = make_client(s.url, num_connections=2, op_timeout_s=5.0, reconnect_backoff_max_s=0.2)
    n, size = 32, 1 << 20
    keys = [f"k{i}" for i in range(n)]
    base = np.random.default_rng(2).integers(0, 256, size, dtype=np.uint8)
    killer = threading.Timer(0.3, s.kill)
    killer.start()
    failure = None
    for gen in range(1000):  # until the kill lands in a batch
        values = generation_values(base, gen, n)
        try:
            assert all(c.batch_set(keys, values))
        except ValkeyConnectionError as e:
            failure = e
            break
    killer.join()
    assert failure is not None, "the kill never hit a batch"
    reported = list(failure.partial)
    assert len(reported) == n and all(ok in (True, False) for ok in reported)

    s.start()  # same port, same directory: the append-only file is replayed
    wait_until_serving(c)
    got, dests = read_back(c, keys, size)
    for i, ok in enumerate(reported):
        if ok:
            assert got[i] == size and (dests[i] == values[i]).all(), f"key {i} reported stored"


@pytest.mark.timeout(60)
def test_futures_and_awaits_in_flight_when_the_server_dies_all_end(make_server,
                                                                  make_client) -> None:
    s = make_server()
    c, keys, value = _client_with_stored(make_client, s, 32, seed=3)
    dests = [[np.zeros(VALUE, np.uint8) for _ in keys] for _ in range(8)]

    async def awaited() -> list[object]:
        calls = [c.abatch_get_into(keys, d) for d in dests[4:]]
        return await asyncio.gather(*calls, return_exceptions=True)

    futures = [c.submit_batch_get_into(keys, d) for d in dests[:4]]
    threading.Timer(0.05, s.kill).start()
    outcomes = [*(f.exception(timeout=15) or f.result() for f in futures),
                *asyncio.run(asyncio.wait_for(awaited(), 15))]
    failed = 0
    for outcome, d in zip(outcomes, dests, strict=True):
        if isinstance(outcome, ValkeyConnectionError):
            failed += 1
            outcome = outcome.partial
        assert isinstance(outcome, list) and len(outcome) == len(keys), outcome
        for n, buf in zip(outcome, d, strict=True):  # no key reported done that is not
            assert n is None or (n == VALUE and (buf == value).all())
    assert failed > 0, "the kill never hit a batch"


@pytest.mark.timeout(60)
def test_server_restarted_while_idle_next_batch_reconnects_without_failing(
        make_server, make_client) -> None:
    # The old connections were closed by the dead server (the kernel has the
    # FIN or RST): they are replaced before the next batch, not failed on.
    s = make_server()
    c = make_client(s.url, num_connections=2)
    c.connect()
    s.kill()
    s.start()
    assert c.batch_set(["k"], [b"v"]) == [True]
    assert c.batch_exists(["k"] * 200) == [True] * 200  # tiled over both connections


# -- close() with batches in flight everywhere -----------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("caller_waits", [True, False], ids=["blocking", "submitted"])
def test_a_batch_racing_close_fails_instead_of_hanging(make_server, make_client,
                                                       caller_waits: bool) -> None:
    """close() between a batch's closed-check and the queueing of its tiles
    (the window the ASan job hit, where everything runs slowly): every tile
    fails with ClientClosedError; none waits on a worker that has stopped.
    The window is forced by closing from inside the tile hand-off."""
    s = make_server()
    c = make_client(s.url, num_connections=2)
    keys = ["a", "b"]                     # 2 x 4 MiB: one tile per connection
    c.batch_set(keys, [np.ones(VALUE, np.uint8)] * 2)
    dests = [np.zeros(VALUE, np.uint8) for _ in keys]
    workers = c._workers
    handoff = workers.submit_tiles

    def close_first(tiles, caller_waits_=False):
        assert len(tiles) == 2
        c.close()                          # the workers take their stop markers and end
        handoff(tiles, caller_waits_)

    workers.submit_tiles = close_first
    with raises_within(10, ClientClosedError):
        if caller_waits:
            c.batch_get_into(keys, dests)
        else:
            c.submit_batch_get_into(keys, dests).result(timeout=10)
    assert not any(d.any() for d in dests)




@pytest.mark.timeout(60)
def test_close_with_batches_in_flight_from_threads_and_asyncio(make_server,
                                                               make_client) -> None:
    baseline = set(threading.enumerate())
    s = make_server()
    c = make_client(s.url, num_connections=2)
    keys = [f"k{i}" for i in range(16)]
    value = np.random.default_rng(4).integers(0, 256, VALUE, dtype=np.uint8)
    c.batch_set(keys, [value] * len(keys))
    outcomes: dict[str, list[object]] = {}
    started = threading.Barrier(5)

    def check(result: object, dests: list[np.ndarray]) -> object:
        assert result == [VALUE] * len(keys)
        assert all((d == value).all() for d in dests)
        return "ok"

    def blocking(name: str) -> None:
        dests = [np.zeros(VALUE, np.uint8) for _ in keys]
        out = outcomes.setdefault(name, [])
        started.wait()
        while True:
            try:
                out.append(check(c.batch_get_into(keys, dests), dests))
            except ClientClosedError:
                out.append("closed")
                return

    async def awaiting(busy: threading.Event) -> None:
        out = outcomes.setdefault("asyncio", [])
        dests = [[np.zeros(VALUE, np.uint8) for _ in keys] for _ in range(6)]
        tasks = [asyncio.ensure_future(c.abatch_get_into(keys, d)) for d in dests]
        await asyncio.sleep(0)
        started.wait()
        # Keep this loop busy while close() runs: the completions must still
        # reach the awaits afterwards.
        busy.set()
        time.sleep(0.3)
        for t, d in zip(tasks, dests, strict=True):
            try:
                out.append(check(await asyncio.wait_for(t, 10), d))
            except ClientClosedError:
                out.append("closed")

    busy = threading.Event()
    # daemon: a caller left blocked fails this test instead of hanging the
    # interpreter's exit (and the CI job) on it
    threads = [threading.Thread(target=blocking, args=(f"thread{i}",), daemon=True)
               for i in range(4)]
    threads.append(threading.Thread(target=asyncio.run, args=(awaiting(busy),), daemon=True))
    for t in threads:
        t.start()
    busy.wait(10)
    c.close()
    for t in threads:
        t.join(15)
    assert not any(t.is_alive() for t in threads), "a caller is still blocked after close()"
    assert sorted(outcomes) == ["asyncio", "thread0", "thread1", "thread2", "thread3"]
    assert len(outcomes["asyncio"]) == 6
    assert all(out[-1] == "closed" for name, out in outcomes.items() if name != "asyncio")
    assert "closed" in outcomes["asyncio"]
    assert [t for t in threading.enumerate()
            if t not in baseline and t.name.startswith("lmcache-valkey")] == []
