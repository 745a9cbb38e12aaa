"""The ValkeyConnector never on vLLM's critical path, driven by vLLM's real scheduler.

:class:`vllm_harness.Engine` steps vLLM's ``Scheduler`` and worker-side
connectors (one or two fake TP ranks, through vLLM's ``KVOutputAggregator``)
as the engine core does. Stalls come from the fault proxy
(tests/fault_proxy.py) between the workers and a real server: a real server
cannot be told to stop answering for a while. The "staging forced" tests run
the GPU path's code on CPU with emulated streams (lmcache_valkey/vllm/staging.py)
whose copies run late, on their own threads, so ordering mistakes show up as
wrong bytes.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

pytest.importorskip("vllm")

from fault_proxy import PASS, STALL, FaultProxy  # noqa: E402
from vllm.v1.request import RequestStatus  # noqa: E402
from vllm_harness import (  # noqa: E402
    BLOCK,
    Engine,
    Worker,
    block_content,
    request,
    tokens,
    vllm_config,
)

from lmcache_valkey.vllm.ranks import Replication  # noqa: E402


@pytest.fixture
def proxy(server):
    with FaultProxy(server.host, server.port) as p:
        yield p


def store_prefix(vc, toks: list[int], **worker_kw) -> Worker:
    """Run one request to completion on its own engine; its blocks end up stored."""
    w = Worker(vc, seed=1, **worker_kw)
    eng = Engine(vc, [w])
    req = eng.add(request(toks, max_tokens=1))
    eng.run_until(lambda: req.is_finished())
    w.settle()
    w.engine = eng
    return w


def stored_value(raw, extra, worker: Worker, block_hash: bytes) -> bytes | None:
    return raw.get(extra["key_prefix"] + worker.connector.key_of(block_hash.hex()))


def stall_before_load(proxy: FaultProxy):
    """Stall the workers' link once the scheduler has planned a load."""
    def stall(so) -> None:
        if so.kv_connector_metadata.loads:
            proxy.set_mode(STALL)
    return stall


def test_other_requests_advance_while_a_load_is_stalled(model_dir, server, proxy, extra):
    vc = vllm_config(model_dir, extra)
    warm_toks = tokens(200, seed=1)
    store_prefix(vc, warm_toks)
    # Scheduler straight to the server; worker through the proxy, which stalls
    # once the load is submitted.
    vc_w = vllm_config(model_dir, {**extra, "url": proxy.url})
    w = Worker(vc_w, seed=2)
    eng = Engine(vc, [w])
    warm = eng.add(request(warm_toks, max_tokens=4))
    eng.run_until(lambda: warm.status == RequestStatus.WAITING_FOR_REMOTE_KVS,
                  before_workers=stall_before_load(proxy))
    cold = eng.add(request(tokens(100, seed=2), max_tokens=4))
    eng.run_until(lambda: cold.is_finished())            # served while the load hangs
    assert warm.status == RequestStatus.WAITING_FOR_REMOTE_KVS
    proxy.set_mode(PASS)
    eng.run_until(lambda: warm.is_finished(), max_steps=2000)
    assert computed(eng, warm) == 6 * BLOCK              # loaded, not recomputed
    assert set().union(*(o.invalid_block_ids for o in eng.outputs)) == set()


def computed(eng: Engine, req) -> int:
    return eng.first_scheduled(req).scheduled_new_reqs[0].num_computed_tokens


def _run_on_two_fresh_ranks(vc, toks: list[int], seed: int):
    """`toks` run to the end by a new engine with two new ranks (workers
    seeded `seed`, `seed + 1`), as after a restart: (engine, request)."""
    eng = Engine(vc, [Worker(vc, seed=seed + i, rank=(i, 0)) for i in range(2)])
    req = eng.add(request(toks, max_tokens=1))
    eng.run_until(lambda: req.is_finished())
    return eng, req


def test_abort_during_a_load_keeps_its_blocks_until_the_load_ends(model_dir, server, proxy,
                                                                  extra):
    vc = vllm_config(model_dir, extra)
    toks = tokens(200, seed=3)
    store_prefix(vc, toks)
    w = Worker(vllm_config(model_dir, {**extra, "url": proxy.url}), seed=2)
    eng = Engine(vc, [w])
    req = eng.add(request(toks))
    eng.run_until(lambda: req.status == RequestStatus.WAITING_FOR_REMOTE_KVS,
                  before_workers=stall_before_load(proxy))
    free_before = eng.sched.kv_cache_manager.block_pool.get_num_free_blocks()
    eng.sched.finish_requests(req.request_id, RequestStatus.FINISHED_ABORTED)
    for _ in range(5):
        eng.step()
    # The receive may still write into them: vLLM must not hand them out.
    assert eng.sched.kv_cache_manager.block_pool.get_num_free_blocks() == free_before
    assert req.request_id in eng.sched.requests
    proxy.set_mode(PASS)
    eng.run_until(lambda: req.request_id not in eng.sched.requests, max_steps=2000)
    assert eng.sched.kv_cache_manager.block_pool.get_num_free_blocks() > free_before


