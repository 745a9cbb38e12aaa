"""vLLM's own scheduler and request objects around a ValkeyConnector, in process.

The scheduler is vLLM's ``Scheduler`` (with its KV cache manager and block
pool), requests are vLLM ``Request`` objects hashed by vLLM's block hasher,
and the worker-side connector gets real CPU KV tensors in the CPU backend's
layout ``[num_blocks, kv_heads, block_size, 2 * head_size]``. :class:`Engine`
steps them as vLLM's engine core does — ``schedule()``, each worker's hooks
in the model runner's order, ``KVOutputAggregator`` over the ranks,
``update_from_output`` — with only the model missing: its "forward pass"
writes a known content per (block hash, rank) into every block it computes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import random
import time
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
from vllm.distributed.kv_transfer.kv_connector.utils import KVOutputAggregator  # noqa: E402
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
from vllm.v1.outputs import KVConnectorOutput, ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402

from lmcache_valkey.vllm import register  # noqa: E402
from lmcache_valkey.vllm.connector import ValkeyConnector  # noqa: E402
from lmcache_valkey.vllm.metadata import ValkeyConnectorMetadata  # noqa: E402

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


def scheduler(vc: VllmConfig, num_blocks: int = NUM_BLOCKS) -> Scheduler:
    kcc = kv_cache_config(vc.cache_config.block_size)
    kcc.num_blocks = num_blocks
    return Scheduler(vllm_config=vc, kv_cache_config=kcc,
                     structured_output_manager=StructuredOutputManager(vc),
                     block_size=vc.cache_config.block_size, log_stats=True)


class Worker:
    """A worker-side connector over random CPU KV tensors (seeded)."""

    def __init__(self, vc: VllmConfig, seed: int, *, rank: tuple[int, int] | None = None,
                 emulated_delay_s: float | None = None) -> None:
        bs = vc.cache_config.block_size
        from lmcache_valkey.vllm import connector as connector_module

        saved = connector_module._tp_pp_rank
        if rank is not None:  # a fake TP/PP rank: parallel state is not initialised here
            connector_module._tp_pp_rank = lambda: rank
        try:
            self.connector = ValkeyConnector(vc, KVConnectorRole.WORKER, kv_cache_config(bs))
        finally:
            connector_module._tp_pp_rank = saved
        self.rank = rank or (0, 0)
        if emulated_delay_s is not None:
            w = self.connector._worker
            w.options = dataclasses.replace(w.options, emulated_stream_delay_s=emulated_delay_s)
        g = torch.Generator().manual_seed(seed)
        self.kv = {f"model.layers.{i}.self_attn.attn":
                   torch.randn(NUM_BLOCKS, KV_HEADS, bs, 2 * HEAD, generator=g).to(torch.bfloat16)
                   for i in range(LAYERS)}
        self.connector.register_kv_caches(self.kv)

    def step(self, meta: Any, finished_req_ids: set[str] | frozenset[str] = frozenset()
             ) -> KVConnectorOutput:
        """One step's connector calls around a (missing) forward pass."""
        self.begin_step(meta)
        return self.end_step(finished_req_ids)

    def begin_step(self, meta: Any) -> None:
        """What the model runner calls before the forward pass."""
        self.connector.bind_connector_metadata(meta)
        self.connector.handle_preemptions(meta)

    def end_step(self, finished_req_ids: set[str] | frozenset[str] = frozenset()
                 ) -> KVConnectorOutput:
        """What it calls after (``KVConnectorModelRunnerMixin``, async loads)."""
        c = self.connector
        c.start_load_kv(None)
        c.wait_for_save()
        sending, recving = c.get_finished(set(finished_req_ids))
        out = KVConnectorOutput(finished_sending=sending, finished_recving=recving,
                                invalid_block_ids=c.get_block_ids_with_load_errors(),
                                kv_connector_stats=c.get_kv_connector_stats())
        c.clear_connector_metadata()
        return out

    def settle(self, timeout_s: float = 10.0) -> None:
        """Wait until the saves and loads in flight have ended (tests only)."""
        assert self.connector._worker.drain(timeout_s)

    def block_bytes(self, block_id: int) -> bytes:
        return b"".join(t[block_id].view(torch.uint8).numpy().tobytes() for t in self.kv.values())

    def write_block(self, block_id: int, content: bytes) -> None:
        """What the forward pass would write: ``content`` spread over the layers."""
        per_layer = len(content) // LAYERS
        for i, t in enumerate(self.kv.values()):
            t[block_id].view(torch.uint8).view(-1).copy_(torch.frombuffer(
                bytearray(content[i * per_layer:(i + 1) * per_layer]), dtype=torch.uint8))


def block_content(block_hash: bytes, rank: tuple[int, int], nbytes: int) -> bytes:
    """The bytes the fake forward pass computes for a block (per hash and rank)."""
    seed = int.from_bytes(hashlib.sha256(bytes(block_hash) + repr(rank).encode()).digest()[:8],
                          "little")
    return torch.randint(0, 256, (nbytes,), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed)).numpy().tobytes()


