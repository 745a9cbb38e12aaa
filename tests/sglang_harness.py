"""SGLang 0.5.23's real HiCache pieces, built on CPU for the backend's tests.

Importing this module imports SGLang (``pytest.importorskip``: the tests
skip where it is not installed; ``make test-sglang`` installs it into
``.venv-sglang``). PyPI's torchvision is a CUDA build whose NMS operators
do not load on CPU; ``declare_torchvision_nms`` declares them first
(lmcache_valkey/sglang/cpu_shim.py).

What is real: the device KV pools (``MHATokenToKVPool``/``MLATokenToKVPool``),
the host pools in every layout, the token allocator, ``HiCacheController``
with its prefetch/backup threads, and the storage backend factory's
``dynamic`` route that builds ``ValkeyHiCacheStorage`` from the extra
config. What the tests do by hand is the scheduler's part: fill host pages
(the GPU-to-host copy), queue writes and prefetches, hand a hit its host
memory, and read the acknowledgements.
"""

from __future__ import annotations

import importlib.util
import threading
from queue import Empty
from typing import Any

import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("sglang") is None:
    pytest.skip("SGLang is not installed (`make test-sglang` runs these tests)",
                allow_module_level=True)
from lmcache_valkey.sglang.cpu_shim import declare_torchvision_nms  # noqa: E402

declare_torchvision_nms()

from sglang.srt.managers.cache_controller import HiCacheController  # noqa: E402
from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator  # noqa: E402
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, MLATokenToKVPool  # noqa: E402
from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost  # noqa: E402
from sglang.srt.mem_cache.pool_host.mla import MLATokenToKVPoolHost  # noqa: E402
from sglang.srt.mem_cache.utils import get_storage_hash_str  # noqa: E402

PAGE = 4
LAYERS = 3
DEVICE_TOKENS = 128
LAYOUTS = ("layer_first", "page_first", "page_first_direct")
BACKEND = {"backend_name": "valkey", "module_path": "lmcache_valkey.sglang",
           "class_name": "ValkeyHiCacheStorage"}
TIMEOUT_S = 20


def device_pool(kind: str) -> Any:
    common = dict(size=DEVICE_TOKENS, page_size=PAGE, dtype=torch.bfloat16, layer_num=LAYERS,
                  device="cpu", enable_memory_saver=False, start_layer=0, end_layer=LAYERS)
    if kind == "mla":
        return MLATokenToKVPool(kv_lora_rank=16, qk_rope_head_dim=8, **common)
    return MHATokenToKVPool(head_num=2, head_dim=8, **common)


def host_pool(kind: str, kv: Any, layout: str) -> Any:
    cls = MLATokenToKVPoolHost if kind == "mla" else MHATokenToKVPoolHost
    extra = {"target_layer_num": kv.layer_num} if kind == "mla" else {}
    return cls(kv.get_device_pool_infos()[0].buffer_info, 2.0, 0, PAGE, layout,
               pin_memory=False, device="cpu", device_capacity_tokens=kv.size,
               start_layer=kv.start_layer, end_layer=kv.end_layer, **extra)


def controller(kind: str, layout: str, extra: dict, model: str = "tiny") -> HiCacheController:
    """A controller with its own pools and a backend built by the factory's
    ``dynamic`` route from ``extra`` (the parsed extra-config JSON)."""
    kv = device_pool(kind)
    alloc = TokenToKVPoolAllocator(DEVICE_TOKENS, torch.bfloat16, "cpu", kv, need_sort=False)
    return HiCacheController(alloc, host_pool(kind, kv, layout), PAGE, None, threading.Event(),
                             storage_backend="dynamic", model_name=model,
                             storage_backend_extra_config={**BACKEND, **extra})


def fill_pages(cc: HiCacheController, n_pages: int, seed: int) -> Any:
    """Host memory for n pages, filled with random KV (what a GPU-to-host
    backup leaves there); returns its host indices."""
    pool = cc.mem_pool_host
    indices = pool.alloc(n_pages * PAGE)
    g = torch.Generator().manual_seed(seed)
    pool.kv_buffer.copy_(torch.randn(pool.kv_buffer.shape, generator=g).to(pool.kv_buffer.dtype))
    return indices


def page_bytes(cc: HiCacheController, indices: Any, page: int) -> bytes:
    """A page's bytes in SGLang's flat page order (K..., V...)."""
    flat = cc.mem_pool_host.get_data_page(int(indices[page * PAGE])).contiguous()
    return flat.view(torch.uint8).numpy().tobytes()


def tokens(n_pages: int, seed: int) -> list[int]:
    return [seed * 1000 + i for i in range(n_pages * PAGE)]


def write(cc: HiCacheController, indices: Any, toks: list[int]) -> int:
    """Back pages up to storage through the controller's backup thread;
    returns the tokens it reports stored."""
    cc.write_storage(indices, toks, hash_value=get_storage_hash_str(toks, None, page_size=PAGE))
    return cc.ack_backup_queue.get(timeout=TIMEOUT_S).completed_tokens


def prefetch(cc: HiCacheController, toks: list[int], rid: str = "r") -> tuple[int, int, Any]:
    """The scheduler's side of a prefetch: query, give the hit host memory,
    collect the acks. Returns (hit tokens, loaded tokens, host indices)."""
    cc.prefetch(rid, toks, None)
    op = cc.prefetch_hit_queue.get(timeout=TIMEOUT_S)
    hit = op.storage_hit_count
    if hit == 0:
        return 0, 0, None
    op.host_indices = cc.mem_pool_host.alloc(hit)
    cc.prefetch_buffer.put(op)
    loaded = 0
    while True:
        try:
            ack = cc.ack_prefetch_queue.get(timeout=TIMEOUT_S)
        except Empty:
            raise AssertionError("prefetch never completed") from None
        if ack.completed_tokens is not None:
            loaded = ack.completed_tokens
        if ack.completed_req:
            return hit, loaded, op.host_indices
