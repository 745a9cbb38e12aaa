"""The servers we start keep the memory they free (server/allocator.py): a
large value's query or reply buffer is not faulted in page by page again on
every request. Counted, not timed: the server's minor page faults per
request, read from /proc (Linux), on each contract server."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from lmcache_valkey.server.allocator import KEEP_FREED_MEMORY, server_environment
from lmcache_valkey.tools.cli import main as cli_main

VALUE = 32 << 20          # the largest value LMCache and vLLM send
PAGES = VALUE // 4096     # a request that faults all of these got fresh memory
REPEATS = 3
REQUESTS = REPEATS * 2  # two keys

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/<pid>/stat")


def test_our_settings_come_first_and_the_users_win() -> None:
    env = server_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "PATH": "/bin"})
    ours = KEEP_FREED_MEMORY["GLIBC_TUNABLES"][0]
    assert env["GLIBC_TUNABLES"] == f"{ours}:glibc.malloc.arena_max=2"
    assert env["MALLOC_CONF"] == env["JE_MALLOC_CONF"] == "dirty_decay_ms:-1,muzzy_decay_ms:-1"
    assert env["PATH"] == "/bin"


def test_cli_server_prints_the_environment_it_starts_with(capsys, monkeypatch) -> None:
    for name in KEEP_FREED_MEMORY:
        monkeypatch.delenv(name, raising=False)
    assert cli_main(["server", "--print-config"]) == 0
    out = capsys.readouterr().out
    for name, (ours, _sep) in KEEP_FREED_MEMORY.items():
        assert f"# {name}={ours}\n" in out
    assert "io-threads 1\n" in out
    assert cli_main(["server", "--print-config", "--stock-malloc"]) == 0
    assert "MALLOC_CONF" not in capsys.readouterr().out
    # Settings of the user's own are printed too, after ours (they win).
    monkeypatch.setenv("MALLOC_CONF", "narenas:2")
    assert cli_main(["server", "--print-config"]) == 0
    ours = KEEP_FREED_MEMORY["MALLOC_CONF"][0]
    assert f"# MALLOC_CONF={ours},narenas:2\n" in capsys.readouterr().out
    # The command blocks SIGINT/SIGTERM for its sigwait; a caller that goes
    # on must get Ctrl-C back (it broke test_gil's Ctrl-C tests run later).
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def _minor_faults(pid: int) -> int:
    # /proc/<pid>/stat: the fields after "(comm)"; minflt is the 10th field
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def _faults_in_requests(server, make_client) -> tuple[int, int]:
    """Minor faults the server takes in REPEATS x 2 32-MiB SETs, and in as
    many GETs, after a warm-up (overwriting a value needs a buffer more than
    the values: the first overwrites grow the heap)."""
    client = make_client(server.url, num_connections=1)
    keys = [b"big-0", b"big-1"]
    values = [np.full(VALUE, i + 1, np.uint8) for i in range(len(keys))]
    dests = [np.empty(VALUE, np.uint8) for _ in keys]
    for _ in range(3):
        assert all(client.batch_set(keys, values))
    assert all(client.batch_get_into(keys, dests))
    before = _minor_faults(server.pid)
    for _ in range(REPEATS):
        assert all(client.batch_set(keys, values))
    after_sets = _minor_faults(server.pid)
    for _ in range(REPEATS):
        assert list(client.batch_get_into(keys, dests)) == [VALUE] * len(keys)
    after_gets = _minor_faults(server.pid)
    assert all(np.array_equal(d, v) for d, v in zip(dests, values, strict=True))
    return after_sets - before, after_gets - after_sets


@linux_only
def test_large_values_reuse_the_servers_memory(server_kind, make_server, make_client) -> None:
    server = make_server(server_kind)
    sets, gets = _faults_in_requests(server, make_client)
    print(f"{server_kind}: {sets} faults in {REQUESTS} SETs, {gets} in {REQUESTS} GETs")
    # At most one fresh buffer in all (the heap grows once now and then, when
    # no freed block fits); as shipped, it is one per request (below).
    assert sets <= PAGES * 1.1, sets
    assert gets <= PAGES * 1.1, gets


@linux_only
def test_stock_allocators_fault_every_page_of_a_large_set(server_kind, make_server,
                                                          make_client) -> None:
    """What the settings are for: as shipped, each of these servers takes
    fresh memory (faulted in and zeroed) for most of every large SET's pages
    (all of them, or two thirds where glibc's mmap threshold has risen)."""
    server = make_server(server_kind, keep_freed_memory=False)
    sets, gets = _faults_in_requests(server, make_client)
    print(f"{server_kind} as shipped: {sets} faults in {REQUESTS} SETs, {gets} in {REQUESTS} GETs")
    assert sets > REQUESTS * PAGES / 2, sets
