"""ValkeyL2Adapter (LMCache multiprocess mode) against real Valkey servers.

MemoryObjs come from LMCache's own TensorMemoryAllocator over a CPU tensor,
as L1 hands them to L2 adapters. Results are read the way LMCache's
controllers read them: wait for the kind's eventfd, then pop/query.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

import pytest

pytest.importorskip("lmcache")
torch = pytest.importorskip("torch")

from lmcache.v1.distributed.api import ObjectKey  # noqa: E402
from lmcache.v1.distributed.internal_api import L1MemoryDesc  # noqa: E402
from lmcache.v1.distributed.l2_adapters import create_l2_adapter  # noqa: E402
from lmcache.v1.distributed.l2_adapters.config import (  # noqa: E402
    parse_args_to_l2_adapters_config,
)
from lmcache_helpers import BIG_SHAPE, SHAPE, Runner, _bytes, _keys, store_new  # noqa: E402

from lmcache_valkey.lmcache import ValkeyL2Adapter, ValkeyL2AdapterConfig, register  # noqa: E402
from lmcache_valkey.lmcache.l2_adapter import encode_object_key  # noqa: E402


@pytest.fixture
def adapter(server, prefix, make_adapter) -> ValkeyL2Adapter:
    return make_adapter(server.url, key_prefix=prefix, num_connections=2)


# -- data path ----------------------------------------------------------------


def test_store_lookup_load_exact_bytes(adapter, alloc):
    run = Runner(adapter)
    keys = _keys(4)
    src = alloc(2) + alloc(2, BIG_SHAPE)
    dst = alloc(2, fill="zero") + alloc(2, BIG_SHAPE, fill="zero")

    result = run.store(keys, src)
    assert result.is_successful()
    assert result.bytes_transferred() == sum(o.get_size() for o in src)
    assert run.lookup(keys) == [True] * 4
    assert run.load(keys, dst) == [True] * 4
    for s, d in zip(src, dst, strict=True):
        assert _bytes(d) == _bytes(s)  # (random bits: NaNs, so compare bytes)
        assert d.tensor.shape == s.tensor.shape


def test_misses_and_mixed_hits(adapter, alloc):
    run = Runner(adapter)
    keys = _keys(6)
    src = alloc(6)
    stored = [0, 2, 5]
    assert run.store([keys[i] for i in stored], [src[i] for i in stored]).is_successful()

    assert run.lookup(keys) == [i in stored for i in range(6)]
    assert run.lookup(_keys(3, start=100)) == [False] * 3

    dst = alloc(6, fill="zero")
    assert run.load(keys, dst) == [i in stored for i in range(6)]
    for i in range(6):
        if i in stored:
            assert _bytes(dst[i]) == _bytes(src[i])
        else:
            assert set(_bytes(dst[i])) == {0xEE}  # a miss leaves the buffer alone


def test_stored_length_must_match_object_size(adapter, alloc):
    run = Runner(adapter)
    small_key, big_key = _keys(2)
    small = alloc(1, torch.Size([2, 4, 16, 32]))[0]  # 8 KiB
    big = alloc(1, BIG_SHAPE)[0]                    # 128 KiB
    assert run.store([small_key, big_key], [small, big]).is_successful()

    into_big, into_small = alloc(1, SHAPE, fill="zero")[0], alloc(1, torch.Size([2, 4, 16, 32]),
                                                                   fill="zero")[0]
    # 8 KiB stored, 16 KiB expected: short -> failure; 128 KiB into 8 KiB: too large.
    assert run.load([small_key, big_key], [into_big, into_small]) == [False, False]
    assert set(_bytes(into_small)) == {0xEE}  # a too-large value is not written


def test_empty_batches(adapter):
    run = Runner(adapter)
    result = run.store([], [])
    assert result.is_successful() and result.bytes_transferred() == 0
    assert run.lookup([]) == []
    assert run.load([], []) == []


def test_keys_are_prefixed_and_encode_every_field(adapter, alloc, prefix, raw):
    run = Runner(adapter)
    keys = [
        ObjectKey(chunk_hash=b"\x01\x02", model_name="org/llama-3", kv_rank=0),
        ObjectKey(chunk_hash=b"\x01\x02", model_name="org/llama-3", kv_rank=3),
        ObjectKey(chunk_hash=b"\x01\x02", model_name="org/llama-3", kv_rank=0,
                  object_group_id=1),
        ObjectKey(chunk_hash=b"\x01\x02", model_name="org/llama-3", kv_rank=0,
                  cache_salt="tenant-7"),
        ObjectKey(chunk_hash=b"\x01\x02", model_name="other", kv_rank=0),
    ]
    src = alloc(5)
    assert run.store(keys, src).is_successful()

    names = sorted(raw.keys(prefix + "*"))
    expected = sorted(prefix.encode() + encode_object_key(k) for k in keys)
    assert names == expected
    assert prefix.encode() + b"org/llama-3@00000000@1@0102" in names
    assert prefix.encode() + b"org/llama-3@00000000@0@0102@tenant-7" in names

    dst = alloc(5, fill="zero")
    assert run.load(keys, dst) == [True] * 5
    for s, d in zip(src, dst, strict=True):  # five distinct keys, each with its own value
        assert _bytes(d) == _bytes(s)


def test_encoding_is_a_fixed_function_of_the_key():
    """No per-process hashing: the name is spelled out from the key's fields."""
    key = ObjectKey(chunk_hash=b"\xab" * 16, model_name="m", kv_rank=2, cache_salt="s")
    assert encode_object_key(key) == b"m@00000002@0@" + b"ab" * 16 + b"@s"
    assert encode_object_key(ObjectKey(chunk_hash=b"\x00\x01", model_name="m", kv_rank=0,
                                       object_group_id=17)) == b"m@00000000@11@0001"
    # The same names as LMCache's native connectors (``resp``) use.
    from lmcache.v1.distributed.l2_adapters.native_connector_l2_adapter import (
        _object_key_to_string,
    )

    for k in (key, *_keys(3, salt="t1", group=2, rank=5), *_keys(2, model="a/b-c")):
        assert encode_object_key(k) == _object_key_to_string(k).encode()


