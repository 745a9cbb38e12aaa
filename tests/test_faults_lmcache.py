"""Server memory faults as LMCache sees them, through both adapters: the L2
adapter (multiprocess mode) and the remote connector (LMCache in vLLM).

* maxmemory reached (``noeviction``): stores fail per key and are reported
  as failed; nothing raises into LMCache; stores succeed again once there is
  room.
* A chunk evicted (``allkeys-lru``) in the middle of a stored prefix: the L2
  lookup reports the hole exactly, so LMCache's own prefix fold serves only
  the chunks before it; the remote connector counts only those.

Real servers with a small maxmemory; the evictions are the server's own
(tests/server_pressure.py). The adapters are driven with the helpers and
fixtures their own tests use (lmcache_helpers.py, lmcache_fixtures.py).
"""

from __future__ import annotations

import pytest

pytest.importorskip("lmcache")
pytest.importorskip("torch")

import server_pressure as mem  # noqa: E402
from lmcache.lmcache_native import Bitmap  # noqa: E402
from lmcache.v1.distributed.bitmap_ops.fold import (  # noqa: E402
    FULL_ATTENTION_WINDOW,
    fold_unfold_grouped,
)
from lmcache_helpers import (  # noqa: E402
    BIG_SHAPE,
    Runner,
    _bytes,
    _keys,
    content,
    key,
    payload,
    plugin_keys,
    store_new,
)

from lmcache_valkey.lmcache.l2_adapter import encode_object_key  # noqa: E402

pytestmark = pytest.mark.timeout(90)

PREFIX = "faults:"


def lmcache_prefix_hit(found: list[bool]) -> int:
    """Chunks LMCache's prefix fetching policy serves for these lookup bits
    (its own fold, as its prefetch controller computes it)."""
    bitmap = Bitmap(len(found))
    for i, hit in enumerate(found):
        if hit:
            bitmap.set(i)
    hit_length, _ = fold_unfold_grouped([bitmap], [FULL_ATTENTION_WINDOW])
    return hit_length


def leading(found: list[bool]) -> int:
    return next((i for i, hit in enumerate(found) if not hit), len(found))


# -- L2 adapter (multiprocess mode) -----------------------------------------------


def _adapter_on_own_server(make_server, make_adapter, config):
    """A server of the test's own with this memory config, its admin
    connection, an L2 adapter on it and the adapter's blocking runner."""
    s, r = mem.own_server(make_server, config)
    adapter = make_adapter(s.url, key_prefix=PREFIX, num_connections=2)
    return r, adapter, Runner(adapter)


def test_l2_stores_past_maxmemory_are_reported_failed_and_the_adapter_carries_on(
        make_server, make_adapter, alloc) -> None:
    r, adapter, run = _adapter_on_own_server(make_server, make_adapter, mem.NOEVICTION)

    # More than there is room for: part stored, the rest refused (-OOM).
    keys = _keys(24)
    src = alloc(24, BIG_SHAPE)                    # 3 MiB into ~2 MiB of room
    result = run.store(keys, src)
    assert not result.is_successful()               # LMCache's result: failed, 0 bytes
    found = run.lookup(keys)
    assert 0 < sum(found) < len(keys)
    # The adapter's own usage accounting counts exactly the chunks stored.
    assert adapter.report_status()["tracked_keys"] == sum(found)
    dst = alloc(24, BIG_SHAPE, fill="zero")
    assert run.load(keys, dst) == found
    for s_obj, d_obj, hit in zip(src, dst, found, strict=True):
        assert _bytes(d_obj) == (_bytes(s_obj) if hit else b"\xee" * d_obj.get_size())

    # Full: every store fails, lookups and loads answer, nothing raises.
    mem.fill_until_oom(r)
    more = _keys(4, start=100)
    assert not run.store(more, alloc(4)).is_successful()
    assert run.lookup(more) == [False] * 4
    status = adapter.report_status()
    assert status["closed"] is False and status["inflight_tasks"] == 0

    # Room again: stores succeed.
    mem.make_room(r)
    again = alloc(4)
    assert run.store(more, again).is_successful()
    assert run.lookup(more) == [True] * 4


def test_l2_chunk_evicted_mid_prefix_lmcache_serves_only_the_chunks_before_it(
        make_server, make_adapter, alloc) -> None:
    r, adapter, run = _adapter_on_own_server(make_server, make_adapter, mem.ALLKEYS_LRU)
    keys, src = store_new(run, alloc, 6)

    mem.evict(r, PREFIX.encode() + encode_object_key(keys[3]))   # a real LRU eviction
    found = run.lookup(keys)
    assert found == [True, True, True, False, True, True]
    assert lmcache_prefix_hit(found) == 3
    dst = alloc(3, fill="zero")
    assert run.load(keys[:3], dst) == [True] * 3
    assert [_bytes(d) for d in dst] == [_bytes(x) for x in src[:3]]

    # Under more pressure the server picks (approximately LRU): the lookup
    # still matches the server key for key, and the prefix ends at the
    # first missing chunk.
    mem.pressure(r, evicted_at_least=3)
    truth = [bool(r.exists(PREFIX.encode() + encode_object_key(k))) for k in keys]
    found = run.lookup(keys)
    assert found == truth
    assert lmcache_prefix_hit(found) == leading(truth)


# -- remote connector (LMCache inside vLLM) ---------------------------------------------


def chunk_name(i: int) -> str:
    return PREFIX + key(i).to_string()


def _lm_on_own_server(make_server, make_lm, config):
    """A server of the test's own with this memory config, its admin
    connection, and LMCache with our remote connector on it."""
    s, r = mem.own_server(make_server, config)
    return r, make_lm(plugin_keys(url=s.url, key_prefix=PREFIX))


def test_remote_connector_put_past_maxmemory_is_logged_not_raised(make_server,
                                                                  make_lm) -> None:
    r, lm = _lm_on_own_server(make_server, make_lm, mem.NOEVICTION)
    mem.fill_until_oom(r)
    lm.put({i: lm.chunk(i) for i in range(3)})             # completes; nothing raises
    assert [lm.remote.contains(key(i)) for i in range(3)] == [False] * 3
    assert lm.remote.batched_contains([key(i) for i in range(3)]) == 0

    mem.make_room(r)
    lm.put({i: lm.chunk(i) for i in range(3)})
    lm.assert_loads(1)


def test_remote_connector_chunk_evicted_mid_prefix_counts_only_the_chunks_before_it(
        make_server, make_lm) -> None:
    r, lm = _lm_on_own_server(make_server, make_lm, mem.ALLKEYS_LRU)
    lm.put({i: lm.chunk(i) for i in range(6)})
    keys = [key(i) for i in range(6)]
    assert lm.remote.batched_contains(keys) == 6

    mem.evict(r, chunk_name(3))
    assert lm.remote.batched_contains(keys) == 3
    assert lm.run(lm.remote.batched_async_contains("req", keys)) == 3
    loaded = lm.run(lm.remote.batched_get_non_blocking("req", keys))
    assert [content(obj) for obj in loaded] == [payload(i) for i in range(3)]
    for obj in loaded:
        obj.ref_count_down()
    assert lm.released()
