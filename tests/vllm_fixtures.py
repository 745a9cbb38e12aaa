"""vLLM's own scheduler and request objects around a ValkeyConnector, in process.

The scheduler is vLLM's ``Scheduler`` (with its KV cache manager and block
pool), requests are vLLM ``Request`` objects hashed by vLLM's block hasher,
and the worker-side connector gets real CPU KV tensors in the CPU backend's
layout ``[num_blocks, kv_heads, block_size, 2 * head_size]``. Only the model
forward pass is missing: tests write block contents themselves.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from vllm.config import (  # noqa: E402
    CacheConfig,
    DeviceConfig,
    KVTransferConfig,
    ModelConfig,
    SchedulerConfig,
    VllmConfig,
)
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole  # noqa: E402
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.utils.hashing import sha256  # noqa: E402
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.kv_cache_interface import (  # noqa: E402
    FullAttentionSpec,
    KVCacheConfig,
    KVCacheGroupSpec,
)
from vllm.v1.request import Request  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402

from lmcache_valkey.vllm import register  # noqa: E402
from lmcache_valkey.vllm.connector import ValkeyConnector  # noqa: E402

BLOCK = 32
KV_HEADS = 2
HEAD = 64
LAYERS = 2
NUM_BLOCKS = 64
_ids = itertools.count()


def vllm_config(model_dir: Path, extra: dict[str, Any], *, block_size: int = BLOCK,
                prefix_caching: bool = True, dtype: str = "bfloat16") -> VllmConfig:
    register()
    mc = ModelConfig(model=str(model_dir), dtype=dtype, max_model_len=2048, seed=0)
    vc = VllmConfig(
        model_config=mc,
        cache_config=CacheConfig(block_size=block_size, enable_prefix_caching=prefix_caching),
        scheduler_config=SchedulerConfig(max_num_batched_tokens=2048, max_num_seqs=8,
                                         max_model_len=2048, is_encoder_decoder=False),
        kv_transfer_config=KVTransferConfig(kv_connector="ValkeyConnector", kv_role="kv_both",
                                            kv_connector_extra_config=dict(extra)),
        device_config=DeviceConfig("cpu"),
    )
    vc.cache_config.num_gpu_blocks = NUM_BLOCKS
    return vc


def kv_cache_config(block_size: int = BLOCK) -> KVCacheConfig:
    spec = FullAttentionSpec(block_size=block_size, num_kv_heads=KV_HEADS, head_size=HEAD,
                             dtype=torch.bfloat16)
    names = [f"model.layers.{i}.self_attn.attn" for i in range(LAYERS)]
    return KVCacheConfig(num_blocks=NUM_BLOCKS, kv_cache_tensors=[],
                         kv_cache_groups=[KVCacheGroupSpec(names, spec)])


def scheduler(vc: VllmConfig) -> Scheduler:
    return Scheduler(vllm_config=vc, kv_cache_config=kv_cache_config(vc.cache_config.block_size),
                     structured_output_manager=StructuredOutputManager(vc),
                     block_size=vc.cache_config.block_size, log_stats=True)


class Worker:
    """A worker-side connector over random CPU KV tensors (seeded)."""

    def __init__(self, vc: VllmConfig, seed: int) -> None:
        bs = vc.cache_config.block_size
        self.connector = ValkeyConnector(vc, KVConnectorRole.WORKER, kv_cache_config(bs))
        g = torch.Generator().manual_seed(seed)
        self.kv = {f"model.layers.{i}.self_attn.attn":
                   torch.randn(NUM_BLOCKS, KV_HEADS, bs, 2 * HEAD, generator=g).to(torch.bfloat16)
                   for i in range(LAYERS)}
        self.connector.register_kv_caches(self.kv)

    def step(self, meta: Any) -> set[int]:
        """One step's connector calls around a (missing) forward pass."""
        c = self.connector
        c.bind_connector_metadata(meta)
        c.start_load_kv(None)
        c.wait_for_save()
        errors = c.get_block_ids_with_load_errors()
        c.clear_connector_metadata()
        return errors

    def block_bytes(self, block_id: int) -> bytes:
        return b"".join(t[block_id].view(torch.uint8).numpy().tobytes() for t in self.kv.values())


def request(tokens: list[int], *, cache_salt: str | None = None, max_tokens: int = 4) -> Request:
    init_none_hash(sha256)
    return Request(f"req-{next(_ids)}", prompt_token_ids=list(tokens),
                   sampling_params=SamplingParams(max_tokens=max_tokens),
                   pooling_params=None, cache_salt=cache_salt,
                   block_hasher=get_request_block_hasher(BLOCK, sha256))