def test_the_lookup_starts_when_the_request_arrives(model_dir, server, extra):
    """Submitted from ``on_new_request``: once its answer is in, the first ask
    (no inline wait: ``lookup_wait_ms`` 0) finds the prefix and the load is
    planned in that same step."""
    toks = tokens(200, seed=7)
    store_prefix(vllm_config(model_dir, extra), toks)
    vc = vllm_config(model_dir, {**extra, "lookup_wait_ms": 0})
    eng = Engine(vc, [Worker(vc, seed=2)])
    req = eng.add(request(toks, max_tokens=2))
    lookup = eng.sched.connector._scheduler._reqs[req.request_id].lookup
    assert lookup is not None                            # in flight before any schedule
    lookup.future.result(timeout=5)
    eng.step()
    assert req.status == RequestStatus.WAITING_FOR_REMOTE_KVS
    assert eng.sched.connector.hook_timer.summary()["get_num_new_matched_tokens"]["n"] == 1
    eng.run_until(lambda: req.is_finished())
    assert computed(eng, req) == 6 * BLOCK


def test_a_stalled_server_blocks_no_hook_and_is_served_cold(model_dir, server, proxy, extra):
    """Every hook returns at once with the server stalled (the 50 ms target is
    measured by examples/long_doc_qa/run.py --hook-timings; here: far below
    the stall), requests are served cold, and hits return after the stall."""
    toks = tokens(200, seed=4)
    store_prefix(vllm_config(model_dir, extra), toks)
    vc = vllm_config(model_dir, {**extra, "url": proxy.url, "lookup_timeout_ms": 100})
    w = Worker(vc, seed=2)
    eng = Engine(vc, [w])
    proxy.set_mode(STALL)
    t0 = time.monotonic()
    reqs = [eng.add(request(toks if i == 0 else tokens(150, seed=40 + i), max_tokens=2))
            for i in range(3)]
    eng.run_until(lambda: all(r.is_finished() for r in reqs), max_steps=5000)
    assert time.monotonic() - t0 < 5.0                   # served cold, no stall inherited
    assert computed(eng, reqs[0]) == 0
    timings = {**eng.sched.connector.hook_timer.summary(), **w.connector.hook_timer.summary()}
    assert timings["get_num_new_matched_tokens"]["n"] > 0
    slowest = max(t["max_ms"] for t in timings.values())
    assert slowest < 250, timings                        # no hook waits for the server
    stats = eng.kv_stats.data
    assert stats["lookup_timeouts"] + stats["lookup_skipped"] >= 1
    proxy.set_mode(PASS)
    deadline = time.monotonic() + 20                     # the abandoned batches drain ...
    while time.monotonic() < deadline:
        eng2 = Engine(vc, [w])
        again = eng2.add(request(toks, max_tokens=1))
        eng2.run_until(again.is_finished, max_steps=5000)
        if computed(eng2, again):
            break
        time.sleep(0.2)
    assert computed(eng2, again) == 6 * BLOCK            # ... and hits come back by themselves


def test_staging_pool_full_drops_and_counts_saves(model_dir, server, proxy, extra):
    block = len(Worker(vllm_config(model_dir, extra), seed=0).block_bytes(0))
    vc = vllm_config(model_dir, {**extra, "url": proxy.url, "staging_bytes": 6 * block,
                                 "chunk_bytes": 6 * block})
    w = Worker(vc, seed=1)
    eng = Engine(vc, [w])
    proxy.set_mode(STALL)                                 # the first save holds the one chunk
    reqs = [eng.add(request(tokens(200, seed=50 + i), max_tokens=1)) for i in range(2)]
    eng.run_until(lambda: all(r.is_finished() for r in reqs), max_steps=5000)
    assert w.connector._worker.blocks_dropped == 6       # never queued without bound ...
    proxy.set_mode(PASS)
    w.settle(30)
    eng.step()
    assert eng.kv_stats.data["save_dropped_blocks"] == 6  # ... and counted
    assert eng.kv_stats.data["saved_blocks"] == 6


def test_shutdown_drains_saves_in_flight(model_dir, raw, extra):
    vc = vllm_config(model_dir, extra)
    w = Worker(vc, seed=1)
    eng = Engine(vc, [w])
    req = eng.add(request(tokens(200, seed=6), max_tokens=1))
    eng.run_until(lambda: req.is_finished())
    w.connector.shutdown()                                # no settle: shutdown waits
    for h in req.block_hashes[:6]:
        assert stored_value(raw, extra, w, h) is not None


