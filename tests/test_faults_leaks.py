"""A million operations through one client with flat memory: no buffer,
connection, future, eventfd or thread is left behind per batch.

1 000 batches of 1 000 keys against a real server, in every form a caller
uses: blocking EXISTS / GET / SET / DEL, futures, a CompletionQueue polled
by its eventfd, awaits on one long-lived event loop, and ``asyncio.run`` per
call (a new loop each time). After a warm-up, process RSS and tracemalloc's
count of live Python allocations must not grow beyond generous bounds; after
``close()`` the thread and fd counts are back where they started. The
figures are printed (``pytest -s``) for the record.
"""

from __future__ import annotations

import asyncio
import gc
import os
import select
import threading
import tracemalloc

import pytest

from lmcache_valkey import CompletionQueue

psutil = pytest.importorskip("psutil")

pytestmark = pytest.mark.timeout(300)

BATCHES = 1000
KEYS = 1000
VALUE = 64
WARMUP = 100
MAX_RSS_GROWTH = 20 << 20        # bounds far above any steady state: a leak of one
MAX_TRACED_GROWTH = 2 << 20      # small object per batch would cross them


def test_a_million_operations_leave_memory_threads_and_fds_flat(make_server,
                                                                make_client) -> None:
    s = make_server()
    proc = psutil.Process()
    threads0, fds0 = threading.active_count(), proc.num_fds()
    c = make_client(s.url, num_connections=2)
    keys = [f"k{i}" for i in range(KEYS)]
    values = [bytes([i % 251]) * VALUE for i in range(KEYS)]
    dests = [bytearray(VALUE) for _ in range(KEYS)]
    loop = asyncio.new_event_loop()          # an application's own, long-lived loop
    cq = CompletionQueue()

    def via_completion_queue() -> list:
        fut = c.submit_batch_exists(keys, completion=cq, token="t")
        poller = select.poll()
        poller.register(cq.fileno(), select.POLLIN)
        done: list = []
        while not done:
            poller.poll(10_000)
            done = cq.drain()
        assert done == [(fut, "t")]
        return fut.result()

    forms = [
        lambda: c.batch_exists(keys) == [True] * KEYS,
        lambda: c.batch_get_into(keys, dests) == [VALUE] * KEYS and dests[7] == values[7],
        lambda: c.batch_set(keys, values) == [True] * KEYS,
        lambda: c.submit_batch_get_into(keys, dests).result() == [VALUE] * KEYS,
        lambda: via_completion_queue() == [True] * KEYS,
        lambda: loop.run_until_complete(c.abatch_get_into(keys, dests)) == [VALUE] * KEYS,
        lambda: (c.batch_delete(keys[:500]) == [1] * 500
                 and c.batch_set(keys[:500], values[:500]) == [True] * 500),
        lambda: asyncio.run(c.abatch_exists(keys)) == [True] * KEYS,
    ]
    assert c.batch_set(keys, values) == [True] * KEYS

    def run(batches: range) -> None:
        for i in batches:
            assert forms[i % len(forms)](), f"batch {i} (form {i % len(forms)}) went wrong"

    run(range(WARMUP))
    gc.collect()
    rss0 = proc.memory_info().rss
    tracemalloc.start()
    traced0 = tracemalloc.get_traced_memory()[0]
    run(range(WARMUP, BATCHES))
    gc.collect()
    traced1, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = proc.memory_info().rss
    fds_open = proc.num_fds()

    loop.close()
    cq.close()
    c.close()
    gc.collect()
    threads1, fds1 = threading.active_count(), proc.num_fds()
    print(f"\n{BATCHES} batches x {KEYS} keys ({BATCHES * KEYS} operations), "
          f"after {WARMUP} warm-up batches: RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB "
          f"({(rss1 - rss0) / 2**20:+.2f} MiB); tracemalloc live {traced0 / 2**10:.0f} -> "
          f"{traced1 / 2**10:.0f} KiB (peak {traced_peak / 2**20:.2f} MiB); "
          f"fds {fds0} before, {fds_open} while open, {fds1} after close; "
          f"threads {threads0} before, {threads1} after close (pid {os.getpid()})")
    assert rss1 - rss0 < MAX_RSS_GROWTH
    assert traced1 - traced0 < MAX_TRACED_GROWTH
    assert (threads1, fds1) == (threads0, fds0)


def test_event_loops_that_end_before_the_client_leave_no_eventfd(server, prefix,
                                                                 make_client) -> None:
    # Each loop that awaits a batch gets an eventfd; asyncio.run() per call
    # must not leave one behind per loop.
    c = make_client(server.url, key_prefix=prefix)
    c.connect()                                            # every connection open now
    assert asyncio.run(c.abatch_exists(["k"])) == [False]  # asyncio's own one-time fds
    gc.collect()
    proc = psutil.Process()
    fds0 = proc.num_fds()
    for _ in range(50):
        assert asyncio.run(c.abatch_exists(["k"])) == [False]
    gc.collect()
    assert proc.num_fds() == fds0
