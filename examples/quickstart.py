"""Store and load KV-cache-sized chunks with lmcache_valkey.

    .venv/bin/python examples/quickstart.py                       # embedded Valkey
    VALKEY_HOST=10.0.0.5 .venv/bin/python examples/quickstart.py  # your server
"""

import asyncio

import numpy as np

from lmcache_valkey import ValkeyClient

CHUNK = 4 << 20  # one 4 MiB KV chunk


def main() -> None:
    with ValkeyClient(key_prefix="demo:", ttl_s=600) as client:
        print(client)
        chunks = [np.random.default_rng(i).integers(0, 256, CHUNK, dtype=np.uint8)
                  for i in range(8)]
        keys = [f"chunk{i}" for i in range(8)]
        print("stored:", client.batch_set(keys, chunks))

        # Receive straight into pre-allocated (ideally pinned, reused) buffers.
        dests = [np.empty(CHUNK, np.uint8) for _ in keys]
        print("bytes received:", client.batch_get_into(keys + ["missing"],
                                                        dests + [np.empty(CHUNK, np.uint8)]))
        assert all((a == b).all() for a, b in zip(chunks, dests, strict=True))

        # A scatter list: one stored value received into several blocks.
        blocks = [np.empty(CHUNK // 4, np.uint8) for _ in range(4)]
        client.batch_get_into(["chunk0"], [blocks])
        assert (np.concatenate(blocks) == chunks[0]).all()

        # asyncio: completion arrives through an eventfd the loop watches.
        print("exists:", asyncio.run(client.abatch_exists(keys[:2] + ["missing"])))


if __name__ == "__main__":
    main()
