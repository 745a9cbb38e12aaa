"""``"kv_connector": "ValkeyConnector"`` in vLLM's connector factory.

:func:`register` runs from our ``vllm.general_plugins`` entry point, which
vLLM calls in every process it starts (API server, engine core, workers) —
sometimes more than once per process — so it must be idempotent:
``KVConnectorFactory.register_connector`` raises on a second registration.
"""

from __future__ import annotations

import contextlib
import logging
import threading

log = logging.getLogger(__name__)

CONNECTOR_NAME = "ValkeyConnector"
_lock = threading.Lock()


def register() -> bool:
    """Register ``ValkeyConnector``; ``True`` when the name resolves to ours.

    Never raises: without vLLM (or with a broken install) it returns ``False``.
    """
    with _lock:
        try:
            from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
        except Exception as e:
            log.debug("lmcache_valkey: vLLM not importable, not registering: %s", e)
            return False
        registry = getattr(KVConnectorFactory, "_registry", {})
        if CONNECTOR_NAME not in registry:
            with contextlib.suppress(ValueError):  # registered between our check and the call
                KVConnectorFactory.register_connector(
                    CONNECTOR_NAME, "lmcache_valkey.vllm.connector", "ValkeyConnector")
        return CONNECTOR_NAME in getattr(KVConnectorFactory, "_registry", {})
