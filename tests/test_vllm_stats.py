"""The ValkeyConnector's figures through vLLM's own KV connector stats path:
the connector's stats objects, vLLM's ``KVConnectorLogging`` (the log line)
and ``KVConnectorProm`` (its Prometheus metrics), with vLLM's real
scheduler and requests against a real Valkey server."""

from __future__ import annotations

import functools

import pytest

pytest.importorskip("vllm")

from prometheus_client import (  # noqa: E402
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import (  # noqa: E402
    KVConnectorLogging,
    KVConnectorProm,
)
from vllm_harness import BLOCK, Engine, Worker, request, tokens, vllm_config  # noqa: E402

from lmcache_valkey import ValkeyClient  # noqa: E402
from lmcache_valkey.vllm.connector import ValkeyConnector  # noqa: E402
from lmcache_valkey.vllm.stats import ValkeyConnectorStats  # noqa: E402


def step(vc, worker: Worker, toks: list[int]) -> ValkeyConnectorStats:
    """One request on a fresh scheduler, stepped until it ran and its saves
    ended (they run in the background); the connector stats vLLM got."""
    eng = Engine(vc, [worker])
    req = eng.add(request(toks))
    eng.run_until(lambda: eng.first_scheduled(req) is not None)
    worker.settle()
    eng.step()        # the next step's output carries what the background saves counted
    return eng.kv_stats


def test_hits_misses_load_errors_and_bytes_reach_vllms_log_and_prometheus(
        model_dir, server, extra) -> None:
    vc = vllm_config(model_dir, extra)
    toks = tokens(200, seed=11)                          # 6 full blocks
    cold = Worker(vc, seed=1)
    saved = step(vc, cold, toks)
    block_nbytes = cold.connector._worker.layout.block_nbytes
    assert saved.data["lookup_blocks"] == 6
    assert saved.data["saved_blocks"] == 6 and saved.data["saved_bytes"] == 6 * block_nbytes
    assert cold.connector.get_kv_connector_stats() is None        # taken: nothing new

    # Warm: all 6 found; one is deleted between lookup and load.
    warm = Worker(vc, seed=2)
    eng = Engine(vc, [warm])
    req = eng.add(request(toks))

    def evict(so):
        if so.kv_connector_metadata.loads:
            with ValkeyClient(server.url, key_prefix=extra["key_prefix"]) as c:
                assert c.batch_delete([warm.connector.key_of(req.block_hashes[2].hex())]) == [1]
    eng.run_until(lambda: eng.first_scheduled(req) is not None, before_workers=evict)
    eng.settle()
    eng.step()        # carries what the background save of the recomputed block counted
    total = eng.kv_stats                  # worker + scheduler, as vLLM's engine core sums them
    assert total.data["lookups"] == 1 and total.data["hit_blocks"] == 6
    assert total.data["hit_tokens"] == 6 * BLOCK
    assert total.data["loaded_blocks"] == 5 and total.data["load_error_blocks"] == 1
    assert total.data["loaded_bytes"] == 5 * block_nbytes
    assert total.data["saved_blocks"] == 1          # the recomputed block is stored again

    # As vLLM moves them: to_dict, rebuilt by the class method in the logging process.
    rebuilt = ValkeyConnector.build_kv_connector_stats(total.to_dict())
    assert isinstance(rebuilt, ValkeyConnectorStats)
    assert rebuilt.reduce() == {
        "lookups": 1, "hit_blocks": 6, "miss_blocks": 0, "hit_rate_pct": 100.0,
        "hit_tokens": 6 * BLOCK, "loaded_blocks": 5, "load_error_blocks": 1,
        "loaded_MiB": round(5 * block_nbytes / 2**20, 1), "saved_blocks": 1,
        "save_error_blocks": 0, "saved_MiB": round(block_nbytes / 2**20, 1),
        "save_dropped_blocks": 0,
        "lookup_timeouts": 0, "failed_batches": 0}

    lines: list[str] = []
    logging_ = KVConnectorLogging(vc.kv_transfer_config)
    logging_.observe(total.to_dict())
    logging_.log(log_fn=lambda fmt, *args: lines.append(fmt % args))
    assert lines == ["KV Transfer metrics: lookups=1, hit_blocks=6, miss_blocks=0, "
                     "hit_rate_pct=100.0, hit_tokens=192, loaded_blocks=5, load_error_blocks=1, "
                     f"loaded_MiB={round(5 * block_nbytes / 2**20, 1)}, saved_blocks=1, "
                     f"save_error_blocks=0, saved_MiB={round(block_nbytes / 2**20, 1)}, "
                     "save_dropped_blocks=0, "
                     "lookup_timeouts=0, failed_batches=0"]

    registry = CollectorRegistry()

    class Prom(KVConnectorProm):  # vLLM's class, its metrics in a private registry
        _gauge_cls = functools.partial(Gauge, registry=registry)
        _counter_cls = functools.partial(Counter, registry=registry)
        _histogram_cls = functools.partial(Histogram, registry=registry)

    prom = Prom(vc, labelnames=["model_name", "engine"], per_engine_labelvalues={0: ["m", "0"]})
    prom.observe(total.to_dict(), engine_idx=0)
    text = generate_latest(registry).decode()
    assert 'vllm:valkey_hit_blocks_total{engine="0",model_name="m"} 6.0' in text
    assert 'vllm:valkey_load_error_blocks_total{engine="0",model_name="m"} 1.0' in text
    assert f'vllm:valkey_loaded_bytes_total{{engine="0",model_name="m"}} {5 * block_nbytes}.0' \
        in text


def test_misses_and_a_server_down_are_counted(model_dir, extra, make_server) -> None:
    vc = vllm_config(model_dir, extra)
    reduced = step(vc, Worker(vc, seed=1), tokens(100, seed=12)).reduce()   # cold: 3 misses
    assert (reduced["hit_blocks"], reduced["miss_blocks"], reduced["hit_rate_pct"]) == (0, 3, 0.0)

    s = make_server()
    down = vllm_config(model_dir, {"url": s.url, "connect_timeout_s": 1})
    w = Worker(down, seed=1)
    s.stop()
    stats = step(down, w, tokens(100, seed=13))
    assert stats.data["lookup_failures"] == 1
    assert stats.data["save_failures"] == 1 and stats.data["save_error_blocks"] == 3
