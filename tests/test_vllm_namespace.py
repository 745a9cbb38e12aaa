"""The key namespace survives vLLM upgrades that do not change KV bytes.

vLLM 0.33 added ``AttentionSpec.is_draft`` with ``compare=False``: the same
cache format, a different ``repr``. The namespace is built from the spec's
compared fields, so a 0.33 spec (simulated here: vLLM 0.33 has no CPU build)
names the same namespace as the 0.32 spec, and any compared field that does
change the bytes still changes it.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

from vllm.v1.kv_cache_interface import (  # noqa: E402
    FullAttentionSpec,
    KVCacheConfig,
    KVCacheGroupSpec,
    SlidingWindowSpec,
)
from vllm_harness import kv_cache_config, vllm_config  # noqa: E402

from lmcache_valkey.vllm.config import kv_namespace  # noqa: E402
from lmcache_valkey.vllm.namespace import namespace_fields, spec_fields  # noqa: E402


def _as_in_vllm_033(cls: type) -> type:
    """``cls`` as vLLM 0.33 declares it: same name, plus ``is_draft``."""
    return dataclasses.dataclass(frozen=True, kw_only=True)(type(cls.__name__, (cls,), {
        "__annotations__": {"is_draft": bool},
        "is_draft": dataclasses.field(default=False, compare=False),
        "__module__": cls.__module__}))


FullAttentionSpec033 = _as_in_vllm_033(FullAttentionSpec)


def with_spec(spec) -> KVCacheConfig:
    config = kv_cache_config()
    [group] = config.kv_cache_groups
    return dataclasses.replace(config, kv_cache_groups=[KVCacheGroupSpec(group.layer_names,
                                                                         spec)])


def namespace(vc, spec) -> str:
    return kv_namespace(namespace_fields(vc, with_spec(spec)))


def test_namespace_is_the_same_on_vllm_032_and_033(model_dir, extra) -> None:
    vc = vllm_config(model_dir, extra)
    spec = kv_cache_config().kv_cache_groups[0].kv_cache_spec
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.init}
    for is_draft in (False, True):
        spec_033 = FullAttentionSpec033(**fields, is_draft=is_draft)
        assert repr(spec_033) != repr(spec)  # what made 0.32's data unreachable on 0.33
        assert namespace(vc, spec_033) == namespace(vc, spec)


@pytest.mark.parametrize("change", [
    {"dtype": torch.float16}, {"block_size": 64}, {"num_kv_heads": 4}, {"head_size": 128},
    {"head_size_v": 32}, {"page_size_padded": 1 << 20}, {"sliding_window": 128},
], ids=lambda c: next(iter(c)))
def test_compared_fields_change_the_namespace(model_dir, extra, change) -> None:
    vc = vllm_config(model_dir, extra)
    spec = kv_cache_config().kv_cache_groups[0].kv_cache_spec
    assert namespace(vc, dataclasses.replace(spec, **change)) != namespace(vc, spec)


def test_spec_class_is_part_of_the_namespace(model_dir, extra) -> None:
    """A sliding-window spec with the same fields is another cache format."""
    vc = vllm_config(model_dir, extra)
    spec = FullAttentionSpec(block_size=32, num_kv_heads=2, head_size=64, dtype=torch.bfloat16,
                             sliding_window=128)
    sliding = SlidingWindowSpec(block_size=32, num_kv_heads=2, head_size=64,
                                dtype=torch.bfloat16, sliding_window=128)
    assert namespace(vc, spec) != namespace(vc, sliding)


def test_fields_are_json_and_cover_the_deployment(model_dir, extra) -> None:
    vc = vllm_config(model_dir, extra | {"namespace_extra": "blue"})
    fields = namespace_fields(vc, kv_cache_config())
    assert set(fields) == {"model", "revision", "dtype", "quantization", "kv_cache_dtype",
                           "block_size", "kv_groups", "kv_layout", "platform",
                           "attention_backend", "tp", "pp", "hash_algo", "extra"}
    assert fields["extra"] == "blue" and fields["tp"] == 1 and fields["block_size"] == 32
    [group] = fields["kv_groups"]
    # Plain data all the way down: no repr() of vLLM objects.
    assert json.loads(json.dumps(group)) == group
    assert group["type"] == "FullAttentionSpec" and group["dtype"] == "torch.bfloat16"
    assert group["kv_quant_mode"] == "KVQuantMode.NONE" and "is_draft" not in group
    # No KV cache config (the scheduler before vLLM passes one): no groups.
    assert namespace_fields(vc, None)["kv_groups"] == []


def test_spec_fields_recurse_into_nested_dataclasses() -> None:
    from vllm.v1.attention.backend import MultipleOf

    spec = FullAttentionSpec(block_size=32, num_kv_heads=2, head_size=64, dtype=torch.bfloat16,
                             block_stride_alignment=MultipleOf(16))
    assert spec_fields(spec)["block_stride_alignment"] == {"type": "MultipleOf", "base": 16}
