"""LMCache integration: our client as an LMCache storage backend.

- :class:`ValkeyL2Adapter` / :class:`ValkeyL2AdapterConfig` (``l2_adapter.py``):
  multiprocess mode (``lmcache server --l2-adapter '{"type":"plugin",
  "module_path":"lmcache_valkey.lmcache","class_name":"ValkeyL2Adapter",...}'``).
- :class:`ValkeyRemoteConnector` (``remote_connector.py``): non-multiprocess
  mode, through ``remote_storage_plugins`` in an LMCache YAML config.
- :func:`register` (``registration.py``): adds the short adapter type name
  ``lmcache_valkey`` to LMCache's registries (idempotent).

Names resolve lazily (PEP 562), so ``import lmcache_valkey.lmcache`` costs
nothing and does not need LMCache until one of them is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ValkeyL2Adapter": ".l2_adapter",
    "ValkeyL2AdapterConfig": ".l2_adapter",
    "ValkeyRemoteConnector": ".remote_connector",
    "register": ".registration",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
