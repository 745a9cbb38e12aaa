"""lmcache_valkey: the fast path for LLM KV cache in Valkey.

Batched GET/SET/EXISTS of large values that are received straight into the
caller's buffers (bytearray, numpy, pinned torch tensors, scatter lists) by a
Cython loop that runs whole batches without the GIL. ``open_client(url)``
returns a ValkeyClient, or a ValkeyClusterClient for a cluster URL.
"""

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
