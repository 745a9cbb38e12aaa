"""io-threads 1 or 2? Valkey 8 and 9 side by side, interleaved.

For each server kind, one server per io-threads value is started (loopback,
persistence off) and ours and LMCache's C++ client run SET and GET batches
against each, all interleaved in one loop (`lmcache_valkey.tools.bench`'s rotation,
same keys, values and pre-touched destinations), so machine noise spreads
over every configuration. Prints median GB/s per (server, io-threads,
client, op) and the io-threads N / io-threads 1 ratio.

    .venv/bin/python examples/servers/bench_io_threads.py --servers valkey8,valkey9 \
        --io-threads 1,2 --value-size 4MiB --keys 32 --rounds 7
"""

from __future__ import annotations

import contextlib
import sys

from lmcache_valkey.server.embedded import EmbeddedValkey, server_binary
from lmcache_valkey.tools.bench import _measure_size, example_parser
from lmcache_valkey.tools.bench_peers import LMCacheResp, Ours


def main() -> int:
    ap = example_parser(__doc__, value_size="4MiB", keys=32, rounds=7, num_connections=2)
    ap.add_argument("--servers", default="valkey8,valkey9")
    ap.add_argument("--io-threads", default="1,2")
    args = ap.parse_args()
    threads = [int(t) for t in args.io_threads.split(",")]
    with contextlib.ExitStack() as stack:
        clients = []
        for kind in args.servers.split(","):
            for n in threads:
                s = stack.enter_context(EmbeddedValkey(binary=server_binary(kind),
                                                       config={"io-threads": str(n)}))
                for cls in (Ours, LMCacheResp):
                    if cls.unavailable_reason() is None:
                        c = cls(s.host, s.port, None, args.num_connections)
                        c.name = f"{kind} io{n} {cls.name}"
                        stack.callback(c.close)
                        clients.append(c)
        figures = _measure_size(clients, args.value_size, args.keys, 100, args.rounds, 1,
                                lambda *_: print(".", end="", file=sys.stderr, flush=True))
    print(f"\n{args.keys} x {args.value_size >> 10} KiB, {args.num_connections} connections, "
          f"medians of {args.rounds} interleaved rounds")
    gbps = {(f.client, f.op): f.gbps for f in figures if f.op in ("SET", "GET")}
    print(f"{'configuration':<32} {'SET GB/s':>9} {'GET GB/s':>9} {'GET vs io1':>11}")
    for (client, op), v in gbps.items():
        if op != "GET":
            continue
        kind, io, name = client.split(" ")
        base = gbps.get((f"{kind} io{threads[0]} {name}", "GET"))
        print(f"{client:<32} {gbps[(client, 'SET')]:>9.2f} {v:>9.2f} "
              f"{v / base:>10.2f}x" if base else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
