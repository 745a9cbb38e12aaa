"""``ValkeyConnector``: vLLM's KV connector API on top of lmcache_valkey.

vLLM creates one instance per role: the scheduler's (lookups, the step plan —
:mod:`.scheduler_side`) and each worker's (moving block bytes —
:mod:`.worker_side`). Both open their own client to the same server.

Keys are ``<key_prefix><namespace>:<rank>:<block hash hex>``. The namespace
(:func:`.config.kv_namespace`) covers everything that makes KV bytes
incompatible — model, dtypes, block size, per-layer KV specs, platform, TP/PP
sizes, the prefix-hash algorithm — and ``rank`` names the worker's share of
the KV (``<tp>.<pp>``; one shared name for KV every rank holds the same
copy of, see :mod:`.ranks`), so two deployments never read each other's bytes.
The block hash is vLLM's own
chained ``request.block_hashes`` (prompt tokens, cache salt, LoRA and
multimodal inputs of the whole prefix).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import (
    KVConnectorPromMetrics,
    KVConnectorStats,
)

from ..errors import ConfigError
from .config import ConnectorConfig, hash_seed_is_stable, kv_namespace
from .hook_timing import HookTimer
from .metadata import ValkeyConnectorMetadata
from .namespace import namespace_fields
from .ranks import Replication
from .scheduler_side import LookupOptions, SchedulerSide
from .stats import ValkeyConnectorStats, ValkeyPromMetrics
from .worker_side import WorkerOptions, WorkerSide

if TYPE_CHECKING:
    import torch
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.attention.backend import AttentionMetadata
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.outputs import KVConnectorOutput
    from vllm.v1.request import Request

# Under "vllm." so that vLLM's own log handler and level apply to our lines.
log = logging.getLogger("vllm." + __name__)


class ValkeyConnector(KVConnectorBase_V1):
    """Shared, persistent KV cache for vLLM in Valkey (or Redis).

    No hook waits on the network: lookups answer ``None`` ("ask again") while
    in flight and give up after ``lookup_timeout_ms``; loads are asynchronous
    (``finished_recving``); saves are copied into a staging pool and sent in
    the background (see :mod:`.scheduler_side`, :mod:`.worker_side`).
    """

    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole,
                 kv_cache_config: KVCacheConfig | None = None) -> None:
        # vLLM always passes kv_cache_config (its base class types it as required and only
        # stores it); None stays accepted here, as before.
        super().__init__(vllm_config=vllm_config, role=role,
                         kv_cache_config=kv_cache_config)  # type: ignore[arg-type]
        transfer = vllm_config.kv_transfer_config
        if transfer is None:  # (the base class has already refused this)
            raise ConfigError("ValkeyConnector: vLLM's kv_transfer_config is not set")
        if kv_cache_config is not None and len(kv_cache_config.kv_cache_groups) > 1:
            raise ConfigError(
                f"ValkeyConnector stores one KV cache group; this model has "
                f"{len(kv_cache_config.kv_cache_groups)} (hybrid attention)")
        self.config = cfg = ConnectorConfig.from_extra_config(transfer.kv_connector_extra_config)
        # We are a cache: a block that cannot be loaded is recomputed, not fatal.
        transfer.kv_load_failure_policy = cfg.load_failure_policy
        self._block_size = vllm_config.cache_config.block_size
        fields = namespace_fields(vllm_config, kv_cache_config)
        self.namespace = kv_namespace(fields)
        replication = Replication.of(vllm_config)
        self._client = cfg.create_client()
        # Connect in the background: the first lookup/load should not pay for
        # connects, and vLLM's start-up must not wait on (or fail for) Valkey.
        threading.Thread(target=self._connect, name="valkey-connect", daemon=True).start()
        if not hash_seed_is_stable(fields["hash_algo"]):
            log.warning("ValkeyConnector: prefix_caching_hash_algo=%s without PYTHONHASHSEED "
                        "gives block hashes that differ in every process: nothing stored "
                        "will be found after a restart or by another replica. Set "
                        "PYTHONHASHSEED to one value everywhere, or use sha256.",
                        fields["hash_algo"])
        self._scheduler: SchedulerSide | None = None
        self._worker: WorkerSide | None = None
        self._loads_started_for: ValkeyConnectorMetadata | None = None
        self.hook_timer = HookTimer(role.name.lower())
        if role == KVConnectorRole.SCHEDULER:
            self._key_base = f"{self.namespace}:{replication.key_ranks()[0]}:"
            self._scheduler = SchedulerSide(
                self._client, [f"{self.namespace}:{r}:" for r in replication.key_ranks()],
                self._block_size, LookupOptions(cfg.lookup_wait_ms, cfg.lookup_timeout_ms))
        else:
            tag, writer = replication.key_rank(*_tp_pp_rank())
            self._key_base = f"{self.namespace}:{tag}:"
            self._worker = WorkerSide(self._client, self.key_of, WorkerOptions(
                staging=cfg.staging, staging_bytes=cfg.staging_bytes,
                chunk_bytes=cfg.chunk_bytes, drain_timeout_s=cfg.drain_timeout_s,
                is_writer=writer))
        log.info("ValkeyConnector (%s): %r, namespace %s, keys %s*", role.name.lower(),
                 self.config, self.namespace, self._key_base)

    def _connect(self) -> None:
        try:
            self._client.connect()
        except Exception as e:
            log.warning("ValkeyConnector: cannot reach %s yet (serving without external "
                        "KV until it answers): %s", self.config.client_config.endpoint, e)

    def key_of(self, block_hash_hex: str) -> str:
        """Key of a block for this rank (the client adds key_prefix)."""
        return self._key_base + block_hash_hex

    def __repr__(self) -> str:
        return f"ValkeyConnector({self.role.name.lower()}, {self.config!r})"

    # -- scheduler side ----------------------------------------------------

    def _scheduler_hook(self, hook: str, *args: Any) -> Any:
        """The scheduler side's method `hook`, timed as that hook."""
        assert self._scheduler is not None
        with self.hook_timer.time(hook):
            return getattr(self._scheduler, hook)(*args)

    def on_new_request(self, request: Request) -> None:
        self._scheduler_hook("on_new_request", request)

    def get_num_new_matched_tokens(self, request: Request,
                                   num_computed_tokens: int) -> tuple[int | None, bool]:
        return self._scheduler_hook("get_num_new_matched_tokens", request,
                                    num_computed_tokens)

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks,
                                 num_external_tokens: int) -> None:
        self._scheduler_hook("update_state_after_alloc", request, blocks, num_external_tokens)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        meta = self._scheduler_hook("build_connector_meta", scheduler_output)
        self.hook_timer.maybe_dump()
        return meta

    def update_connector_output(self, connector_output: KVConnectorOutput) -> None:
        self._scheduler_hook("update_connector_output", connector_output)

    def request_finished(self, request: Request,
                         block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        # Saves copy their blocks out within the step, and vLLM itself keeps
        # the blocks of a request aborted while loading until finished_recving.
        self._scheduler_hook("request_finished", request, block_ids)
        return False, None

    # -- worker side -------------------------------------------------------

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        assert self._worker is not None
        self._worker.register_kv_caches(kv_caches, self._kv_cache_config.num_blocks)

    def handle_preemptions(self, kv_connector_metadata: KVConnectorMetadata) -> None:
        """The first hook of a step, before the forward pass: order this
        step's compute after copies still reading freed blocks, and start the
        step's loads now, so the receive overlaps the forward pass (they fill
        only blocks of requests waiting for them) and can be reported at the
        end of this step rather than the next."""
        meta = kv_connector_metadata
        assert isinstance(meta, ValkeyConnectorMetadata)
        if self._worker is None:
            return
        with self.hook_timer.time("handle_preemptions"):
            if meta.freed_blocks:
                self._worker.order_before_reuse(meta.freed_blocks)
            self._start_loads(meta)

    def _start_loads(self, meta: ValkeyConnectorMetadata) -> None:
        if meta is not self._loads_started_for:   # once per step's metadata
            self._loads_started_for = meta
            self._worker.start_loads(meta.loads)  # type: ignore[union-attr]

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, ValkeyConnectorMetadata) and self._worker is not None
        with self.hook_timer.time("start_load_kv"):
            self._start_loads(meta)   # started already, unless a runner skipped that hook

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # loads are asynchronous: requests run only after finished_recving

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor,
                      attn_metadata: AttentionMetadata, **kwargs: Any) -> None:
        return  # saves run once per step, all layers of a block in one value

    def wait_for_save(self) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, ValkeyConnectorMetadata) and self._worker is not None
        with self.hook_timer.time("wait_for_save"):
            self._worker.start_saves(meta.saves)

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        assert self._worker is not None
        with self.hook_timer.time("get_finished"):
            self._worker.poll_saves()
            recving = self._worker.poll_loads()
        self.hook_timer.maybe_dump()
        return None, recving or None

    def get_block_ids_with_load_errors(self) -> set[int]:
        return self._worker.take_load_errors() if self._worker is not None else set()

    # -- sleep mode (vLLM 0.33) ----------------------------------------------

    @classmethod
    def supports_sleep_mode(cls, kv_transfer_config: Any = None) -> bool:
        """Yes. Sleeping unmaps the KV cache's memory and wake-up maps it back
        at the same addresses: the transfers touching it end first
        (``unregister_kv_caches``), and what is stored in Valkey stays valid."""
        return True

    def unregister_kv_caches(self) -> None:
        if self._worker is not None:
            self._worker.suspend()

    def restore_kv_caches(self) -> None:
        if self._worker is not None:
            self._worker.resume()

    def shutdown(self) -> None:
        if self._worker is not None:
            self._worker.drain(self.config.drain_timeout_s)
        self.hook_timer.dump()
        self._client.close()

    # -- stats (vLLM's log line and /metrics) --------------------------------

    def get_kv_connector_stats(self) -> KVConnectorStats | None:
        side = self._scheduler if self._scheduler is not None else self._worker
        return side.stats.take() if side is not None else None

    @classmethod
    def build_kv_connector_stats(cls, data: dict[str, Any] | None = None
                                 ) -> KVConnectorStats | None:
        return ValkeyConnectorStats(data=dict(data or {}))

    @classmethod
    def build_prom_metrics(cls, vllm_config: VllmConfig, metric_types: dict[type, type],
                           labelnames: list[str], per_engine_labelvalues: dict[int, list[object]]
                           ) -> KVConnectorPromMetrics | None:
        return ValkeyPromMetrics(vllm_config, metric_types, labelnames, per_engine_labelvalues)


def _tp_pp_rank() -> tuple[int, int]:
    from vllm.distributed.parallel_state import get_pp_group, get_tensor_model_parallel_rank

    try:
        return get_tensor_model_parallel_rank(), get_pp_group().rank_in_group
    except Exception:  # parallel state not initialised (single process tests)
        return 0, 0
