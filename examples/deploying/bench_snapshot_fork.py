"""What an RDB snapshot costs a Valkey full of KV cache: the fork's stall
(``INFO latest_fork_usec``), the snapshot's duration and size, and what a
client's batches see while it runs (they ride through: the fork stalls the
server for milliseconds, far below any op timeout).

    .venv/bin/python examples/deploying/bench_snapshot_fork.py --sizes 512MiB,1GiB,2GiB

Each size: a fresh embedded server with a data directory (``--data-dir``
semantics), filled with 4 MiB values, then ``BGSAVE`` while one client keeps
GETting 8 x 4 MiB batches; prints a table. Memory needed: about 2x the
largest size (copy-on-write while the client reads: little).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from lmcache_valkey import EmbeddedValkey, ValkeyClient
from lmcache_valkey.server.persistence import persistence_config
from lmcache_valkey.tools.bench import parse_size

VALUE = 4 << 20


def one_size(total: int, rdbcompression: str) -> dict[str, float]:
    n = total // VALUE
    # No schedule and no save at exit: only the BGSAVE measured here.
    config = {**persistence_config("rdb", save=""), "shutdown-on-sigterm": "default",
              "rdbcompression": rdbcompression}
    with tempfile.TemporaryDirectory(prefix="snapshot-bench-") as data, \
            EmbeddedValkey(data_dir=data, config=config) as server, \
            ValkeyClient(server.url, key_prefix="vllm:kv:", num_connections=2) as client:
        value = np.random.default_rng(0).integers(0, 256, VALUE, dtype=np.uint8)
        keys = [f"b{i}" for i in range(n)]
        for i in range(0, n, 32):
            assert all(client.batch_set(keys[i:i + 32], [value] * len(keys[i:i + 32])))
        dests = [np.empty(VALUE, np.uint8) for _ in range(8)]
        latencies: list[float] = []
        stop = threading.Event()

        def reader() -> None:
            i = 0
            while not stop.is_set():
                batch = [keys[(i + j) % n] for j in range(8)]
                t = time.perf_counter()
                assert client.batch_get_into(batch, dests) == [VALUE] * 8
                latencies.append(time.perf_counter() - t)
                i += 8

        t = threading.Thread(target=reader)
        t.start()
        time.sleep(1.0)  # latencies without a snapshot first
        before = list(latencies)
        start = time.perf_counter()
        client.execute("BGSAVE")
        while True:
            info = client.execute("INFO", "persistence").decode()
            if "rdb_bgsave_in_progress:0" in info and "rdb_last_bgsave_status:ok" in info \
                    and time.perf_counter() - start > 0.05:
                break
            time.sleep(0.01)
        took = time.perf_counter() - start
        during = latencies[len(before):]
        stop.set()
        t.join()
        stats = dict(line.split(":", 1) for line in
                     client.execute("INFO", "stats").decode().split("\r\n") if ":" in line)
        rdb = sum(f.stat().st_size for f in Path(data).glob("*.rdb"))
        return {"gib": total / (1 << 30), "fork_ms": int(stats["latest_fork_usec"]) / 1000,
                "save_s": took, "rdb_gib": rdb / (1 << 30),
                "p50_before_ms": statistics.median(before) * 1000,
                "p50_during_ms": statistics.median(during) * 1000,
                "max_during_ms": max(during) * 1000}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="512MiB,1GiB,2GiB")
    p.add_argument("--rdbcompression", choices=("yes", "no"), default="no",
                   help="LZF-compress the snapshot (no: what --data-dir sets; Valkey's "
                        "own default is yes)")
    args = p.parse_args()
    print("  data  fork ms  BGSAVE s  rdb GiB  GET p50 ms before  during  max during")
    for size in args.sizes.split(","):
        r = one_size(parse_size(size), args.rdbcompression)
        print(f"{r['gib']:4.1f} GiB {r['fork_ms']:8.1f} {r['save_s']:9.2f} {r['rdb_gib']:8.2f} "
              f"{r['p50_before_ms']:17.1f} {r['p50_during_ms']:7.1f} {r['max_during_ms']:11.1f}",
              flush=True)


if __name__ == "__main__":
    main()
