"""ValkeyConnector with vLLM's real scheduler, requests and block hashes.

A real Valkey server; vLLM's ``Scheduler`` decides what to load and save;
worker-side connectors move bytes between CPU KV tensors and the server.
The end-to-end runs with a served model are in ``test_vllm_e2e.py``.
"""

from __future__ import annotations

import importlib.metadata
import time

import pytest

pytest.importorskip("vllm")

from vllm_harness import (  # noqa: E402
    BLOCK,
    Engine,
    Worker,
    computed_before_step,
    prefill_on_new_worker,
    request,
    run_prefill,
    tokens,
    vllm_config,
)

from lmcache_valkey import EmbeddedValkey  # noqa: E402
from lmcache_valkey.errors import ConfigError  # noqa: E402
from lmcache_valkey.vllm.config import ConnectorConfig  # noqa: E402


def test_cold_run_saves_every_full_prompt_block_with_ttl_and_prefix(model_dir, raw, extra):
    vc = vllm_config(model_dir, extra)
    w = Worker(vc, seed=1)
    _, req, out, _ = run_prefill(vc, w, tokens(200))
    meta = out.kv_connector_metadata
    assert meta.loads == []
    [save] = meta.saves
    assert len(save.hashes) == 200 // BLOCK == 6      # the partial 7th block is not stored
    assert save.hashes == [h.hex() for h in req.block_hashes[:6]]
    for h, block_id in zip(save.hashes, save.block_ids, strict=True):
        key = extra["key_prefix"] + w.connector.key_of(h)
        assert raw.get(key) == w.block_bytes(block_id)
        assert 3500_000 < raw.pttl(key) <= 3600_000
    assert w.connector._worker.blocks_saved == 6


def test_restart_loads_the_stored_prefix_bytes_exactly(model_dir, extra):
    vc = vllm_config(model_dir, extra)
    toks = tokens(200, seed=2)
    _, _, stored = prefill_on_new_worker(vc, toks, seed=10)
    # "After a restart": new scheduler, new worker whose KV memory holds other bytes.
    second = Worker(vc, seed=20)
    sched, req, out2, errors = run_prefill(vc, second, toks)
    meta = out2.kv_connector_metadata
    assert errors == set()
    assert computed_before_step(out2) == 6 * BLOCK         # loaded, not prefilled
    assert out2.num_scheduled_tokens[req.request_id] == 200 - 6 * BLOCK
    [load] = meta.loads
    assert load.hashes == list(stored)
    for h, block_id in zip(load.hashes, load.block_ids, strict=True):
        assert second.block_bytes(block_id) == stored[h]
    assert meta.saves == []                             # nothing new to store
    assert second.connector._worker.blocks_loaded == 6


def _stored_then_prefilled(vc, stored: list[int], toks: list[int], **kw):
    """One worker prefills (and saves) `stored`; then a second, new one
    prefills `toks`: (its request, run_prefill's step output)."""
    run_prefill(vc, Worker(vc, seed=1), stored)
    _, req, out, _ = run_prefill(vc, Worker(vc, seed=2), toks, **kw)
    return req, out


def test_last_prompt_token_is_always_computed(model_dir, extra):
    vc = vllm_config(model_dir, extra)
    toks = tokens(4 * BLOCK, seed=3)                    # a whole number of blocks
    req, out = _stored_then_prefilled(vc, toks, toks)
    assert computed_before_step(out) == 3 * BLOCK
    assert out.num_scheduled_tokens[req.request_id] == BLOCK


