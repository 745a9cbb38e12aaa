"""The short adapter type name ``lmcache_valkey`` in LMCache's L2 registries.

After :func:`register` has run *in the process that parses the adapter
specs*, ``{"type": "lmcache_valkey", "url": "valkey://host:6379", ...}``
works wherever LMCache reads ``--l2-adapter`` JSON (``lmcache server``,
``lmcache bench l2``, ``python -m lmcache.v1.basic_check``), with the options
of :class:`~lmcache_valkey.lmcache.ValkeyL2AdapterConfig` at the top level.

LMCache 0.5.6 has no entry-point group for L2 adapters: its factory only
lazy-imports modules found inside its own ``l2_adapters`` package (via
``add_pending_module``, called from that package's ``__init__``), so a fresh
``lmcache server`` never imports this package by itself. There, use the
plugin form, which needs no registration::

    {"type": "plugin", "module_path": "lmcache_valkey.lmcache",
     "class_name": "ValkeyL2Adapter", "config_class_name": "ValkeyL2AdapterConfig",
     "adapter_params": {"url": "valkey://host:6379"}}

or start LMCache's CLI from a process that registered first::

    python -c "import sys; from lmcache_valkey.lmcache import register; register(); \
from lmcache.cli.main import main; sys.argv[0] = 'lmcache'; sys.exit(main())" server ...
"""

from __future__ import annotations

import contextlib
import logging
import threading

log = logging.getLogger(__name__)

TYPE_NAME = "lmcache_valkey"

_lock = threading.Lock()


def register() -> bool:
    """Register type ``lmcache_valkey`` (config class and factory) with LMCache.

    Idempotent and safe to call from several threads: later calls do
    nothing. Returns ``True`` when the name resolves to our adapter
    afterwards, ``False`` (never an exception) when LMCache is not importable
    or the name already belongs to another adapter.
    """
    with _lock:
        try:
            from lmcache.v1.distributed.l2_adapters.config import (
                get_l2_adapter_config_class,
                register_l2_adapter_type,
            )
            from lmcache.v1.distributed.l2_adapters.factory import (
                register_l2_adapter_factory,
            )

            from .l2_adapter import ValkeyL2AdapterConfig, create_adapter
        except Exception as e:  # LMCache (or torch) missing or broken
            log.debug("lmcache_valkey: LMCache not importable, not registering: %s", e)
            return False
        try:
            try:
                register_l2_adapter_type(TYPE_NAME, ValkeyL2AdapterConfig)
            except ValueError:  # already registered: by us, or by someone else
                if get_l2_adapter_config_class(TYPE_NAME) is not ValkeyL2AdapterConfig:
                    log.warning("L2 adapter type %r is taken by another config class; "
                                "not registering lmcache_valkey", TYPE_NAME)
                    return False
            # ValueError: ours from an earlier call (the config check above passed)
            with contextlib.suppress(ValueError):
                register_l2_adapter_factory(TYPE_NAME, create_adapter)
        except Exception as e:
            log.warning("lmcache_valkey: registering with LMCache failed: %s", e)
            return False
        return True