def _stored(adapter, alloc, n, *shape):
    """A Runner on `adapter` and `n` chunks stored through it: (run, keys, src)."""
    run = Runner(adapter)
    return (run, *store_new(run, alloc, n, *shape))


def test_ttl_set_on_store_and_renewed_by_lookup(server, prefix, make_adapter, alloc, raw):
    adapter = make_adapter(server.url, key_prefix=prefix, ttl_s=300)
    run, keys, _ = _stored(adapter, alloc, 2)
    names = [prefix.encode() + encode_object_key(k) for k in keys]
    for name in names:
        assert 0 < raw.pttl(name) <= 300_000

    raw.pexpire(names[0], 5_000)
    assert run.lookup(keys) == [True, True]  # the "lock": full TTL again
    assert raw.pttl(names[0]) > 200_000


def test_no_ttl_and_default_prefix(server, make_adapter, alloc, raw):
    adapter = make_adapter(server.url)  # key_prefix defaults to "lmcache:"
    run = Runner(adapter)
    key = _keys(1, model=f"default-prefix-{os.getpid()}")
    assert run.store(key, alloc(1)).is_successful()
    name = b"lmcache:" + encode_object_key(key[0])
    assert raw.exists(name) and raw.pttl(name) == -1
    adapter.delete(key)
    assert not raw.exists(name)


def test_lookup_of_expired_key_is_a_miss(server, prefix, make_adapter, alloc, raw):
    adapter = make_adapter(server.url, key_prefix=prefix, ttl_s=300)
    run, keys, _ = _stored(adapter, alloc, 2)
    raw.delete(prefix.encode() + encode_object_key(keys[1]))  # as expiry/eviction would
    assert run.lookup(keys) == [True, False]


def test_unlock_is_a_noop(adapter):
    assert adapter.submit_unlock(_keys(3)) is None
    assert adapter.submit_unlock([]) is None


def test_delete_and_usage(adapter, alloc, prefix, raw):
    run = Runner(adapter)
    keys = _keys(3) + _keys(1, salt="user-b", start=50)
    src = alloc(4)
    size = src[0].get_size()
    assert run.store(keys, src).is_successful()
    assert run.store(keys[:1], src[:1]).is_successful()  # a re-store counts once
    usage = adapter.get_usage()
    assert usage.total_bytes_used == 4 * size
    assert dict(usage.bytes_by_cache_salt) == {"": 3 * size, "user-b": size}

    adapter.delete([keys[0], keys[3], _keys(1, start=999)[0]])
    assert not raw.exists(prefix.encode() + encode_object_key(keys[0]))
    assert run.lookup(keys) == [False, True, True, False]
    usage = adapter.get_usage()
    assert usage.total_bytes_used == 2 * size
    assert dict(usage.bytes_by_cache_salt) == {"": 2 * size}


