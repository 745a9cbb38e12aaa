"""The server out of memory: ``maxmemory`` reached with ``noeviction`` (every
write answered ``-OOM``) and with ``allkeys-lru`` (keys evicted under the
client). Real servers with a small maxmemory; see tests/server_pressure.py.
The LMCache and vLLM sides of the same faults: test_faults_lmcache.py,
test_faults_vllm.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import server_pressure as mem
from checks import read_back

pytestmark = [pytest.mark.engine, pytest.mark.timeout(60)]

SIZE = 128 * 1024


def values(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, SIZE, dtype=np.uint8) for _ in range(n)]


def test_sets_past_maxmemory_are_per_key_oom_results_and_the_client_carries_on(
        make_server, make_client) -> None:
    s = make_server(config=mem.NOEVICTION)
    c = make_client(s.url, num_connections=2)
    keys = [f"k{i}" for i in range(48)]           # 6 MiB into ~2 MiB of room
    vals = values(len(keys), 1)
    result = c.batch_set(keys, vals)               # no exception: per-key results
    stored = [i for i, ok in enumerate(result) if ok]
    refused = [i for i, ok in enumerate(result) if not ok]
    assert stored and refused
    assert sorted(result.errors) == refused
    assert {result.errors[i].code for i in refused} == {"OOM"}

    got, dests = read_back(c, keys, SIZE)          # same connections, still in sync
    for i in range(len(keys)):
        if i in stored:
            assert got[i] == SIZE and (dests[i] == vals[i]).all()
        else:
            assert got[i] is None
    assert c.batch_exists(keys) == [i in stored for i in range(len(keys))]

    # Room again (a delete is allowed at maxmemory): the refused keys now store.
    assert c.batch_delete([keys[i] for i in stored]) == [1] * len(stored)
    retry = [keys[i] for i in refused[:8]]
    assert c.batch_set(retry, [vals[i] for i in refused[:8]]) == [True] * 8


def test_evicted_keys_read_as_misses_and_the_rest_stay_exact(make_server, make_client) -> None:
    s, r = mem.own_server(make_server, mem.ALLKEYS_LRU)
    c = make_client(s.url, key_prefix="p:", num_connections=2)
    keys = [f"k{i}" for i in range(8)]
    vals = values(len(keys), 2)
    assert all(c.batch_set(keys, vals))

    mem.evict(r, "p:k5")                               # a real eviction, of this key
    mem.pressure(r, evicted_at_least=4)                # and some of the server's choosing
    present = [bool(r.exists(f"p:{k}")) for k in keys]
    assert not present[5]
    assert c.batch_exists(keys) == present
    got, dests = read_back(c, keys, SIZE)
    for i, here in enumerate(present):
        if here:
            assert got[i] == SIZE and (dests[i] == vals[i]).all()
        else:
            assert got[i] is None and not dests[i].any()


def test_writes_refused_while_full_then_accepted_after_the_fillers_go(make_server,
                                                                      make_client) -> None:
    s, r = mem.own_server(make_server, mem.NOEVICTION)
    c = make_client(s.url, num_connections=1)
    mem.fill_until_oom(r)
    result = c.batch_set(["a", "b"], [b"x" * 1024, b"y" * 1024])
    assert result == [False, False] and result.errors[0].code == "OOM"
    mem.make_room(r)
    assert c.batch_set(["a", "b"], [b"x" * 1024, b"y" * 1024]) == [True, True]
