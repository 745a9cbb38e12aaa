"""Command-line tools: ``cli`` (the ``lmcache-valkey`` command), the client
benchmark (``bench``, ``bench_peers``: the clients and ceilings compared).
No client or integration module imports from here: ``delete-prefix`` calls
``client.prefix_delete``, which SGLang's ``clear`` uses too."""