def test_expired_keys_leave_the_usage(server, prefix, make_adapter, alloc):
    adapter = make_adapter(server.url, key_prefix=prefix, ttl_s=0.2)
    run = Runner(adapter)
    assert run.store(_keys(2), alloc(2)).is_successful()
    assert adapter.get_usage().total_bytes_used > 0
    time.sleep(0.3)
    assert adapter.get_usage().total_bytes_used == 0
    assert run.lookup(_keys(2)) == [False, False]


def test_list_l2_keys(adapter, alloc):
    run = Runner(adapter)
    a_keys, b_keys = _keys(3, model="model-a"), _keys(2, model="model-b", salt="s1")
    objs = alloc(5)
    assert run.store(a_keys + b_keys, objs).is_successful()

    page = adapter.list_l2_keys(model_name="model-b")
    assert page.next_page_token is None
    assert sorted((e.key.model_name, e.key.chunk_hash_hex, e.key.cache_salt, e.size_bytes)
                  for e in page.entries) == sorted(
        ("model-b", k.chunk_hash.hex(), "s1", objs[0].get_size()) for k in b_keys)

    seen, token, pages = set(), None, 0
    while True:
        page = adapter.list_l2_keys(page_size=1, cursor=token)
        seen |= {(e.key.model_name, e.key.chunk_hash_hex) for e in page.entries}
        token, pages = page.next_page_token, pages + 1
        if token is None:
            break
        assert pages < 100
    assert seen == {(k.model_name, k.chunk_hash.hex()) for k in a_keys + b_keys}
    with pytest.raises(ValueError):
        adapter.list_l2_keys(page_size=0)
    with pytest.raises(ValueError):
        adapter.list_l2_keys(cursor="not-a-cursor")