class Engine:
    """vLLM's scheduler and ``len(workers)`` worker connectors (fake TP ranks),
    stepped as the engine core steps them."""

    def __init__(self, vc: VllmConfig, workers: list[Worker], *, num_blocks: int = NUM_BLOCKS
                 ) -> None:
        self.vc = vc
        self.sched = scheduler(vc, num_blocks=num_blocks)
        self.workers = workers
        self.aggregator = KVOutputAggregator(expected_finished_count=len(workers))
        self.metas: list[Any] = []
        self.scheduled_outputs: list[Any] = []
        self.outputs: list[KVConnectorOutput] = []
        #: Scheduler + workers' connector stats as vLLM reports them (summed).
        self.kv_stats = ValkeyConnector.build_kv_connector_stats()

    def add(self, req: Request) -> Request:
        self.sched.add_request(req)
        return req

    def step(self, before_workers: Any = None) -> Any:
        so = self.sched.schedule()
        if before_workers is not None:
            before_workers(so)
        self.metas.append(so.kv_connector_metadata)
        self.scheduled_outputs.append(so)
        for w in self.workers:
            w.begin_step(so.kv_connector_metadata)
        self.forward(so)
        outs = []
        sched_ids = ([r.req_id for r in so.scheduled_new_reqs]
                     + list(so.scheduled_cached_reqs.req_ids))
        for w in self.workers:
            kv_out = w.end_step(so.finished_req_ids)
            sampled = [[7] if self._prefill_done(so, r) else [] for r in sched_ids]
            outs.append(ModelRunnerOutput(req_ids=sched_ids,
                                          req_id_to_index={r: i for i, r in enumerate(sched_ids)},
                                          sampled_token_ids=sampled, kv_connector_output=kv_out))
        merged = self.aggregator.aggregate(outs)
        self.outputs.append(merged.kv_connector_output)
        for eco in self.sched.update_from_output(so, merged).values():
            stats = eco.scheduler_stats
            if stats is not None and stats.kv_connector_stats:
                self.kv_stats.aggregate(ValkeyConnector.build_kv_connector_stats(
                    stats.kv_connector_stats))
        return so

    def first_scheduled(self, req: Request) -> Any:
        """The output of the first step that ran ``req`` (None: not yet)."""
        return next((so for so in self.scheduled_outputs
                     if any(r.req_id == req.request_id for r in so.scheduled_new_reqs)), None)

    def _prefill_done(self, so: Any, req_id: str) -> bool:
        req = self.sched.requests[req_id]
        return req.num_computed_tokens + so.num_scheduled_tokens[req_id] >= req.num_prompt_tokens

    def forward(self, so: Any) -> None:
        """Write every block this step completes with its known content."""
        bs = self.vc.cache_config.block_size
        starts = {r.req_id: r.num_computed_tokens for r in so.scheduled_new_reqs}
        cached = so.scheduled_cached_reqs
        starts.update(zip(cached.req_ids, cached.num_computed_tokens, strict=True))
        for req_id, start in starts.items():
            req = self.sched.requests[req_id]
            (ids,) = self.sched.kv_cache_manager.get_block_ids(req_id)
            end = min(start + so.num_scheduled_tokens[req_id], len(req.block_hashes) * bs)
            for i in range(start // bs, end // bs):
                for w in self.workers:
                    w.write_block(ids[i], block_content(req.block_hashes[i], w.rank,
                                                        len(w.block_bytes(ids[i]))))

    def run_until(self, done: Any, max_steps: int = 200, sleep_s: float = 0.001,
                  before_workers: Any = None) -> int:
        for n in range(max_steps):
            if done():
                return n
            self.step(before_workers)
            time.sleep(sleep_s)
        raise AssertionError(f"not done after {max_steps} steps")

    def settle(self) -> None:
        for w in self.workers:
            w.settle()


def request(tokens: list[int], *, cache_salt: str | None = None, max_tokens: int = 4) -> Request:
    init_none_hash(sha256)
    return Request(f"req-{next(_ids)}", prompt_token_ids=list(tokens),
                   sampling_params=SamplingParams(max_tokens=max_tokens),
                   pooling_params=None, cache_salt=cache_salt,
                   block_hasher=get_request_block_hasher(BLOCK, sha256))


def tokens(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 2000) for _ in range(n)]


def computed_before_step(out) -> int:
    """Tokens the step starts with (local prefix cache + loaded from Valkey)."""
    [new] = out.scheduled_new_reqs
    return new.num_computed_tokens


def run_prefill(vc, worker: Worker, toks: list[int], **kw):
    """Run one request on a fresh scheduler until it is scheduled (after its
    asynchronous load, if any) and its saves have reached the server.

    Returns (scheduler, request, the output of the step that scheduled it,
    the load-error block ids reported); that output's ``kv_connector_metadata``
    holds the loads and saves of every step so far (a load is planned in the
    step before the request runs)."""
    eng = Engine(vc, [worker])
    req = eng.add(request(toks, **kw))
    eng.run_until(lambda: eng.first_scheduled(req) is not None)
    out = eng.first_scheduled(req)
    out.kv_connector_metadata = ValkeyConnectorMetadata(
        loads=[t for m in eng.metas for t in m.loads],
        saves=[t for m in eng.metas for t in m.saves])
    worker.settle()
    errors = set().union(*(o.invalid_block_ids for o in eng.outputs))
    return eng.sched, req, out, errors


def stored_blocks(w: Worker, out) -> dict[str, bytes]:
    """hash -> block bytes of what this step saved."""
    [save] = out.kv_connector_metadata.saves
    return {h: w.block_bytes(b) for h, b in zip(save.hashes, save.block_ids, strict=True)}


def prefill_on_new_worker(vc, toks: list[int], seed: int):
    """A new worker (seeded `seed`) prefills `toks` and saves its blocks:
    (the worker, run_prefill's step output, stored_blocks of it)."""
    w = Worker(vc, seed=seed)
    _, _, out, _ = run_prefill(vc, w, toks)
    return w, out, stored_blocks(w, out)
