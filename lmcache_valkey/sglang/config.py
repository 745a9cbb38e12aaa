"""The Valkey options of ``--hicache-storage-backend-extra-config``.

Everything a user can put next to ``backend_name``/``module_path``/
``class_name`` is parsed here, once, with errors that name the option: a
misspelt option must fail the launch, not silently run with defaults. With
no ``url`` (nor ``host``/``unix_path``), the server comes from
``VALKEY_HOST``/``VALKEY_PORT``/``VALKEY_DB``/``VALKEY_PASSWORD`` (and
``VALKEY_USERNAME``), the variables SGLang's upstream Valkey proposal used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..config import ClientConfig
from ..errors import ConfigError
from ..integration_options import IntegrationConfig, IntegrationOptions
from ..observability.server_stats import DEFAULT_SCAN_LIMIT

DEFAULT_KEY_PREFIX = "hicache:"
DEFAULT_TTL_S = 3600.0

#: Keys SGLang itself reads from the same JSON object (the loader, the
#: controller, the prefetch knobs); they are not ours to refuse.
SGLANG_KEYS = frozenset({
    "backend_name", "module_path", "class_name", "interface_v1", "tp_lcm_size",
    "prefetch_threshold", "prefetch_timeout_base", "prefetch_timeout_per_ki_token",
    "hicache_storage_pass_prefix_keys",
})
OPTIONS = IntegrationOptions(
    owner="ValkeyHiCacheStorage", own=frozenset({"url", "scan_limit"}),
    key_prefix=DEFAULT_KEY_PREFIX, ttl_s=DEFAULT_TTL_S,
    where="--hicache-storage-backend-extra-config",
    missing_server=("set \"url\" in --hicache-storage-backend-extra-config (e.g. "
                    "valkey://10.0.0.5:6379) or VALKEY_HOST in SGLang's environment; every "
                    "instance must name the same server to share KV pages."))


@dataclasses.dataclass(frozen=True)
class HiCacheValkeyConfig(IntegrationConfig):
    """Validated options: a client config plus the backend's own."""

    client_config: ClientConfig
    scan_limit: int = DEFAULT_SCAN_LIMIT

    @classmethod
    def from_extra_config(cls, extra: Mapping[str, Any] | None,
                          env: Mapping[str, str] | None = None) -> HiCacheValkeyConfig:
        if extra is not None and not isinstance(extra, Mapping):
            raise ConfigError(f"ValkeyHiCacheStorage: the extra config must be a JSON object, "
                              f"not {type(extra).__name__}")
        options = {k: v for k, v in (extra or {}).items() if k not in SGLANG_KEYS}
        OPTIONS.check_names(options)
        url = options.pop("url", None)
        scan_limit = options.pop("scan_limit", DEFAULT_SCAN_LIMIT)
        if isinstance(scan_limit, bool) or not isinstance(scan_limit, int) or scan_limit < 1:
            raise ConfigError(f"ValkeyHiCacheStorage: scan_limit must be an integer >= 1, "
                              f"not {scan_limit!r}")
        return cls(client_config=OPTIONS.client_config(url, options, env),
                   scan_limit=scan_limit)

    def __repr__(self) -> str:  # no secrets
        return f"HiCacheValkeyConfig({self._client_summary()})"
