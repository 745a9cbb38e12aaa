"""The connector's figures, reported through vLLM's KV connector stats.

Each side counts into a :class:`ValkeyConnectorStats` (plain integer
counters); vLLM takes it every step (``get_kv_connector_stats``), sums the
workers' and the scheduler's (``aggregate``), logs ``reduce()`` with its
throughput line ("KV Transfer metrics: lookups=…, hit_rate_pct=…") and feeds
the same counters to its Prometheus endpoint as ``vllm:valkey_*_total``
(:class:`ValkeyPromMetrics`, labelled per engine as vLLM does).
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.metrics import (
    KVConnectorPromMetrics,
    KVConnectorStats,
)

#: Counter -> what it counts (also the Prometheus help text).
FIELDS = {
    "lookups": "Prompt lookups (one pipelined PEXPIRE/EXISTS batch each).",
    "lookup_blocks": "Blocks looked up beyond vLLM's own prefix cache.",
    "hit_blocks": "Blocks found and offered for loading (the run of hits after the "
                  "local prefix).",
    "hit_tokens": "Prompt tokens offered for loading.",
    "lookup_failures": "Lookups that failed (server unreachable): served cold.",
    "lookup_timeouts": "Lookups not answered within lookup_timeout_ms: served cold.",
    "lookup_skipped": "Lookups not sent while an abandoned one was outstanding (a stalled "
                      "server): served cold.",
    "loaded_blocks": "Blocks loaded into the KV cache.",
    "load_error_blocks": "Blocks that could not be loaded (missing, short or failed): "
                         "reported to vLLM, which recomputes them.",
    "loaded_bytes": "Bytes loaded into the KV cache.",
    "load_failures": "Load batches that failed (connection or timeout).",
    "saved_blocks": "Blocks stored.",
    "save_error_blocks": "Blocks not stored.",
    "saved_bytes": "Bytes stored.",
    "save_failures": "Save batches that failed (connection or timeout).",
    "save_dropped_blocks": "Blocks not saved because the staging pool was full (the bound "
                           "on the save backlog, staging_bytes).",
}


@dataclasses.dataclass
class ValkeyConnectorStats(KVConnectorStats):
    """Counters since the last time vLLM took them (``data``: name -> int)."""

    def __post_init__(self) -> None:
        self.data = {name: int(self.data.get(name, 0)) for name in FIELDS}

    def reset(self) -> None:
        self.data = dict.fromkeys(FIELDS, 0)

    def is_empty(self) -> bool:
        return not any(self.data.values())

    def aggregate(self, other: KVConnectorStats) -> KVConnectorStats:
        for name, value in other.data.items():
            if name in self.data:
                self.data[name] += value
        return self

    def reduce(self) -> dict[str, int | float]:
        d = self.data
        looked = d["lookup_blocks"]
        return {
            "lookups": d["lookups"],
            "hit_blocks": d["hit_blocks"],
            "miss_blocks": looked - d["hit_blocks"],
            "hit_rate_pct": round(100 * d["hit_blocks"] / looked, 1) if looked else 0.0,
            "hit_tokens": d["hit_tokens"],
            "loaded_blocks": d["loaded_blocks"],
            "load_error_blocks": d["load_error_blocks"],
            "loaded_MiB": round(d["loaded_bytes"] / 2**20, 1),
            "saved_blocks": d["saved_blocks"],
            "save_error_blocks": d["save_error_blocks"],
            "saved_MiB": round(d["saved_bytes"] / 2**20, 1),
            "save_dropped_blocks": d["save_dropped_blocks"],
            "lookup_timeouts": d["lookup_timeouts"] + d["lookup_skipped"],
            "failed_batches": d["lookup_failures"] + d["load_failures"] + d["save_failures"],
        }


class StatsRecorder:
    """What one side of the connector counts between two takes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats = ValkeyConnectorStats()

    def add(self, **counts: int) -> None:
        with self._lock:
            data = self._stats.data
            for name, n in counts.items():
                data[name] += n

    def take(self) -> ValkeyConnectorStats | None:
        """The counters since the last take (None when nothing happened)."""
        with self._lock:
            if self._stats.is_empty():
                return None
            stats, self._stats = self._stats, ValkeyConnectorStats()
            return stats


class ValkeyPromMetrics(KVConnectorPromMetrics):
    """``vllm:valkey_<counter>_total`` for every counter in :data:`FIELDS`."""

    def __init__(self, vllm_config: Any, metric_types: dict[type, type], labelnames: list[str],
                 per_engine_labelvalues: dict[int, list[object]]) -> None:
        from vllm.v1.metrics.utils import create_metric_per_engine

        super().__init__(vllm_config, metric_types, labelnames, per_engine_labelvalues)
        # Counters: vLLM's helper is typed to return any of its metric kinds.
        self._counters: dict[str, dict[int, Any]] = {
            name: create_metric_per_engine(
                self._counter_cls(name=f"vllm:valkey_{name}", documentation=doc,
                                  labelnames=labelnames),
                per_engine_labelvalues)
            for name, doc in FIELDS.items()}

    def observe(self, transfer_stats_data: dict[str, Any], engine_idx: int = 0) -> None:
        for name, value in transfer_stats_data.items():
            counters = self._counters.get(name)
            if counters is not None and value:
                counters[engine_idx].inc(value)
