"""The client façade and what runs a batch under it.

``valkey_client.ValkeyClient`` is the façade; ``batch_client`` holds what it
shares with the cluster client (key normalisation, submit, waiting);
``jobs`` splits a batch into tiles, ``workers`` runs tiles on connections
(one worker thread per connection, the engine runs without the GIL),
``batch_result`` merges per-key outcomes, ``completion`` is the eventfd
queue that asyncio and ``concurrent.futures`` wait on. ``integrity`` wraps
values with checksums; ``factory.open_client`` picks the client for a URL;
``prefix_scan`` walks the keys under a prefix, ``prefix_delete`` removes
them (the ``delete-prefix`` command, SGLang's ``clear``).
"""

from .valkey_client import BatchResult, ValkeyClient

__all__ = ["BatchResult", "ValkeyClient"]