@pytest.mark.parametrize("delay_s", [0.0, 0.003])
@pytest.mark.parametrize("staging", ["force", "auto"])
def test_staged_copies_round_trip_and_never_race_block_reuse(model_dir, raw, extra, staging,
                                                             delay_s):
    """Saves copy on a thread that runs late — the GPU code path on CPU with
    emulated streams ("force"), or the CPU copier ("auto") — while a tiny
    block pool is reused at once by the next requests. Every stored value must
    be its block's content, and loads (staged: in chunks smaller than a
    request) must bring the exact bytes back."""
    extra = {**extra, "staging": staging, "chunk_bytes": 1,   # 1 block per chunk
             "staging_bytes": 1 << 20}
    vc = vllm_config(model_dir, extra, prefix_caching=False)
    ranks = [(0, 0), (1, 0)]
    workers = [Worker(vc, seed=i, rank=r, emulated_delay_s=delay_s) for i, r in enumerate(ranks)]
    assert all(w.connector._worker.staged == (staging == "force") for w in workers)
    eng = Engine(vc, workers, num_blocks=16)             # 2 prompts' worth: reused at once
    docs = [tokens(200, seed=60 + i) for i in range(4)]
    reqs = [eng.add(request(d, max_tokens=2)) for d in docs]
    eng.run_until(lambda: all(r.is_finished() for r in reqs), max_steps=5000)
    eng.settle()
    nbytes = len(workers[0].block_bytes(0))
    for r in reqs:
        for h in r.block_hashes[:6]:
            for w in workers:
                assert stored_value(raw, extra, w, h) == block_content(h, w.rank, nbytes)
    # A second engine (fresh KV memory) loads them back through the staging chunks.
    workers2 = [Worker(vc, seed=10 + i, rank=r, emulated_delay_s=delay_s)
                for i, r in enumerate(ranks)]
    eng2 = Engine(vc, workers2, num_blocks=16)
    again = eng2.add(request(docs[0], max_tokens=1))
    seen: dict[int, list[bytes]] = {}

    def grab(so):  # the blocks as loaded, before the fake forward overwrites any
        if eng2.first_scheduled(again) is None and so.scheduled_new_reqs:
            (ids,) = eng2.sched.kv_cache_manager.get_block_ids(again.request_id)
            seen.update({i: [w.block_bytes(ids[i]) for w in workers2] for i in range(6)})
    while eng2.first_scheduled(again) is None:
        eng2.step(before_workers=grab)
    assert computed(eng2, again) == 6 * BLOCK
    for i, h in enumerate(again.block_hashes[:6]):
        assert seen[i] == [block_content(h, w.rank, nbytes) for w in workers2]


def test_every_ranks_ttl_is_renewed_by_the_schedulers_lookup(model_dir, raw, extra):
    vc = vllm_config(model_dir, extra)
    vc.parallel_config.tensor_parallel_size = 2      # two ranks' keys per block
    toks = tokens(200, seed=7)
    workers = [Worker(vc, seed=i, rank=(i, 0)) for i in range(2)]
    eng = Engine(vc, workers)
    req = eng.add(request(toks, max_tokens=1))
    eng.run_until(lambda: req.is_finished())
    eng.settle()
    rank1 = [extra["key_prefix"] + workers[1].connector.key_of(h.hex())
             for h in req.block_hashes[:6]]
    # Rank 1's keys close to expiry (60 s left of 3600: long enough for fresh
    # ranks to start on a loaded machine; 2 s was not): only the lookup's
    # renewal brings them back to the full TTL.
    for k in rank1:
        raw.pexpire(k, 60_000)
    eng2, again = _run_on_two_fresh_ranks(vc, toks, seed=5)
    assert computed(eng2, again) == 6 * BLOCK
    assert all(raw.pttl(k) > 3_500_000 for k in rank1)   # renewed with rank 0's
    # A block missing on one rank only is a miss for all: never a partial load.
    raw.delete(rank1[2])
    eng3, third = _run_on_two_fresh_ranks(vc, toks, seed=7)
    assert computed(eng3, third) == 2 * BLOCK


