"""open_client: the one constructor integrations use.

A single-server configuration gives a :class:`~lmcache_valkey.ValkeyClient`,
a cluster one (``valkey+cluster://h:p[,h:p...]``, ``redis+cluster://``,
``valkeys+cluster://``, ``?cluster=true`` or ``cluster=True``) a
:class:`~lmcache_valkey.cluster.ValkeyClusterClient`; both have the same API.
"""

from __future__ import annotations

from typing import Any

from ..cluster.client import ValkeyClusterClient
from ..config import ClientConfig
from .valkey_client import ValkeyClient

AnyClient = ValkeyClient | ValkeyClusterClient


def open_client(url: str | None = None, **options: Any) -> AnyClient:
    """A client for `url` and `options` (see ClientConfig), cluster or not."""
    config = ClientConfig.from_url_or_config(url, options)
    if config.cluster:
        return ValkeyClusterClient(config=config)
    return ValkeyClient(config=config)
