"""lmcache_valkey: the fast path for LLM KV cache in Valkey.

Batched GET/SET/EXISTS of large values that are received straight into the
caller's buffers (bytearray, numpy, pinned torch tensors, scatter lists) by a
Cython loop that runs whole batches without the GIL. ``open_client(url)``
returns a ValkeyClient, or a ValkeyClusterClient for a cluster URL.
"""

import importlib
from types import ModuleType

from .client.completion import CompletionQueue
from .client.factory import open_client
from .client.valkey_client import BatchResult, ValkeyClient
from .cluster import ValkeyClusterClient
from .config import ClientConfig
from .errors import (
    AuthenticationError,
    ClientClosedError,
    ConfigError,
    IntegrityError,
    ProtocolError,
    ServerReplyError,
    TlsError,
    ValkeyConnectionError,
    ValkeyError,
    ValkeyTimeoutError,
)
from .server.embedded import EmbeddedValkey

__version__ = "0.1.0"

# Modules that moved into the layered tree (client/, protocol/, observability/,
# server/, tools/) stay reachable under their old names as attributes and for
# ``from lmcache_valkey import metrics``: earlier READMEs documented
# ``lmcache_valkey.server_stats.server_stats(client)`` and the like.
_MOVED = {
    "batch_client": "client.batch_client", "batch_result": "client.batch_result",
    "completion": "client.completion", "factory": "client.factory",
    "integrity": "client.integrity", "jobs": "client.jobs", "prefix_scan": "client.prefix_scan",
    "workers": "client.workers",
    "buffers": "protocol.buffers", "connection": "protocol.connection",
    "engine": "protocol.engine", "operations": "protocol.operations",
    "server_profile": "protocol.server_profile", "tls_transport": "protocol.tls_transport",
    "metrics": "observability.metrics", "ratelimited_log": "observability.ratelimited_log",
    "server_stats": "observability.server_stats", "stats": "observability.stats",
    "embedded": "server.embedded", "persistence": "server.persistence",
    "prefix_delete": "client.prefix_delete",
    "bench": "tools.bench", "bench_peers": "tools.bench_peers", "cli": "tools.cli",
}


def __getattr__(name: str) -> ModuleType:
    if name in _MOVED:
        return importlib.import_module(f"{__name__}.{_MOVED[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AuthenticationError",
    "BatchResult",
    "ClientClosedError",
    "ClientConfig",
    "CompletionQueue",
    "ConfigError",
    "EmbeddedValkey",
    "IntegrityError",
    "ProtocolError",
    "ServerReplyError",
    "TlsError",
    "ValkeyClient",
    "ValkeyClusterClient",
    "ValkeyConnectionError",
    "ValkeyError",
    "ValkeyTimeoutError",
    "__version__",
    "open_client",
]
