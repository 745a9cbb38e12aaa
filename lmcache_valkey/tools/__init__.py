"""Command-line tools: ``cli`` (the ``lmcache-valkey`` command), the client
benchmark (``bench``, ``bench_peers``: the clients and ceilings compared) and
``prefix_delete`` (deleting every key under a prefix)."""