def test_replicated_kv_is_written_once_and_read_by_every_rank():
    mla = Replication(tp_size=4, pp_size=2, total_kv_heads=1, use_mla=True)
    assert mla.key_ranks() == ["mla.0", "mla.1"]
    assert [mla.key_rank(t, 1) for t in range(4)] == [("mla.1", True)] + [("mla.1", False)] * 3
    few_heads = Replication(tp_size=4, pp_size=1, total_kv_heads=2)
    assert few_heads.key_ranks() == ["h0.0", "h1.0"]
    assert [few_heads.key_rank(t, 0) for t in range(4)] == [
        ("h0.0", True), ("h0.0", False), ("h1.0", True), ("h1.0", False)]
    plain = Replication(tp_size=2, pp_size=1, total_kv_heads=8)
    assert plain.key_ranks() == ["0.0", "1.0"] and plain.key_rank(1, 0) == ("1.0", True)


def test_a_non_writer_rank_saves_nothing_and_loads_the_shared_value(model_dir, raw, extra,
                                                                    monkeypatch):
    from lmcache_valkey.vllm import connector as connector_module

    shared = Replication(tp_size=2, pp_size=1, total_kv_heads=1)
    monkeypatch.setattr(connector_module.Replication, "of", classmethod(lambda cls, vc: shared))
    vc = vllm_config(model_dir, extra)
    toks = tokens(200, seed=8)
    writer, reader = (Worker(vc, seed=i, rank=(i, 0)) for i in range(2))
    assert writer.connector.key_of("x") == reader.connector.key_of("x")
    reader.rank = writer.rank                        # replicated: both compute the same bytes
    eng = Engine(vc, [writer, reader])
    req = eng.add(request(toks, max_tokens=1))
    eng.run_until(lambda: req.is_finished())
    eng.settle()
    assert writer.connector._worker.blocks_saved == 6
    assert reader.connector._worker.blocks_saved == 0
    eng2, again = _run_on_two_fresh_ranks(vc, toks, seed=3)
    assert computed(eng2, again) == 6 * BLOCK
    assert [w.connector._worker.blocks_loaded for w in eng2.workers] == [6, 6]


def test_sleep_mode_drains_transfers_and_touches_no_kv_memory_while_asleep(model_dir, extra):
    """vLLM 0.33's sleep mode: unregister_kv_caches before the KV memory is
    unmapped, restore_kv_caches after wake-up (same addresses)."""
    from lmcache_valkey.vllm.connector import ValkeyConnector
    from lmcache_valkey.vllm.metadata import BlockTransfer

    assert ValkeyConnector.supports_sleep_mode(None) is True
    vc = vllm_config(model_dir, extra)
    toks = tokens(200, seed=9)
    stored = store_prefix(vc, toks)
    hashes = [h.hex() for h in request(toks).block_hashes[:6]]
    w = Worker(vc, seed=2)
    side = w.connector._worker
    load = [BlockTransfer("r", hashes, list(range(6)))]
    side.start_loads(load)                           # in flight when sleep comes ...
    w.connector.unregister_kv_caches()
    assert not side.busy()                           # ... drained first
    assert side.poll_loads() == set() and side.take_load_errors() == set()
    w.kv = {n: t.zero_() for n, t in w.kv.items()}
    side.start_loads([BlockTransfer("r2", hashes, list(range(6)))])
    assert side.poll_loads() == {"r2"}               # asleep: reported, all failed,
    assert side.take_load_errors() == set(range(6))  # nothing written
    assert all(w.block_bytes(b) == bytes(len(w.block_bytes(b))) for b in range(6))
    side.start_saves([BlockTransfer("r3", hashes, list(range(6)))])
    assert side.blocks_dropped == 6 and not side.busy()
    w.connector.restore_kv_caches()
    side.start_loads([BlockTransfer("r4", hashes, list(range(6)))])
    w.settle()
    assert [w.block_bytes(b) for b in range(6)] == \
        [stored.block_bytes(b) for b in stored_block_ids(stored, hashes)]


def stored_block_ids(worker: Worker, hashes: list[str]) -> list[int]:
    """Where ``store_prefix``'s engine computed each block (its metadata)."""
    ids = {h: b for m in worker.engine.metas for t in m.saves
           for h, b in zip(t.hashes, t.block_ids, strict=True)}
    return [ids[h] for h in hashes]


def test_options_are_validated(model_dir, extra):
    from lmcache_valkey.errors import ConfigError
    from lmcache_valkey.vllm.config import ConnectorConfig

    for bad in ({"staging": "gpu"}, {"staging_bytes": 0}, {"lookup_timeout_ms": "x"},
                {"lookup_wait_ms": -1}, {"chunk_bytes": True}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            ConnectorConfig.from_extra_config({"url": "valkey://h:1", **bad})
    cfg = ConnectorConfig.from_extra_config({"url": "valkey://h:1", "staging_bytes": 1 << 20})
    assert dataclasses.asdict(cfg)["staging_bytes"] == 1 << 20 and "staging='auto'" in repr(cfg)
