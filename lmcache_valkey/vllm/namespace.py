"""What goes into the ValkeyConnector's key namespace, from vLLM's configs.

The namespace (:func:`.config.kv_namespace`) must change when, and only
when, stored KV bytes stop being valid for the running deployment. The KV
cache spec is the part that moves between vLLM releases: 0.33 added
``AttentionSpec.is_draft``, declared ``compare=False`` because it does not
change the cache's contents. Hashing ``repr(spec)`` picked that field up and
made everything stored under 0.32 unreachable after an upgrade. So a spec is
described by the fields vLLM itself compares (``dataclasses.fields`` with
``compare=True``, recursively): exactly the fields that decide whether two
specs are the same cache format.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.kv_cache_interface import KVCacheConfig


def namespace_fields(vllm_config: VllmConfig, kv_cache_config: KVCacheConfig | None
                     ) -> dict[str, Any]:
    """Everything that makes stored KV bytes incompatible between deployments."""
    from vllm.platforms import current_platform

    model = vllm_config.model_config
    cache = vllm_config.cache_config
    par = vllm_config.parallel_config
    transfer = vllm_config.kv_transfer_config
    if transfer is None:  # vLLM creates a KV connector only from this config
        raise ConfigError("ValkeyConnector: vLLM's kv_transfer_config is not set")
    groups: list[Any] = []
    layout = None
    if kv_cache_config is not None:
        groups = [spec_fields(g.kv_cache_spec) for g in kv_cache_config.kv_cache_groups]
        layout = getattr(kv_cache_config, "kv_cache_layout", None)
    return {
        "model": model.model, "revision": model.revision, "dtype": str(model.dtype),
        "quantization": model.quantization, "kv_cache_dtype": cache.cache_dtype,
        "block_size": cache.block_size, "kv_groups": groups, "kv_layout": str(layout),
        "platform": current_platform.device_type,
        "attention_backend": str(getattr(getattr(vllm_config, "attention_config", None),
                                         "backend", None)),
        "tp": par.tensor_parallel_size, "pp": par.pipeline_parallel_size,
        "hash_algo": str(cache.prefix_caching_hash_algo),
        "extra": transfer.kv_connector_extra_config.get(
            "namespace_extra", ""),
    }


def spec_fields(value: Any) -> Any:
    """``value`` as JSON-able data: a dataclass becomes its class name and its
    compared fields (recursively); enums, dtypes and fractions become strings.

    The class name stays in because two spec classes may share every field
    (a sliding-window and a full-attention spec differ in how blocks are
    used, not in their fields).
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__,
                **{f.name: spec_fields(getattr(value, f.name))
                   for f in dataclasses.fields(value) if f.compare}}
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Fraction):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): spec_fields(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [spec_fields(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(str(spec_fields(v)) for v in value)
    return str(value)  # torch.dtype ("torch.bfloat16") and other plain values
