"""How deep to pipeline: GB/s of 32-key GET or SET batches against the bytes
kept in flight per connection (`max_inflight_bytes`), per value size, on one
server, with the bare pipelined reader/writer (`ceiling`) beside them.

    .venv/bin/python examples/servers/sweep_inflight.py --server valkey8 --op SET \
        --value-sizes 64KiB,256KiB,1MiB,4MiB --budgets 256KiB,1MiB,4MiB,16MiB,64MiB

The budgets take turns within every round (interleaved); figures are
medians. This is how the defaults in lmcache_valkey/protocol/server_profile.py
were chosen; run it on your own servers before overriding them.

Key length matters more than it should (why is not settled; README, "GET
depth per server"): 32 x 4 MiB SETs to Valkey 8.1 with 2-byte keys moved
2.1 GB/s one at a time and 3.0 two at a time, with 28-byte keys 3.9 and 4.0.
Measure with keys as long as yours (`--key-length`; the LMCache adapter's
are the model name plus ~80 bytes).
"""

from __future__ import annotations

import functools
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from lmcache_valkey import ValkeyClient
from lmcache_valkey.server.embedded import SERVER_KINDS, EmbeddedValkey, server_binary
from lmcache_valkey.tools.bench import _human, example_parser, parse_size
from lmcache_valkey.tools.bench_peers import Ceiling


def _runs(op: str, clients: dict[str, ValkeyClient], ceiling: Ceiling, keys: list[str],
          values: list[np.ndarray], dests: list[np.ndarray]) -> dict[str, Callable[[], Any]]:
    """One batch of `op` per client, as a call each."""
    bkeys = [k.encode() for k in keys]
    runs: dict[str, Callable[[], Any]] = {}
    for name, c in clients.items():
        runs[name] = functools.partial(c.batch_set, keys, values) if op == "SET" \
            else functools.partial(c.batch_get_into, keys, dests)
    runs["ceiling"] = functools.partial(ceiling.set, bkeys, values) if op == "SET" \
        else functools.partial(ceiling.get, bkeys, dests)
    return runs


def main() -> int:
    p = example_parser(__doc__, keys=32, num_connections=2)
    p.add_argument("--server", choices=list(SERVER_KINDS), default="valkey9")
    p.add_argument("--op", choices=("GET", "SET"), default="SET")
    p.add_argument("--value-sizes", default="64KiB,256KiB,1MiB,4MiB")
    p.add_argument("--budgets", default="256KiB,1MiB,4MiB,16MiB,64MiB")
    p.add_argument("--key-length", type=int, default=32,
                   help="bytes per key (32): it changes the SET figures")
    p.add_argument("--moved-per-size", default="256MiB",
                   help="bytes each budget moves per value size (sets the rounds)")
    args = p.parse_args()
    budgets = [parse_size(b) for b in args.budgets.split(",")]
    server = EmbeddedValkey(binary=server_binary(args.server),
                            config={"save": "", "appendonly": "no"}).start()
    try:
        clients = {_human(b): ValkeyClient(server.url, num_connections=args.num_connections,
                                           max_inflight_bytes=b) for b in budgets}
        ceiling = Ceiling(server.host, server.port, None, 1)
        print(f"{args.server}, {args.op}, {args.keys} keys per batch, "
              f"{args.num_connections} connections; GB/s (median)")
        print(f"{'value':>9} " + " ".join(f"{name:>9}" for name in [*clients, "ceiling"]))
        for size in (parse_size(v) for v in args.value_sizes.split(",")):
            keys = [f"sweep:{i:0{max(1, args.key_length - 6)}d}" for i in range(args.keys)]
            values = [np.random.default_rng(i).integers(0, 256, size, dtype=np.uint8)
                      for i in range(args.keys)]
            dests = [np.empty(size, np.uint8) for _ in keys]
            next(iter(clients.values())).batch_set(keys, values)
            runs = _runs(args.op, clients, ceiling, keys, values, dests)
            rounds = max(5, parse_size(args.moved_per_size) // (size * args.keys))
            seconds: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(rounds):
                for name, run in runs.items():
                    t0 = time.perf_counter()
                    run()
                    seconds[name].append(time.perf_counter() - t0)
            moved = size * args.keys
            print(f"{_human(size):>9} " + " ".join(
                f"{moved / statistics.median(seconds[name]) / 1e9:9.2f}" for name in runs),
                flush=True)
        for c in clients.values():
            c.close()
        ceiling.close()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