def test_two_controller_threads(adapter, alloc):
    """LMCache's store controller and prefetch controller call at the same time."""
    errors: list[BaseException] = []
    hot = _keys(8, model="hot")
    hot_src = alloc(8)
    assert Runner(adapter).store(hot, hot_src).is_successful()
    new_src = alloc(8)
    dsts = alloc(8, fill="zero")

    def controller(body: Callable[[Runner], None]) -> threading.Thread:
        def target() -> None:
            try:
                body(Runner(adapter))
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        return threading.Thread(target=target)

    def store_controller(run: Runner) -> None:
        for rnd in range(6):
            assert run.store(_keys(8, model="new", start=8 * rnd), new_src).is_successful()

    def prefetch_controller(run: Runner) -> None:
        for _ in range(6):
            assert run.lookup(hot) == [True] * 8
            assert run.load(hot, dsts) == [True] * 8
            assert [_bytes(d) for d in dsts] == [_bytes(s) for s in hot_src]

    threads = [controller(store_controller), controller(prefetch_controller)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors
    assert Runner(adapter).lookup(_keys(48, model="new")) == [True] * 48
    fds = {adapter.get_store_event_fd(), adapter.get_lookup_and_lock_event_fd(),
           adapter.get_load_event_fd()}
    assert len(fds) == 3


def test_bad_inputs_fail_the_task_without_raising(adapter, alloc):
    run = Runner(adapter)
    # keys and objects of different lengths
    result = run.store(_keys(2), alloc(1))
    assert not result.is_successful()
    assert run.load(_keys(2), alloc(1, fill="zero")) == [False, False]
    # a strided (non-contiguous) tensor cannot be addressed as bytes
    from lmcache.v1.memory_management import MemoryFormat, MemoryObjMetadata, TensorMemoryObj

    strided = torch.zeros(64, dtype=torch.uint8)[::2]
    meta = MemoryObjMetadata(shape=torch.Size([32]), dtype=torch.uint8, address=0,
                             phy_size=32, fmt=MemoryFormat.KV_2LTD, ref_count=1)
    obj = TensorMemoryObj(strided, meta, parent_allocator=None)
    assert not run.store(_keys(1), [obj]).is_successful()
    assert run.load(_keys(1), [obj]) == [False]


# -- faults -------------------------------------------------------------------


def test_server_killed_then_restarted(make_server, make_adapter, alloc, prefix, caplog):
    srv = make_server()
    adapter = make_adapter(srv.url, key_prefix=prefix, op_timeout_s=2.0, connect_timeout_s=1.0)
    run, keys, src = _stored(adapter, alloc, 4, BIG_SHAPE)

    srv.kill()
    caplog.set_level(logging.WARNING, logger="lmcache_valkey.lmcache.l2_adapter")
    dst = alloc(4, BIG_SHAPE, fill="zero")
    # Every call returns normally; each kind's eventfd still fires.
    assert not run.store(keys, src).is_successful()
    assert run.lookup(keys) == [False] * 4
    assert run.load(keys, dst) == [False] * 4
    assert all(set(_bytes(d)) == {0xEE} for d in dst)
    status = adapter.report_status()
    assert status["is_healthy"] is False and status["last_error"]
    assert any("task failed" in r.getMessage() for r in caplog.records)

    srv.restart()  # same port, empty (persistence is off)
    deadline = time.monotonic() + 15
    while True:  # the client reconnects by itself once its back-off ends
        if run.store(keys, src).is_successful():
            break
        assert time.monotonic() < deadline, "adapter did not recover after restart"
        time.sleep(0.2)
    assert run.lookup(keys) == [True] * 4
    assert run.load(keys, dst) == [True] * 4
    assert [_bytes(d) for d in dst] == [_bytes(s) for s in src]
    assert adapter.report_status()["is_healthy"] is True


def _own_server_with_8_chunks(make_server, make_adapter, alloc, prefix, **params):
    """A server of the test's own, an adapter on it, and 8 chunks stored."""
    srv = make_server()
    adapter = make_adapter(srv.url, key_prefix=prefix, **params)
    return (srv, adapter, *_stored(adapter, alloc, 8, BIG_SHAPE))


def test_server_killed_with_tasks_in_flight(make_server, make_adapter, alloc, prefix):
    srv, adapter, run, keys, src = _own_server_with_8_chunks(
        make_server, make_adapter, alloc, prefix, op_timeout_s=2.0, connect_timeout_s=1.0)

    dsts = [alloc(8, BIG_SHAPE, fill="zero") for _ in range(6)]
    load_ids = [adapter.submit_load_task(keys, d) for d in dsts]
    lookup_ids = [adapter.submit_lookup_and_lock_task(keys, {}) for _ in range(3)]
    store_ids = [adapter.submit_store_task(_keys(8, start=100 + 8 * i), src) for i in range(3)]
    srv.kill()

    for tid, dst in zip(load_ids, dsts, strict=True):
        bits = run.load_result(tid)
        for ok, s, d in zip(bits, src, dst, strict=True):  # a reported success is always real
            if ok:
                assert _bytes(d) == _bytes(s)
    for tid in lookup_ids:
        assert len(run.lookup_result(tid)) == 8
    for tid in store_ids:
        run.store_result(tid)  # completes (success or not), never hangs


def test_close_with_tasks_in_flight(make_server, make_adapter, alloc, prefix):
    _, adapter, run, keys, src = _own_server_with_8_chunks(make_server, make_adapter, alloc,
                                                           prefix)

    dsts = [alloc(8, BIG_SHAPE, fill="zero") for _ in range(4)]
    load_ids = [adapter.submit_load_task(keys, d) for d in dsts]
    store_id = adapter.submit_store_task(_keys(8, start=500), src)
    adapter.close()
    adapter.close()  # idempotent

    # Every task has a result (no fd wait: the fds are closed now).
    stores = adapter.pop_completed_store_tasks()
    assert store_id in stores
    for tid, dst in zip(load_ids, dsts, strict=True):
        bm = adapter.query_load_result(tid)
        assert bm is not None
        for i in range(8):
            if bm.test(i):
                assert _bytes(dst[i]) == _bytes(src[i])
    assert adapter.report_status()["inflight_tasks"] == 0

    # After close: calls still return normally, tasks fail.
    tid = adapter.submit_load_task(keys, dsts[0])
    assert adapter.query_load_result(tid).popcount() == 0
    tid = adapter.submit_store_task(keys, src)
    assert not adapter.pop_completed_store_tasks()[tid].is_successful()
    tid = adapter.submit_lookup_and_lock_task(keys, {})
    assert adapter.query_lookup_and_lock_result(tid).popcount() == 0
    adapter.delete(keys)
    assert adapter.report_status()["is_healthy"] is False


# -- configuration and secrets -------------------------------------------------


def test_config_from_dict_and_errors():
    cfg = ValkeyL2AdapterConfig.from_dict({
        "type": "lmcache_valkey", "url": "valkey://127.0.0.1:6390/2", "key_prefix": "kv:",
        "ttl_s": 60, "num_connections": 3, "op_timeout_s": 7, "max_inflight_bytes": 1 << 20,
        "eviction": {"eviction_policy": "LRU"}, "shared": True,
    })
    c = cfg.client_config
    assert (c.host, c.port, c.db, c.key_prefix, c.ttl_s, c.num_connections, c.op_timeout_s,
            c.max_inflight_bytes) == ("127.0.0.1", 6390, 2, b"kv:", 60.0, 3, 7.0, 1 << 20)
    assert ValkeyL2AdapterConfig.from_dict({"url": "valkey://h:1"}).ttl_s is None
    assert ValkeyL2AdapterConfig.from_dict({"url": "valkey://h:1"}).key_prefix == b"lmcache:"
    assert "ttl_s" in ValkeyL2AdapterConfig.help()

    bad = [
        ({"url": "valkey://h:1", "ttl": 5}, "ttl"),
        ({"url": "valkey://h:1", "ttl_s": -1}, "ttl_s"),
        ({"url": "valkey://h:1", "num_connections": "many"}, "num_connections"),
        ({"url": "valkey://h:1", "max_capacity_gb": -2}, "max_capacity_gb"),
        ({"url": "ftp://h:1"}, "scheme"),
        ({"url": 42}, "url"),
    ]
    for params, word in bad:
        with pytest.raises(ValueError, match=word):
            ValkeyL2AdapterConfig.from_dict(params)
    with pytest.raises(ValueError, match="valid options are"):
        ValkeyL2AdapterConfig.from_dict({"url": "valkey://h:1", "hots": "x"})


def test_url_is_required(monkeypatch):
    monkeypatch.delenv("VALKEY_HOST", raising=False)
    with pytest.raises(ValueError, match="url is required"):
        ValkeyL2AdapterConfig.from_dict({"key_prefix": "x"})


def test_password_never_shown(make_server, make_adapter, alloc, prefix, caplog):
    secret = "pw-Zq81-never-print"
    srv = make_server(password=secret)
    url = f"valkey://:{secret}@{srv.host}:{srv.port}"
    cfg = ValkeyL2AdapterConfig.from_dict({"url": url})
    assert secret not in repr(cfg) and secret not in str(cfg) and secret not in repr(vars(cfg))
    from lmcache.v1.utils.json_utils import make_json_safe  # what GET /config serves

    assert secret not in json.dumps(make_json_safe(vars(cfg)))
    with pytest.raises(ValueError) as err:
        ValkeyL2AdapterConfig.from_dict({"url": url, "ttl_s": "soon"})
    assert secret not in str(err.value)

    caplog.set_level(logging.DEBUG)
    adapter = make_adapter(url, key_prefix=prefix, op_timeout_s=2.0, connect_timeout_s=1.0)
    run = Runner(adapter)
    objs = alloc(2)
    assert run.store(_keys(2), objs).is_successful()  # AUTH worked
    srv.kill()
    assert not run.store(_keys(2), objs).is_successful()
    assert secret not in repr(adapter)
    assert secret not in json.dumps(adapter.report_status(), default=str)
    assert all(secret not in r.getMessage() for r in caplog.records)


def test_raw_dict_config_is_accepted(server, prefix, alloc):
    adapter = ValkeyL2Adapter({"url": server.url, "key_prefix": prefix})
    try:
        _round_trip(adapter, alloc, 1)
    finally:
        adapter.close()


# -- LMCache routes ------------------------------------------------------------


def _round_trip(adapter, alloc, n: int) -> None:
    """Store n fresh chunks through the adapter and load them back, byte-exact."""
    run = Runner(adapter)
    src, dst = alloc(n), alloc(n, fill="zero")
    assert run.store(_keys(n), src).is_successful()
    assert run.load(_keys(n), dst) == [True] * n
    assert [_bytes(d) for d in dst] == [_bytes(s) for s in src]


def _build(spec: dict, l1: torch.Tensor):
    cfgs = parse_args_to_l2_adapters_config(
        argparse.Namespace(l2_adapter=[json.dumps(spec)]))
    desc = L1MemoryDesc(ptr=l1.data_ptr(), size=l1.numel(), align_bytes=1)
    return cfgs.adapters[0], create_l2_adapter(cfgs.adapters[0], l1_memory_desc=desc)


@pytest.mark.parametrize("spec_extra", [
    {"module_path": "lmcache_valkey.lmcache", "config_class_name": "ValkeyL2AdapterConfig"},
    {"module_path": "lmcache_valkey.lmcache"},  # config class found by naming convention
    {"module_path": "lmcache_valkey.lmcache.l2_adapter"},
], ids=["explicit-config-class", "convention", "submodule"])
def test_plugin_route(server, prefix, alloc, raw, spec_extra):
    spec = {"type": "plugin", "class_name": "ValkeyL2Adapter", **spec_extra,
            "adapter_params": {"url": server.url, "key_prefix": prefix, "ttl_s": 120,
                               "num_connections": 2}}
    _, adapter = _build(spec, torch.zeros(1024, dtype=torch.uint8))
    try:
        assert isinstance(adapter, ValkeyL2Adapter)
        _round_trip(adapter, alloc, 2)
        assert 0 < raw.pttl(prefix.encode() + encode_object_key(_keys(1)[0])) <= 120_000
    finally:
        adapter.close()


def test_register_and_short_type_name(server, prefix, alloc):
    assert register() is True
    assert register() is True  # idempotent
    spec = {"type": "lmcache_valkey", "url": server.url, "key_prefix": prefix,
            "eviction": {"eviction_policy": "LRU", "trigger_watermark": 0.8}}
    cfg, adapter = _build(spec, torch.zeros(1024, dtype=torch.uint8))
    try:
        assert isinstance(cfg, ValkeyL2AdapterConfig)
        assert cfg.eviction_config is not None  # LMCache's own keys still reach LMCache
        assert isinstance(adapter, ValkeyL2Adapter)
        _round_trip(adapter, alloc, 1)
    finally:
        adapter.close()
    with pytest.raises(ValueError, match="bogus"):
        _build({"type": "lmcache_valkey", "url": server.url, "bogus": 1},
               torch.zeros(16, dtype=torch.uint8))


def test_register_without_lmcache(monkeypatch):
    monkeypatch.setitem(sys.modules, "lmcache.v1.distributed.l2_adapters.config", None)
    assert register() is False


def test_objects_held_until_the_transfer_ends(make_server, make_adapter, alloc, prefix):
    """LMCache may drop its references to a task's MemoryObjs (abandoned task);
    the adapter keeps them alive until no worker can write into them."""
    import gc
    import signal
    import weakref

    srv = make_server()
    adapter = make_adapter(srv.url, key_prefix=prefix, op_timeout_s=30.0)
    run = Runner(adapter)
    keys = _keys(4)
    assert run.store(keys, alloc(4, BIG_SHAPE)).is_successful()

    from lmcache.v1.memory_management import MemoryFormat, MemoryObjMetadata, TensorMemoryObj

    def standalone() -> TensorMemoryObj:
        raw = torch.zeros(BIG_SHAPE.numel() * 2, dtype=torch.uint8)
        meta = MemoryObjMetadata(shape=BIG_SHAPE, dtype=torch.bfloat16, address=0,
                                 phy_size=raw.numel(), fmt=MemoryFormat.KV_2LTD, ref_count=1)
        return TensorMemoryObj(raw, meta, parent_allocator=None)

    os.kill(srv.pid, signal.SIGSTOP)  # the server stops answering mid-task
    try:
        objs = [standalone() for _ in range(4)]
        refs = [weakref.ref(o) for o in objs]
        tid = adapter.submit_load_task(keys, objs)
        del objs
        gc.collect()
        assert all(r() is not None for r in refs)
    finally:
        os.kill(srv.pid, signal.SIGCONT)
    assert run.load_result(tid) == [True] * 4
    gc.collect()
    assert all(r() is None for r in refs)  # released once the transfer ended


def test_password_from_environment(make_server, make_adapter, alloc, prefix, monkeypatch):
    secret = "env-pw-4471"
    srv = make_server(password=secret)
    monkeypatch.setenv("VALKEY_PASSWORD", secret)
    adapter = make_adapter(srv.url, key_prefix=prefix)  # no password in the JSON
    _round_trip(adapter, alloc, 1)
    assert secret not in json.dumps(adapter.report_status(), default=str)


def test_adapter_created_while_server_is_down(make_server, make_adapter, alloc, prefix):
    srv = make_server()
    srv.stop()
    adapter = make_adapter(srv.url, key_prefix=prefix, connect_timeout_s=1.0)
    run = Runner(adapter)
    assert run.lookup(_keys(2)) == [False, False]
    srv.start()
    src = alloc(2)
    deadline = time.monotonic() + 15
    while not run.store(_keys(2), src).is_successful():
        assert time.monotonic() < deadline, "adapter never connected"
        time.sleep(0.2)
    assert run.lookup(_keys(2)) == [True, True]
