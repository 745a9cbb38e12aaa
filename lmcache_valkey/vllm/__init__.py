"""vLLM integration: the ``ValkeyConnector`` KV connector.

``vllm serve MODEL --kv-transfer-config '{"kv_connector":"ValkeyConnector",
"kv_role":"kv_both","kv_connector_extra_config":{"url":"valkey://host:6379"}}'``
works once this package is installed: our ``vllm.general_plugins`` entry point
registers the name in every vLLM process. Importing this package does not
import vLLM; the connector module does.
"""

from __future__ import annotations

from typing import Any

from .registration import CONNECTOR_NAME, register

__all__ = ["CONNECTOR_NAME", "ValkeyConnector", "register"]


def __getattr__(name: str) -> Any:  # PEP 562: vLLM is imported only when asked for
    if name == "ValkeyConnector":
        from .connector import ValkeyConnector

        return ValkeyConnector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
