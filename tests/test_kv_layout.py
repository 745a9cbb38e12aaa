"""BlockLayout over the KV cache views vLLM itself builds, round-tripped
through a real Valkey byte for byte.

The views come from vLLM 0.32's own code: the engine core's placement
(``get_kv_cache_config_from_groups``: one ``KVCacheTensor`` per layer set,
strides from the resolved layout) and the worker's allocator
(``allocate_kv_cache``, views from ``create_kv_cache_views``), for every ``KVCacheLayout``,
every KV dtype we serve, with kernel-block splits and padded pages where vLLM
allows them. An independent oracle computes the bytes each block owns from
the view's strides, address by address: stored values must be exactly those
bytes in the documented order, and a write into block b must touch nothing
else.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

from vllm.v1.core.kv_cache_utils import get_kv_cache_config_from_groups  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheGroupSpec  # noqa: E402
from vllm.v1.kv_cache_layout import KVCacheLayout  # noqa: E402
from vllm.v1.worker.utils import allocate_kv_cache  # noqa: E402

from lmcache_valkey.errors import ConfigError  # noqa: E402
from lmcache_valkey.vllm.kv_layout import BlockLayout  # noqa: E402

NUM_BLOCKS = 6
LAYERS = 3
BLOCK_SIZE = 32
DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn]
# Layouts vLLM refuses to split into kernel blocks (block-outermost, or heads
# outside the block) raise in create_kv_cache_views: only these two split.
SPLITTABLE = [KVCacheLayout.LBHNC, KVCacheLayout.LBNHC]


@pytest.fixture(scope="module")
def vllm_config():
    from vllm.config import CacheConfig, VllmConfig

    vc = VllmConfig(cache_config=CacheConfig(block_size=BLOCK_SIZE))
    vc.cache_config.num_gpu_blocks_override = NUM_BLOCKS
    return vc


def vllm_kv_caches(vllm_config, layout: KVCacheLayout, dtype: torch.dtype, *,
                   kernel_block_size: int | None = None, pad: int = 0
                   ) -> dict[str, torch.Tensor]:
    """What vLLM's GPU model runner passes to ``register_kv_caches``, on CPU:
    the engine core's placement (``get_kv_cache_config_from_groups``), then
    the worker's allocation and views (``allocate_kv_cache``)."""
    spec = FullAttentionSpec(block_size=BLOCK_SIZE, num_kv_heads=2, head_size=64, dtype=dtype)
    if pad:
        spec = dataclasses.replace(spec, page_size_padded=spec.page_size_bytes + pad)
    names = [f"model.layers.{i}.self_attn.attn" for i in range(LAYERS)]
    vllm_config.cache_config.kv_cache_layout = layout.name
    config = get_kv_cache_config_from_groups(vllm_config, [KVCacheGroupSpec(names, spec)],
                                             available_memory=1 << 30)
    assert config.num_blocks == NUM_BLOCKS
    return allocate_kv_cache(config, torch.device("cpu"), layout,
                             None if kernel_block_size is None else [kernel_block_size])


# The oracle and the fills use numpy: on a busy 2-core machine each small
# torch op can cost ~20 ms of thread-pool contention.


def backing_bytes(t: torch.Tensor) -> np.ndarray:
    """The whole allocation under a view, as uint8 (no copy)."""
    return torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage()).numpy()


def block_addresses(t: torch.Tensor, block_id: int, num_blocks: int, block_dim: int = 0
                    ) -> np.ndarray:
    """Byte offsets (into the storage) of every byte of block ``block_id`` of
    view ``t``, ascending: computed element by element from shape and strides."""
    ratio = t.shape[block_dim] // num_blocks
    part = t.narrow(block_dim, block_id * ratio, ratio)
    el = t.element_size()
    addr = np.array(part.storage_offset() * el, dtype=np.int64)
    for n, s in zip(part.shape, part.stride(), strict=True):
        addr = addr[..., None] + np.arange(n, dtype=np.int64) * s * el
    addr = addr[..., None] + np.arange(el, dtype=np.int64)
    return np.sort(addr, axis=None)