def test_shared_prefix_loads_only_the_common_blocks(model_dir, extra):
    vc = vllm_config(model_dir, extra)
    base = tokens(200, seed=4)
    other = base[:2 * BLOCK + 5] + tokens(150, seed=5)
    req, out = _stored_then_prefilled(vc, base, other)
    assert computed_before_step(out) == 2 * BLOCK
    [load] = out.kv_connector_metadata.loads
    assert len(load.block_ids) == 2
    [save] = out.kv_connector_metadata.saves            # the diverging blocks are new
    assert save.hashes == [h.hex() for h in req.block_hashes[2:len(other) // BLOCK]]


def test_cache_salt_and_namespace_keep_deployments_apart(model_dir, extra):
    vc = vllm_config(model_dir, extra)
    toks = tokens(200, seed=6)
    # Same tokens under another cache salt: vLLM's hashes differ, so a miss.
    req, out = _stored_then_prefilled(vc, toks, toks, cache_salt="tenant-b")
    assert computed_before_step(out) == 0 and out.kv_connector_metadata.loads == []
    # Another KV dtype: another namespace, so a miss even for identical hashes.
    vc_fp32 = vllm_config(model_dir, extra, dtype="float32")
    w = Worker(vc_fp32, seed=3)
    assert w.connector.namespace != Worker(vc, seed=3).connector.namespace
    _, req, out, _ = run_prefill(vc_fp32, w, toks)
    assert computed_before_step(out) == 0


def test_block_gone_between_lookup_and_load_is_recomputed_and_saved_again(model_dir, raw,
                                                                         extra):
    vc = vllm_config(model_dir, extra)
    assert vc.kv_transfer_config.kv_load_failure_policy == "fail"   # vLLM's default ...
    toks = tokens(200, seed=7)
    run_prefill(vc, Worker(vc, seed=1), toks)
    w = Worker(vc, seed=2)
    assert vc.kv_transfer_config.kv_load_failure_policy == "recompute"  # ... ours
    eng = Engine(vc, [w])
    req = eng.add(request(toks))
    gone = extra["key_prefix"] + w.connector.key_of(req.block_hashes[3].hex())

    def evict(so):  # after the lookup found all 6 blocks, before the workers load
        if so.kv_connector_metadata.loads:
            assert raw.delete(gone) == 1
    eng.run_until(lambda: any(m.loads for m in eng.metas), before_workers=evict)
    [load] = [t for m in eng.metas for t in m.loads]
    assert len(load.block_ids) == 6
    eng.run_until(lambda: eng.first_scheduled(req) is not None)
    errors = set().union(*(o.invalid_block_ids for o in eng.outputs))
    assert errors == {load.block_ids[3]}
    assert computed_before_step(eng.first_scheduled(req)) == 3 * BLOCK  # truncated, recomputed
    eng.settle()
    saves = [h for m in eng.metas for t in m.saves for h in t.hashes]
    assert saves == [req.block_hashes[3].hex()]                # saved again, only it
    assert raw.get(gone) == w.block_bytes(load.block_ids[3])
    assert w.connector.get_block_ids_with_load_errors() == set()   # reported once


def test_local_prefix_cache_hits_are_not_looked_up_again(model_dir, extra):
    vc = vllm_config(model_dir, extra, prefix_caching=True)
    toks = tokens(300, seed=8)
    w = Worker(vc, seed=1)
    eng = Engine(vc, [w])
    r1 = eng.add(request(toks))
    eng.run_until(lambda: eng.first_scheduled(r1) is not None)
    sched = eng.sched
    conn = sched.connector
    assert conn.get_num_new_matched_tokens(r1, 9 * BLOCK) == (0, False)


def test_valkey_down_serves_cold_and_recovers(model_dir, tmp_path):
    with EmbeddedValkey() as s:
        extra = {"url": s.url, "key_prefix": "down:", "connect_timeout_s": 1,
                 "reconnect_backoff_max_s": 0.2}
        vc = vllm_config(model_dir, extra)
        w = Worker(vc, seed=1)
        toks = tokens(200, seed=9)
        run_prefill(vc, w, toks)
        port = s.port
        s.stop()
        sched, req, out, errors = run_prefill(vc, w, toks)      # lookup fails: cold
        assert computed_before_step(out) == 0 and errors == set()
        assert out.kv_connector_metadata.loads == []
    with EmbeddedValkey(port=port):                              # back, empty
        deadline = time.monotonic() + 10
        while True:                                              # the same worker recovers
            run_prefill(vc, w, toks)                             # by itself and stores again
            _, req, out, errors = run_prefill(vc, Worker(vc, seed=2), toks)
            if computed_before_step(out) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert computed_before_step(out) == 6 * BLOCK and errors == set()


def test_config_errors_name_the_option_and_hide_secrets(monkeypatch):
    monkeypatch.delenv("VALKEY_HOST", raising=False)
    with pytest.raises(ConfigError, match="needs a server"):
        ConnectorConfig.from_extra_config({})
    with pytest.raises(ConfigError, match="unknown .*'urll'"):
        ConnectorConfig.from_extra_config({"urll": "valkey://x:1"})
    with pytest.raises(ConfigError, match="load_failure_policy"):
        ConnectorConfig.from_extra_config({"url": "valkey://x:1", "load_failure_policy": "x"})
    cfg = ConnectorConfig.from_extra_config({"url": "valkey://alice:s3cret@h:6379",
                                             "ttl_s": 0})
    assert "s3cret" not in repr(cfg) and cfg.client_config.ttl_s is None
    assert cfg.client_config.key_prefix == b"vllm:kv:"
    assert ConnectorConfig.from_extra_config({"url": "valkey://h:1"}).client_config.ttl_s == 3600


def test_registration_is_idempotent_and_declared_as_entry_point():
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory

    from lmcache_valkey.plugins import register_all
    from lmcache_valkey.vllm import register

    register_all()
    register_all()
    assert register() is True
    assert KVConnectorFactory._registry["ValkeyConnector"]().__name__ == "ValkeyConnector"
    eps = importlib.metadata.entry_points(group="vllm.general_plugins")
    if not any(ep.value == "lmcache_valkey.plugins:register_all" for ep in eps):
        pytest.skip("package not installed (in-place build): no entry-point metadata")


def test_hash_stability_rule_matches_vllm():
    from lmcache_valkey.vllm.config import hash_seed_is_stable

    assert hash_seed_is_stable("sha256", env={})
    assert hash_seed_is_stable("sha256_cbor", env={})
    assert not hash_seed_is_stable("xxhash", env={})          # random NONE_HASH per process
    assert hash_seed_is_stable("xxhash_cbor", env={"PYTHONHASHSEED": "0"})
