"""SGLang integration: ``ValkeyHiCacheStorage``, a HiCache L3 storage backend.

``--hicache-storage-backend dynamic --hicache-storage-backend-extra-config
'{"backend_name":"valkey","module_path":"lmcache_valkey.sglang",
"class_name":"ValkeyHiCacheStorage","interface_v1":1,"url":"valkey://host:6379"}'``
(see the README's "SGLang" section). Importing this package does not import
SGLang; asking for ``ValkeyHiCacheStorage`` does, and says so clearly when
SGLang is not installed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ValkeyHiCacheStorage", "ValkeyPageStore"]


def __getattr__(name: str) -> Any:  # PEP 562: SGLang is imported only when asked for
    if name == "ValkeyHiCacheStorage":
        try:
            from .storage import ValkeyHiCacheStorage
        except ImportError as e:
            raise ImportError(
                "lmcache_valkey.sglang.ValkeyHiCacheStorage needs SGLang "
                f"(pip install 'sglang>=0.5.23'): {e}") from e
        return ValkeyHiCacheStorage
    if name == "ValkeyPageStore":
        from .page_store import ValkeyPageStore

        return ValkeyPageStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
