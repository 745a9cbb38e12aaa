"""Entry-point hooks that other frameworks call.

``vllm.general_plugins`` entry points run in every vLLM process (API server,
engine core, workers) before any config is parsed. :func:`register_all`
registers

* the vLLM KV connector name ``ValkeyConnector`` (at once: vLLM validates
  ``--kv-transfer-config`` in the same process right after), and
* the LMCache L2 adapter type name ``lmcache_valkey`` — when LMCache's adapter
  registry is imported, not before. Importing LMCache costs seconds and pulls
  in numba, whose llvmlite objects break vLLM's CPU worker start-up
  (``vllm/triton_utils/dispatcher.py`` scans every loaded module), so a vLLM
  process that never uses LMCache must not import it because of us. If LMCache
  is already imported, the registration happens immediately.

Every hook is idempotent and harmless when the framework it serves is not
installed.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

#: The LMCache package whose import means "the L2 adapter registry exists now".
LMCACHE_REGISTRY_MODULE = "lmcache.v1.distributed.l2_adapters"

_hook_lock = threading.Lock()


def register_all() -> None:
    """vLLM general plugin: register our integrations that can be registered."""
    from .lmcache.registration import register as register_lmcache
    from .vllm.registration import register as register_vllm_connector

    register_vllm_connector()
    call_after_import(LMCACHE_REGISTRY_MODULE, register_lmcache)


def call_after_import(module_name: str, callback: Callable[[], Any]) -> None:
    """Run ``callback()`` once ``module_name`` has been imported (now, if it has been)."""
    with _hook_lock:
        if module_name in sys.modules:
            pass
        elif any(isinstance(f, _AfterImport) and f.module_name == module_name
                 for f in sys.meta_path):
            return  # a hook is waiting already
        else:
            sys.meta_path.insert(0, _AfterImport(module_name, callback))
            return
    callback()


class _AfterImport(importlib.abc.MetaPathFinder):
    """A one-shot import hook: lets the normal finders find the module, then
    wraps its loader so ``callback`` runs right after the module body."""

    def __init__(self, module_name: str, callback: Callable[[], Any]) -> None:
        self.module_name = module_name
        self._callback = callback

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.module_name:
            return None
        with _hook_lock:
            if self in sys.meta_path:
                sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _CallbackLoader(spec.loader, self._callback)
        return spec


class _CallbackLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, callback: Callable[[], Any]) -> None:
        self._loader = loader
        self._callback = callback

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._callback()

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ...
        return getattr(self._loader, name)