def expected_value(kv: dict[str, torch.Tensor], block_id: int, block_dim: int = 0) -> bytes:
    """The documented stored value: each distinct tensor's block bytes in
    ascending address order, layers in registration order."""
    out, seen = [], set()
    for t in kv.values():
        key = (t.data_ptr(), t.stride())
        if key in seen:
            continue
        seen.add(key)
        out.append(backing_bytes(t)[block_addresses(t, block_id, NUM_BLOCKS, block_dim)])
    return np.concatenate(out).tobytes()


def byte_view(t: torch.Tensor) -> np.ndarray:
    return t.view(torch.uint8).numpy()


def fill_random(kv: dict[str, torch.Tensor], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for t in kv.values():
        b = byte_view(t)
        b[...] = rng.integers(0, 256, b.shape, dtype=np.uint8)


def round_trip(client, kv: dict[str, torch.Tensor], layout: BlockLayout, block_dim: int = 0
               ) -> None:
    """Store every block from its runs, zero the cache, load the blocks back
    into their runs: the cache must come back byte for byte, and each stored
    value must be the block's bytes in the documented order."""
    fill_random(kv, seed=NUM_BLOCKS)
    before = {n: t.view(torch.uint8).clone() for n, t in kv.items()}
    blocks = list(range(NUM_BLOCKS))
    keys = [f"block-{b}" for b in blocks]
    assert all(r is True for r in client.batch_set(keys, [layout.host_segments(b)
                                                          for b in blocks]))
    for b in blocks:
        buf = bytearray(layout.block_nbytes)
        assert list(client.batch_get_into([keys[b]], [buf])) == [layout.block_nbytes]
        assert bytes(buf) == expected_value(kv, b, block_dim), f"block {b}"
    for t in kv.values():
        byte_view(t)[...] = 0
    assert not any(byte_view(t).any() for t in kv.values())
    sizes = client.batch_get_into(keys, [layout.host_segments(b) for b in blocks])
    assert list(sizes) == [layout.block_nbytes] * NUM_BLOCKS
    for name, t in kv.items():
        assert torch.equal(t.view(torch.uint8), before[name]), name


def writes_stay_in_block(kv: dict[str, torch.Tensor], layout: BlockLayout, block_id: int,
                         block_dim: int = 0) -> None:
    """0xFF written through block ``block_id``'s runs lands on exactly that
    block's bytes: nothing else in the allocation changes (padding included)."""
    fill_random(kv, seed=block_id)
    storages = {t.untyped_storage().data_ptr(): t for t in kv.values()}
    before = {p: backing_bytes(t).copy() for p, t in storages.items()}
    for seg in layout.host_segments(block_id):
        seg[...] = 0xFF
    for p, t in storages.items():
        after = backing_bytes(t)
        mine = np.zeros(after.size, dtype=bool)
        for other in kv.values():
            if other.untyped_storage().data_ptr() == p:
                mine[block_addresses(other, block_id, NUM_BLOCKS, block_dim)] = True
        assert (after[mine] == 0xFF).all()
        assert np.array_equal(after[~mine], before[p][~mine])


def spans(segments) -> list[tuple[int, int]]:
    out = []
    for s in segments:
        if isinstance(s, torch.Tensor):
            out.append((s.data_ptr(), s.numel() * s.element_size()))
        else:
            out.append((s.__array_interface__["data"][0], s.nbytes))
    return out


def check_views_agree(layout: BlockLayout) -> None:
    """segments, host_segments and runs name the same memory, block_nbytes long."""
    for b in range(NUM_BLOCKS):
        assert spans(layout.host_segments(b)) == spans(layout.segments(b)) == layout.runs(b)
        assert all(s.is_contiguous() and s.dtype == torch.uint8 for s in layout.segments(b))
    assert sum(n for _, n in layout.runs(0)) == layout.block_nbytes


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kv_layout", list(KVCacheLayout), ids=lambda x: x.name)
def test_every_vllm_layout_round_trips(client, vllm_config, kv_layout, dtype) -> None:
    kv = vllm_kv_caches(vllm_config, kv_layout, dtype)
    layout = BlockLayout(kv, NUM_BLOCKS)
    page = 2 * BLOCK_SIZE * 2 * 64 * torch.empty(0, dtype=dtype).element_size()
    assert layout.block_nbytes == LAYERS * page
    if kv_layout.is_block_compact:  # one run per layer page, or one for the whole block
        assert len(layout.runs(0)) == (1 if kv_layout.is_block_outermost else LAYERS)
    check_views_agree(layout)
    round_trip(client, kv, layout)
    writes_stay_in_block(kv, layout, block_id=3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kv_layout", SPLITTABLE, ids=lambda x: x.name)
def test_kernel_block_split_groups_kernel_blocks(client, vllm_config, kv_layout, dtype) -> None:
    """A 32-token vLLM block split into two 16-token kernel blocks: the
    tensor has 2 * NUM_BLOCKS blocks; vLLM block b is kernel blocks 2b, 2b+1."""
    kv = vllm_kv_caches(vllm_config, kv_layout, dtype, kernel_block_size=16)
    assert next(iter(kv.values())).shape[0] == 2 * NUM_BLOCKS
    layout = BlockLayout(kv, NUM_BLOCKS)
    assert len(layout.runs(0)) == LAYERS  # both kernel pages in one run
    check_views_agree(layout)
    round_trip(client, kv, layout)
    writes_stay_in_block(kv, layout, block_id=2)


@pytest.mark.parametrize("kv_layout", [KVCacheLayout.LBHNC, KVCacheLayout.BLNHC],
                         ids=lambda x: x.name)
def test_padded_pages_store_only_the_page(client, vllm_config, kv_layout) -> None:
    kv = vllm_kv_caches(vllm_config, kv_layout, torch.bfloat16, pad=256)
    layout = BlockLayout(kv, NUM_BLOCKS)
    assert layout.block_nbytes == LAYERS * 2 * BLOCK_SIZE * 2 * 64 * 2
    check_views_agree(layout)
    round_trip(client, kv, layout)
    writes_stay_in_block(kv, layout, block_id=5)


def test_kv_split_first_shape_of_older_gpu_backends(client) -> None:
    """``[2, num_blocks, block_size, heads, head_size]`` (FlashAttention before
    vLLM 0.32): two runs per layer, K then V."""
    kv = {f"layer.{i}": torch.zeros(2, NUM_BLOCKS, 16, 2, 64, dtype=torch.bfloat16)
          for i in range(LAYERS)}
    layout = BlockLayout(kv, NUM_BLOCKS)
    assert len(layout.runs(0)) == 2 * LAYERS
    check_views_agree(layout)
    round_trip(client, kv, layout, block_dim=1)
    writes_stay_in_block(kv, layout, block_id=1, block_dim=1)


def test_cross_layer_shared_kv_is_stored_once(client, vllm_config) -> None:
    kv = vllm_kv_caches(vllm_config, KVCacheLayout.LBNHC, torch.bfloat16)
    names = list(kv)
    kv["model.layers.3.self_attn.attn"] = kv[names[0]]  # reuses layer 0's KV
    layout = BlockLayout(kv, NUM_BLOCKS)
    assert layout.layer_names == names + ["model.layers.3.self_attn.attn"]
    assert layout.block_nbytes == BlockLayout({n: kv[n] for n in names}, NUM_BLOCKS).block_nbytes
    round_trip(client, kv, layout)


def test_block_id_out_of_range_and_unsupported_layouts(vllm_config) -> None:
    kv = vllm_kv_caches(vllm_config, KVCacheLayout.LBHNC, torch.bfloat16)
    layout = BlockLayout(kv, NUM_BLOCKS)
    for bad in (-1, NUM_BLOCKS):
        for f in (layout.segments, layout.host_segments, layout.runs):
            with pytest.raises(IndexError):
                f(bad)
    # Blocks that are not a whole number of the tensor's blocks.
    with pytest.raises(ConfigError, match=r"'model.layers.0.self_attn.attn'.*shape \(6, 2, 32, "
                       r"128\), strides \(8192, 4096, 128, 1\).*expected 4 blocks"):
        BlockLayout(kv, 4)
    # Every block aliasing the same memory (a broadcast view) is not a KV cache.
    aliased = torch.zeros(1, 2, 32, 64).expand(NUM_BLOCKS, 2, 32, 64)
    with pytest.raises(ConfigError, match="'l0'.*strides \\(0, 2048, 64, 1\\).*overlap"):
        BlockLayout({"l0": aliased}, NUM_BLOCKS)
    with pytest.raises(ConfigError, match="no KV cache tensors"):
        BlockLayout({}, NUM_BLOCKS)
