"""Server memory faults as vLLM sees them, through the ValkeyConnector with
vLLM's own scheduler (see test_vllm_connector.py for the set-up).

* maxmemory reached (``noeviction``): the workers' saves are refused per
  block (``-OOM``), counted and logged, never raised into vLLM; later
  requests are served by prefill, and blocks are stored again once there is
  room.
* A block evicted (``allkeys-lru``) in the middle of a stored prefix: the
  scheduler's lookup offers only the blocks before the hole; the blocks from
  the hole on are computed, and the evicted one is stored again.

Real servers with a small maxmemory; the evictions are the server's own
(tests/server_pressure.py).
"""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("vllm")

import server_pressure as mem  # noqa: E402
from vllm_harness import (  # noqa: E402
    BLOCK,
    Worker,
    computed_before_step,
    prefill_on_new_worker,
    request,
    run_prefill,
    scheduler,
    tokens,
    vllm_config,
)

pytestmark = pytest.mark.timeout(120)

PREFIX = "vf:"
N_BLOCKS = 6               # 200 prompt tokens: 6 full blocks of 32


def test_maxmemory_reached_saves_fail_per_block_and_serving_goes_on(model_dir, make_server,
                                                                   caplog) -> None:
    s, r = mem.own_server(make_server, mem.NOEVICTION)
    mem.fill_until_oom(r)
    vc = vllm_config(model_dir, {"url": s.url, "key_prefix": PREFIX})
    toks = tokens(200, seed=11)

    w = Worker(vc, seed=1)
    # vLLM's "vllm" logger does not propagate: listen on ours directly.
    worker_log = logging.getLogger("vllm.lmcache_valkey.vllm.worker_side")
    worker_log.addHandler(caplog.handler)
    try:
        _, _, out, errors = run_prefill(vc, w, toks)      # nothing raises into vLLM
    finally:
        worker_log.removeHandler(caplog.handler)
    assert errors == set()
    assert len(out.kv_connector_metadata.saves[0].hashes) == N_BLOCKS
    assert w.connector._worker.blocks_saved == 0           # every SET was refused (OOM)
    assert f"{N_BLOCKS} of {N_BLOCKS} blocks not stored (e.g. OOM" in caplog.text

    _, _, out, errors = run_prefill(vc, Worker(vc, seed=2), toks)
    assert computed_before_step(out) == 0 and errors == set()   # served by prefill
    assert out.kv_connector_metadata.loads == []

    mem.make_room(r)                                           # room again
    w3, out, stored = prefill_on_new_worker(vc, toks, seed=3)
    assert w3.connector._worker.blocks_saved == N_BLOCKS
    w4 = Worker(vc, seed=4)
    _, _, out, errors = run_prefill(vc, w4, toks)
    assert computed_before_step(out) == N_BLOCKS * BLOCK and errors == set()
    [load] = out.kv_connector_metadata.loads
    for h, b in zip(load.hashes, load.block_ids, strict=True):
        assert w4.block_bytes(b) == stored[h]


def test_block_evicted_mid_prefix_only_the_blocks_before_it_are_loaded(model_dir,
                                                                       make_server) -> None:
    s, r = mem.own_server(make_server, mem.ALLKEYS_LRU)
    vc = vllm_config(model_dir, {"url": s.url, "key_prefix": PREFIX})
    toks = tokens(200, seed=12)
    w1, out, stored = prefill_on_new_worker(vc, toks, seed=1)
    hashes = list(stored)
    assert len(hashes) == N_BLOCKS

    mem.evict(r, PREFIX + w1.connector.key_of(hashes[3]))     # a real LRU eviction
    assert [bool(r.exists(PREFIX + w1.connector.key_of(h))) for h in hashes] == \
        [True, True, True, False, True, True]

    w2 = Worker(vc, seed=2)
    _, _, out, errors = run_prefill(vc, w2, toks)
    assert computed_before_step(out) == 3 * BLOCK and errors == set()
    [load] = out.kv_connector_metadata.loads
    assert load.hashes == hashes[:3]
    for h, b in zip(load.hashes, load.block_ids, strict=True):
        assert w2.block_bytes(b) == stored[h]
    [save] = out.kv_connector_metadata.saves
    assert save.hashes == [hashes[3]]                      # the hole is filled again

    # Under more pressure the server picks what to evict (approximately
    # LRU): the lookup offers exactly the blocks before the first one gone.
    mem.pressure(r, evicted_at_least=3)
    present = [bool(r.exists(PREFIX + w1.connector.key_of(h))) for h in hashes]
    run = next((i for i, here in enumerate(present) if not here), N_BLOCKS)
    sched = scheduler(vc)
    req = request(toks)
    sched.add_request(req)                                 # the lookup starts here
    sched.connector._scheduler._reqs[req.request_id].lookup.future.result(timeout=10)
    assert sched.connector.get_num_new_matched_tokens(req, 0) == (run * BLOCK, run > 0)
