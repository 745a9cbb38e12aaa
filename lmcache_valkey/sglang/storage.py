"""``ValkeyHiCacheStorage``: SGLang HiCache's L3 storage backend on Valkey.

Load it with SGLang's ``dynamic`` backend route (nothing to register)::

    python -m sglang.launch_server --model-path MODEL --page-size 64 \\
        --enable-hierarchical-cache --hicache-mem-layout page_first_direct \\
        --hicache-storage-backend dynamic \\
        --hicache-storage-backend-extra-config '{"backend_name": "valkey",
            "module_path": "lmcache_valkey.sglang", "class_name": "ValkeyHiCacheStorage",
            "interface_v1": 1, "url": "valkey://10.0.0.5:6379"}'

SGLang builds it as ``cls(storage_config, {})`` and hands it the host pool
through ``register_mem_pool_host``. The work is done by
:class:`~lmcache_valkey.sglang.page_store.ValkeyPageStore`; this class adds
SGLang's base class and turns the counters into SGLang's ``StorageMetrics``.
Importing this module imports SGLang.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sglang.srt.mem_cache.hicache_storage import HiCacheStorage

from .page_store import ValkeyPageStore

try:  # where 0.5.x keeps it; older releases had sglang.srt.metrics.collector
    from sglang.srt.observability.metrics_collector import StorageMetrics
except ImportError:  # pragma: no cover - depends on the SGLang release
    from sglang.srt.metrics.collector import StorageMetrics  # type: ignore[no-redef]


class ValkeyHiCacheStorage(ValkeyPageStore, HiCacheStorage):
    """HiCache L3 pages in Valkey/Redis (single node, cluster, TLS, unix socket).

    Options (``--hicache-storage-backend-extra-config``, next to SGLang's own
    keys): ``url``, ``key_prefix`` (default ``"hicache:"``), ``ttl_s`` (default
    3600; 0 = never expire), ``num_connections``, ``connect_timeout_s``,
    ``op_timeout_s``, ``checksum``, ``scan_limit`` and every other
    :class:`~lmcache_valkey.config.ClientConfig` option; without ``url`` the
    server comes from ``VALKEY_HOST``/``VALKEY_PORT``/``VALKEY_DB``/
    ``VALKEY_PASSWORD``. An unknown option fails the launch.
    """

    def __init__(self, storage_config: Any, kwargs: Mapping[str, Any] | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        # `kwargs` is the factory's (empty) second positional argument.
        ValkeyPageStore.__init__(self, storage_config, env=env)

    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        self.register_pool(mem_pool_host)

    def get_stats(self) -> StorageMetrics:
        """Pages and GB/s of each load (prefetch) and store (backup) since the
        last call, as ``--enable-metrics`` exports them."""
        m = StorageMetrics()
        for name, values in self.samples.take().items():
            getattr(m, name).extend(values)
        return m
