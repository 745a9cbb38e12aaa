"""``kv_connector_extra_config`` of the ValkeyConnector, and the key namespace.

Everything a user can put in ``--kv-transfer-config '{"kv_connector":
"ValkeyConnector", "kv_connector_extra_config": {...}}'`` is parsed here,
once, with errors that name the option. The namespace is what keeps two
deployments whose KV bytes are not interchangeable from ever reading each
other's values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any, Literal, get_args

from ..config import ClientConfig
from ..errors import ConfigError
from ..integration_options import IntegrationConfig, IntegrationOptions

DEFAULT_KEY_PREFIX = "vllm:kv:"
DEFAULT_TTL_S = 3600.0
#: Bumped whenever the stored value layout changes, so old values become misses.
FORMAT_VERSION = 2

#: The connector's numeric options -> (default, minimum, what a valid value is).
_NUMBERS: dict[str, tuple[float, float | None, str]] = {
    "lookup_wait_ms": (0.0, 0.0, "a number >= 0"),
    "lookup_timeout_ms": (100.0, 1.0, "a number >= 1"),
    "staging_bytes": (256 << 20, 1.0, "a number of bytes > 0"),
    "chunk_bytes": (32 << 20, 1.0, "a number of bytes > 0"),
    "drain_timeout_s": (10.0, 0.0, "a number >= 0"),
}
_STAGING = ("auto", "force")
OPTIONS = IntegrationOptions(
    owner="ValkeyConnector",
    own=frozenset({"url", "load_failure_policy", "namespace_extra", "staging", *_NUMBERS}),
    key_prefix=DEFAULT_KEY_PREFIX, ttl_s=DEFAULT_TTL_S, where="kv_connector_extra_config",
    missing_server=("set kv_connector_extra_config.url (e.g. valkey://127.0.0.1:6379) or "
                    "VALKEY_HOST in vLLM's environment. Start one with `lmcache-valkey server "
                    "--port 6379`; every replica must name the same server to share KV."))
LoadFailurePolicy = Literal["recompute", "fail"]  # vLLM's kv_load_failure_policy
_FAILURE_POLICIES: tuple[LoadFailurePolicy, ...] = get_args(LoadFailurePolicy)


@dataclasses.dataclass(frozen=True)
class ConnectorConfig(IntegrationConfig):
    """The connector's own options plus a validated client config."""

    client_config: ClientConfig
    load_failure_policy: LoadFailurePolicy = "recompute"
    namespace_extra: str = ""
    staging: str = "auto"
    lookup_wait_ms: float = _NUMBERS["lookup_wait_ms"][0]
    lookup_timeout_ms: float = _NUMBERS["lookup_timeout_ms"][0]
    staging_bytes: int = int(_NUMBERS["staging_bytes"][0])
    chunk_bytes: int = int(_NUMBERS["chunk_bytes"][0])
    drain_timeout_s: float = _NUMBERS["drain_timeout_s"][0]

    @classmethod
    def from_extra_config(cls, extra: Mapping[str, Any] | None,
                          env: Mapping[str, str] | None = None) -> ConnectorConfig:
        extra = dict(extra or {})
        OPTIONS.check_names(extra)
        url = extra.pop("url", None)
        policy = _choice(extra, "load_failure_policy", "recompute", _FAILURE_POLICIES)
        namespace_extra = str(extra.pop("namespace_extra", ""))
        staging = _choice(extra, "staging", "auto", _STAGING)
        numbers: dict[str, Any]  # floats, and ints for the byte sizes
        numbers = {name: _number(name, extra.pop(name, default), minimum, need)
                   for name, (default, minimum, need) in _NUMBERS.items()}
        for name in ("staging_bytes", "chunk_bytes"):
            numbers[name] = int(numbers[name])
        return cls(client_config=OPTIONS.client_config(url, extra, env),
                   load_failure_policy=policy, namespace_extra=namespace_extra,
                   staging=staging, **numbers)

    def __repr__(self) -> str:  # no secrets
        return (f"ConnectorConfig({self._client_summary()}, "
                f"load_failure_policy={self.load_failure_policy!r}, staging={self.staging!r}, "
                f"staging_bytes={self.staging_bytes}, lookup_timeout_ms={self.lookup_timeout_ms})")


def _choice(extra: dict[str, Any], name: str, default: str, choices: tuple[str, ...]) -> Any:
    value = extra.pop(name, default)
    if value not in choices:
        raise ConfigError(f"ValkeyConnector: {name} must be one of {choices}, not {value!r}")
    return value


def _number(name: str, value: Any, minimum: float | None, need: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"ValkeyConnector: {name} must be {need}, not {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"ValkeyConnector: {name} must be {need}, not {value!r}")
    return value


def kv_namespace(fields: Mapping[str, Any]) -> str:
    """16 hex digits naming everything that makes stored KV bytes incompatible.

    ``fields`` holds the model, dtypes, block size, per-layer KV specs, KV
    layout, parallel sizes and the hash algorithm; any difference gives a
    different namespace, so a mismatched deployment sees only misses.
    """
    blob = json.dumps({"format": FORMAT_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def hash_seed_is_stable(algo: str, env: Mapping[str, str] | None = None) -> bool:
    """Whether vLLM's block hashes agree across processes for this algorithm.

    vLLM derives the chain's root (``NONE_HASH``) from ``PYTHONHASHSEED`` when
    set, else from a fixed seed for sha256 variants and from random bytes for
    xxhash variants (``vllm/v1/core/kv_cache_utils.py``).
    """
    env = os.environ if env is None else env
    return env.get("PYTHONHASHSEED") is not None or not algo.startswith("xxhash")
