"""The SGLang HiCache backend's logic without SGLang: ValkeyPageStore (what
ValkeyHiCacheStorage runs) against a real Valkey, driven through a fake host
pool that implements the part of SGLang's pool contract the backend uses
(``get_page_buffer_meta``, ``get_data_page``, ``get_dummy_flat_data_page``,
``page_size``, ``layout``). The fake is needed only where SGLang is not
installed; test_sglang_hicache.py runs the same paths with SGLang's real
pools and controller.

Faults are the real server's: killed, stopped (SIGSTOP), restarted.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import server_pressure as mem  # noqa: E402
from closing import closing_factory  # noqa: E402

from lmcache_valkey.errors import ConfigError  # noqa: E402
from lmcache_valkey.sglang.config import HiCacheValkeyConfig  # noqa: E402
from lmcache_valkey.sglang.page_store import ValkeyPageStore  # noqa: E402

pytestmark = pytest.mark.timeout(60)

PAGE, LAYERS, HEADS, DIM = 4, 3, 2, 8


class FakeMHAHostPool:
    """An MHA host pool in SGLang's ``layer_first`` or ``page_first`` layout:
    the same buffer shapes, pointer runs and flat-page order as
    ``MHATokenToKVPoolHost`` (sglang/srt/mem_cache/pool_host/mha.py)."""

    dtype = torch.float16
    layer_num, head_num = LAYERS, HEADS

    def __init__(self, layout: str, pages: int = 8, head_dim: int = DIM) -> None:
        self.layout, self.page_size, self.size = layout, PAGE, pages * PAGE
        self.head_dim = dim = head_dim
        dims = ((2, LAYERS, self.size, HEADS, dim) if layout == "layer_first"
                else (2, self.size, LAYERS, HEADS, dim))
        self.kv_buffer = torch.zeros(dims, dtype=self.dtype)

    def get_page_buffer_meta(self, indices):
        dim = self.head_dim
        item, base = self.dtype.itemsize, self.kv_buffer.data_ptr()
        v_off = LAYERS * self.size * HEADS * dim * item
        ptrs, sizes = [], []
        for index in indices.tolist()[::PAGE]:
            if self.layout == "layer_first":
                for layer in range(LAYERS):
                    k = base + (index * HEADS * dim + layer * self.size * HEADS * dim) * item
                    ptrs += [k, k + v_off]
                    sizes += [PAGE * HEADS * dim * item] * 2
            else:
                k = base + index * LAYERS * HEADS * dim * item
                ptrs += [k, k + v_off]
                sizes += [LAYERS * PAGE * HEADS * dim * item] * 2
        return ptrs, sizes

    def get_data_page(self, index, flat=True):
        if self.layout == "layer_first":
            page = self.kv_buffer[:, :, index:index + PAGE]
        else:
            page = self.kv_buffer[:, index:index + PAGE]
        return page.flatten() if flat else page

    def get_dummy_flat_data_page(self):
        return torch.zeros(2 * LAYERS * PAGE * HEADS * self.head_dim, dtype=self.dtype)

    def fill_random(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.kv_buffer.copy_(torch.randn(self.kv_buffer.shape, generator=g).to(self.dtype))

    def page_bytes(self, index: int) -> bytes:
        """The page in stored order: all K (layer-major), then all V."""
        page = self.get_data_page(index, flat=False)
        if self.layout == "page_first":
            return page.flatten().numpy().tobytes()
        return page.contiguous().numpy().tobytes()


def storage_config(extra: dict, tp_rank: int = 0, tp_size: int = 1, model: str = "m/llama",
                   mla: bool = False) -> types.SimpleNamespace:
    return types.SimpleNamespace(tp_rank=tp_rank, tp_size=tp_size, pp_rank=0, pp_size=1,
                                 attn_cp_rank=0, attn_cp_size=1, is_mla_model=mla,
                                 model_name=model, extra_config=dict(extra))


@pytest.fixture
def make_store():
    def build(extra: dict, pool=None, **kw) -> ValkeyPageStore:
        s = ValkeyPageStore(storage_config({"op_timeout_s": 10, **extra}, **kw), env={})
        if pool is not None:
            s.register_pool(pool)
        return s

    yield from closing_factory(build)


def idx(*pages: int):
    return torch.cat([torch.arange(p * PAGE, (p + 1) * PAGE) for p in pages] +
                     [torch.zeros(0, dtype=torch.int64)])


HASHES = [f"{i:064x}" for i in range(1, 7)]


@pytest.mark.parametrize("layout", ["layer_first", "page_first"])
def test_zero_copy_round_trip_into_another_pool_is_byte_exact(server, prefix, make_store,
                                                               layout) -> None:
    src, dst = FakeMHAHostPool(layout), FakeMHAHostPool(layout)
    src.fill_random(1)
    a = make_store({"url": server.url, "key_prefix": prefix}, src)
    b = make_store({"url": server.url, "key_prefix": prefix}, dst)   # another instance
    assert a.batch_set_v1(HASHES[:3], idx(1, 2, 5)) == [True] * 3
    assert b.batch_exists(HASHES[:4]) == 3
    assert b.batch_get_v1(HASHES[:3], idx(0, 6, 3)) == [True] * 3
    for s, d in ((1, 0), (2, 6), (5, 3)):
        assert dst.page_bytes(d * PAGE) == src.page_bytes(s * PAGE)
    assert a.totals()["backup_pages"] == 3 and b.totals()["prefetch_pages"] == 3


def test_generic_and_zero_copy_interfaces_share_values(server, prefix, make_store) -> None:
    pool = FakeMHAHostPool("layer_first")
    pool.fill_random(2)
    s = make_store({"url": server.url, "key_prefix": prefix}, pool)
    assert s.batch_set_v1(HASHES[:2], idx(3, 4)) == [True, True]
    pages = s.batch_get(HASHES[:3], [pool.get_dummy_flat_data_page() for _ in range(3)])
    assert pages[2] is None
    assert pages[0].numpy().tobytes() == pool.page_bytes(3 * PAGE)   # the flat page order
    assert torch.equal(pages[1], pool.get_data_page(4 * PAGE))

    assert s.batch_set(HASHES[3:5], [pool.get_data_page(0), pool.get_data_page(PAGE)])
    assert s.set(HASHES[5], pool.get_data_page(2 * PAGE))
    assert s.exists(HASHES[5]) and not s.exists("f" * 64)
    got = s.get(HASHES[5])                       # into a fresh flat page of the pool
    assert torch.equal(got, pool.get_data_page(2 * PAGE))
    other = FakeMHAHostPool("layer_first")
    t = make_store({"url": server.url, "key_prefix": prefix}, other)
    assert t.batch_get_v1(HASHES[3:5], idx(6, 7)) == [True, True]
    assert other.page_bytes(6 * PAGE) == pool.page_bytes(0)
    assert other.page_bytes(7 * PAGE) == pool.page_bytes(PAGE)


def test_keys_name_model_format_and_rank(server, prefix, make_store, raw) -> None:
    pool = FakeMHAHostPool("page_first")
    s = make_store({"url": server.url, "key_prefix": prefix}, pool, tp_rank=1, tp_size=2)
    s.batch_set_v1(HASHES[:1], idx(0))
    key = f"{prefix}m/llama:v1.mha.tl.float16.p4.l3.2x8:1:2:{HASHES[0]}"
    assert raw.exists(key) and raw.pttl(key) > 3_500_000 - 60_000   # default TTL 1 h
    mla = make_store({"url": server.url, "key_prefix": prefix}, types.SimpleNamespace(
        layout="page_first_direct", dtype=torch.bfloat16, layer_num=61, kv_cache_dim=576,
        page_size=64), mla=True, tp_rank=3, tp_size=8)
    assert mla.namespace == "m/llama:v1.mla.lt.bfloat16.p64.l61.576:"
    # Another layout family, TP shard or model never sees these pages.
    for other in (dict(tp_rank=0, tp_size=2), dict(tp_rank=1, tp_size=4),
                  dict(tp_rank=1, tp_size=2, model="other")):
        o = make_store({"url": server.url, "key_prefix": prefix}, pool, **other)
        assert o.batch_exists(HASHES[:1]) == 0
    o = make_store({"url": server.url, "key_prefix": prefix}, FakeMHAHostPool("layer_first"),
                   tp_rank=1, tp_size=2)
    assert o.batch_exists(HASHES[:1]) == 0


def test_batch_exists_counts_the_leading_run_and_renews_ttls(server, prefix, make_store,
                                                             raw) -> None:
    pool = FakeMHAHostPool("page_first")
    s = make_store({"url": server.url, "key_prefix": prefix, "ttl_s": 100}, pool)
    assert s.batch_set_v1([HASHES[0], HASHES[1], HASHES[3]], idx(0, 1, 3)) == [True] * 3
    names = [prefix + s.namespace + h for h in HASHES[:4]]
    for n in (names[0], names[1], names[3]):
        raw.pexpire(n, 5000)
    assert s.batch_exists(HASHES[:4]) == 2
    assert raw.pttl(names[0]) > 90_000 and raw.pttl(names[1]) > 90_000
    assert s.batch_exists([]) == 0 and s.batch_set_v1([], idx()) == [] \
        and s.batch_get_v1([], idx()) == []


def test_a_value_of_the_wrong_length_is_a_miss(server, prefix, make_store, raw) -> None:
    pool = FakeMHAHostPool("layer_first")
    s = make_store({"url": server.url, "key_prefix": prefix}, pool)
    nbytes = len(pool.page_bytes(0))
    raw.set(prefix + s.namespace + HASHES[0], b"x" * (nbytes - 1))
    raw.set(prefix + s.namespace + HASHES[1], b"y" * (nbytes + 1))
    raw.set(prefix + s.namespace + HASHES[2], b"z" * nbytes)
    assert s.batch_get_v1(HASHES[:3], idx(0, 1, 2)) == [False, False, True]
    assert pool.page_bytes(PAGE) == b"\0" * nbytes        # the long value was not written
    assert pool.page_bytes(2 * PAGE) == b"z" * nbytes
    assert s.batch_get(HASHES[:2]) == [None, None]


def test_a_pointer_outside_the_pool_fails_the_call_without_writing(server, prefix,
                                                                   make_store) -> None:
    pool = FakeMHAHostPool("page_first")
    s = make_store({"url": server.url, "key_prefix": prefix}, pool)
    assert s.batch_set_v1(HASHES[:1], idx(0)) == [True]
    real = pool.get_page_buffer_meta
    pool.get_page_buffer_meta = lambda i: ([p + 10**12 for p in real(i)[0]], real(i)[1])
    assert s.batch_get_v1(HASHES[:1], idx(1)) == [False]
    assert s.batch_set_v1(HASHES[1:2], idx(1)) == [False]


def test_four_threads_at_once_as_sglang_calls_in(server, prefix, make_store) -> None:
    """Prefetch, backup, scheduler and metrics threads share one backend."""
    pool = FakeMHAHostPool("layer_first", pages=16)
    pool.fill_random(9)
    s = make_store({"url": server.url, "key_prefix": prefix}, pool)

    def work(t: int) -> None:
        hashes = [f"{t:02x}{i:062x}" for i in range(2)]
        for _ in range(10):
            assert s.batch_set_v1(hashes, idx(2 * t, 2 * t + 1)) == [True, True]
            assert s.batch_exists(hashes) == 2
            assert s.batch_get_v1(hashes, idx(8 + 2 * t, 9 + 2 * t)) == [True, True]
            for i in range(2):
                loaded, stored = (8 + 2 * t + i) * PAGE, (2 * t + i) * PAGE
                assert pool.page_bytes(loaded) == pool.page_bytes(stored)
            s.samples.take()

    with ThreadPoolExecutor(4) as ex:
        list(ex.map(work, range(4)))
    assert s.totals()["prefetch_pages"] == 80 and s.totals()["backup_pages"] == 80


def test_clear_unlinks_only_this_namespace(server, prefix, make_store, raw) -> None:
    pool = FakeMHAHostPool("page_first")
    s = make_store({"url": server.url, "key_prefix": prefix}, pool)
    other = make_store({"url": server.url, "key_prefix": prefix}, pool, tp_rank=1, tp_size=2)
    s.batch_set_v1(HASHES[:3], idx(0, 1, 2))
    other.batch_set_v1(HASHES[:2], idx(0, 1))
    raw.set(prefix + "unrelated", b"1")
    raw.set(s.namespace + HASHES[0], b"1")          # same names without our prefix
    assert s.server_stats().keys_under_prefix == 6
    assert s.clear() == 3
    assert s.batch_exists(HASHES[:3]) == 0 and other.batch_exists(HASHES[:2]) == 2
    assert raw.exists(prefix + "unrelated") and raw.exists(s.namespace + HASHES[0])


def test_server_stats_and_metrics(server, prefix, make_store) -> None:
    pool = FakeMHAHostPool("page_first")
    s = make_store({"url": server.url, "key_prefix": prefix}, pool)
    s.batch_set_v1(HASHES[:2], idx(0, 1))
    s.batch_get_v1(HASHES[:3], idx(2, 3, 4))
    facts = s.server_stats()
    assert facts.keys_under_prefix == 2 and facts.total("connected_clients") >= 1
    assert facts.total("used_memory") > 0
    taken = s.samples.take()
    assert taken["backup_pgs"] == [2] and taken["prefetch_pgs"] == [2]
    assert len(taken["prefetch_bandwidth"]) == 1 and taken["prefetch_bandwidth"][0] > 0
    assert s.samples.take()["backup_pgs"] == []
    assert s.totals()["prefetch_failed_pages"] == 1


# -- configuration ---------------------------------------------------------------------


def test_config_from_the_extra_config_and_sglang_keys_pass(server) -> None:
    c = HiCacheValkeyConfig.from_extra_config(
        {"backend_name": "valkey", "module_path": "lmcache_valkey.sglang",
         "class_name": "ValkeyHiCacheStorage", "interface_v1": 1, "prefetch_threshold": 256,
         "url": "valkey://:s3cret@127.0.0.1:7000/2", "ttl_s": 0, "num_connections": 4,
         "checksum": "crc32c"}, env={})
    cc = c.client_config
    assert (cc.host, cc.port, cc.db, cc.password.get(), cc.ttl_s, cc.num_connections,
            cc.key_prefix, cc.checksum) == ("127.0.0.1", 7000, 2, "s3cret", None, 4,
                                            b"hicache:", "crc32c")
    assert "s3cret" not in repr(c)


def test_the_example_config_file_is_valid() -> None:
    example = Path(__file__).parent.parent / "examples" / "sglang" / "valkey-hicache.json"
    c = HiCacheValkeyConfig.from_extra_config(json.loads(example.read_text()), env={})
    assert (c.client_config.host, c.client_config.ttl_s) == ("127.0.0.1", 86400.0)


def test_no_secret_in_logs_even_when_calls_fail(make_store, caplog) -> None:
    with caplog.at_level("INFO", logger="lmcache_valkey"):
        s = make_store({"url": "valkey://user:s3cret@127.0.0.1:1", "connect_timeout_s": 0.5},
                       FakeMHAHostPool("page_first"))
        assert s.batch_set_v1(HASHES[:1], idx(0)) == [False]      # nothing listens there
        assert s.batch_exists(HASHES[:1]) == 0
    assert "ValkeyHiCacheStorage" in caplog.text and "127.0.0.1:1" in caplog.text
    assert "s3cret" not in caplog.text and "user" not in caplog.text


def test_config_from_the_environment_as_upstream() -> None:
    env = {"VALKEY_HOST": "10.1.2.3", "VALKEY_PORT": "7001", "VALKEY_DB": "3",
           "VALKEY_PASSWORD": "pw"}
    cc = HiCacheValkeyConfig.from_extra_config({"backend_name": "valkey"}, env=env).client_config
    assert (cc.host, cc.port, cc.db, cc.password.get(), cc.ttl_s) == ("10.1.2.3", 7001, 3,
                                                                       "pw", 3600.0)


@pytest.mark.parametrize("extra, message", [
    ({"url": "valkey://h:1", "ttl": 5}, "unknown option(s) ['ttl']"),
    ({"url": 5}, "url must be a string"),
    ({"url": "http://h:1"}, "unsupported URL scheme"),
    ({"url": "valkey://h:1", "num_connections": "x"}, "num_connections must be an integer"),
    ({"url": "valkey://h:1", "scan_limit": 0}, "scan_limit must be an integer >= 1"),
    ({}, "needs a server"),
])
def test_bad_config_is_an_error_naming_the_option(extra, message) -> None:
    with pytest.raises(ConfigError, match=r"ValkeyHiCacheStorage.*") as e:
        HiCacheValkeyConfig.from_extra_config(extra, env={})
    assert message in str(e.value)


def test_without_sglang_the_storage_class_says_so() -> None:
    if importlib.util.find_spec("sglang") is not None:
        pytest.skip("SGLang is installed here")
    import lmcache_valkey.sglang as pkg

    assert pkg.ValkeyPageStore is ValkeyPageStore
    with pytest.raises(ImportError, match="needs SGLang"):
        pkg.ValkeyHiCacheStorage  # noqa: B018


# -- faults ------------------------------------------------------------------------------


def test_server_killed_then_back_every_call_fails_soft_then_recovers(make_server,
                                                                     make_store) -> None:
    srv = make_server()
    pool = FakeMHAHostPool("layer_first")
    pool.fill_random(3)
    s = make_store({"url": srv.url, "reconnect_backoff_max_s": 0.05, "connect_timeout_s": 1},
                   pool)
    assert s.batch_set_v1(HASHES[:2], idx(0, 1)) == [True, True]
    srv.kill()
    assert s.batch_set_v1(HASHES[2:4], idx(2, 3)) == [False, False]
    assert s.batch_get_v1(HASHES[:2], idx(4, 5)) == [False, False]
    assert s.batch_exists(HASHES[:2]) == 0
    assert s.batch_get(HASHES[:1]) == [None] and s.batch_set(HASHES[:1], [pool.get_data_page(0)]) \
        is False and s.exists(HASHES[0]) is False
    assert s.clear() == 0
    srv.restart()
    assert _eventually(lambda: s.batch_set_v1(HASHES[:2], idx(0, 1)) == [True, True])
    assert s.batch_get_v1(HASHES[:2], idx(6, 7)) == [True, True]
    assert pool.page_bytes(6 * PAGE) == pool.page_bytes(0)


def test_server_stalled_calls_time_out_then_recover(make_server, make_store) -> None:
    srv = make_server()
    pool = FakeMHAHostPool("page_first")
    s = make_store({"url": srv.url, "op_timeout_s": 0.5}, pool)
    assert s.batch_set_v1(HASHES[:1], idx(0)) == [True]
    os.kill(srv.pid, signal.SIGSTOP)
    try:
        assert s.batch_get_v1(HASHES[:1], idx(1)) == [False]
        assert s.batch_exists(HASHES[:1]) == 0
        assert s.batch_set_v1(HASHES[1:2], idx(1)) == [False]
    finally:
        os.kill(srv.pid, signal.SIGCONT)
    assert _eventually(lambda: s.batch_get_v1(HASHES[:1], idx(1)) == [True])


def test_maxmemory_reached_pages_are_not_stored_and_nothing_raises(make_server, make_store,
                                                                    caplog) -> None:
    srv = make_server(config=mem.NOEVICTION)
    mem.fill_until_oom(mem.admin(srv))
    pool = FakeMHAHostPool("page_first", head_dim=4096)     # 192 KiB pages
    s = make_store({"url": srv.url}, pool)
    with caplog.at_level("WARNING", logger="lmcache_valkey.sglang.page_store"):
        assert s.batch_set_v1(HASHES[:3], idx(0, 1, 2)) == [False] * 3
        assert s.batch_set(HASHES[:1], [pool.get_data_page(0)]) is False
    assert "3 of 3 pages not stored (e.g. OOM" in caplog.text
    assert s.batch_exists(HASHES[:3]) == 0
    mem.make_room(mem.admin(srv))                                   # room again
    assert s.batch_set_v1(HASHES[:3], idx(0, 1, 2)) == [True] * 3


def test_a_page_evicted_mid_prefix_ends_the_hit_run_there(make_server, make_store) -> None:
    srv = make_server(config=mem.ALLKEYS_LRU)
    pool = FakeMHAHostPool("page_first")
    pool.fill_random(4)
    s = make_store({"url": srv.url}, pool)
    assert s.batch_set_v1(HASHES[:4], idx(0, 1, 2, 3)) == [True] * 4
    mem.evict(mem.admin(srv), "hicache:" + s.namespace + HASHES[2])   # the server's own eviction
    assert s.batch_exists(HASHES[:4]) == 2
    assert s.batch_get_v1(HASHES[:4], idx(4, 5, 6, 7)) == [True, True, False, True]
    assert pool.page_bytes(5 * PAGE) == pool.page_bytes(1 * PAGE)


def test_before_a_pool_is_registered_calls_fail_soft(server, make_store) -> None:
    s = make_store({"url": server.url})
    assert s.batch_set_v1(HASHES[:1], idx(0)) == [False]
    assert s.batch_get_v1(HASHES[:1], idx(0)) == [False]
    assert s.batch_exists(HASHES[:1]) == 0 and s.get(HASHES[0]) is None


def _eventually(check, tries: int = 100) -> bool:
    import time

    for _ in range(tries):
        if check():
            return True
        time.sleep(0.05)
    return False
