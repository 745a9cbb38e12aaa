"""What the ``checksum`` option costs: GET/SET GB/s with none, xxh3, crc32c.

    .venv/bin/python examples/integrity/bench_checksum.py                 # embedded Valkey
    .venv/bin/python examples/integrity/bench_checksum.py --url valkey://host:6379 --rounds 20

One client per setting on the same server, ``--keys`` values of
``--value-size`` bytes per batch, rounds interleaved with the client order
rotating; destinations pre-faulted, zeroed before and compared after every
GET. Prints medians (GB/s, batch ms, process CPU seconds per GB) and, for
scale, how fast each digest runs alone on one thread.
Needs ``pip install 'lmcache_valkey[integrity,bench]'``.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from lmcache_valkey import ValkeyClient
from lmcache_valkey.client.integrity import Checksum
from lmcache_valkey.server.embedded import url_or_embedded
from lmcache_valkey.tools.bench import example_parser, values_and_dests

SETTINGS = ("none", "xxh3", "crc32c")



def _timed(fn, *args) -> tuple[tuple[float, float], list]:
    """((wall s, process CPU s), result)."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn(*args)
    return (time.perf_counter() - t0, time.process_time() - c0), out


def digest_speed(name: str, values: list[np.ndarray]) -> float:
    """GB/s of one algorithm's digest alone, one thread, over the values."""
    check = Checksum(name)
    views = [memoryview(v) for v in values]
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for v in views:
            check.seal(b"key", v, 0)
        runs.append(time.perf_counter() - t0)
    return sum(v.nbytes for v in values) / statistics.median(runs) / 1e9


def main() -> None:
    args = example_parser(__doc__, url=True, value_size="4MiB", keys=32, rounds=10,
                          num_connections=2).parse_args()

    values, dests = values_and_dests(args.keys, args.value_size)
    moved = args.keys * args.value_size
    with url_or_embedded(args.url) as url:
        clients = {name: ValkeyClient(url, key_prefix=f"bench-checksum:{name}:", checksum=name,
                                      num_connections=args.num_connections)
                   for name in SETTINGS}
        keys = [f"k{i}" for i in range(args.keys)]
        samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
        try:
            for r in range(args.rounds + 1):  # round 0 warms up
                order = list(SETTINGS[r % 3:] + SETTINGS[:r % 3])
                for name in order:
                    c = clients[name]
                    s, _ = _timed(c.batch_set, keys, values)
                    for d in dests:
                        d.fill(0)
                    g, got = _timed(c.batch_get_into, keys, dests)
                    if list(got) != [args.value_size] * args.keys or any(
                            not np.array_equal(v, d) for v, d in zip(values, dests, strict=True)):
                        raise SystemExit(f"{name}: GET returned different bytes")
                    if r:
                        samples.setdefault((name, "SET"), []).append(s)
                        samples.setdefault((name, "GET"), []).append(g)
        finally:
            for c in clients.values():
                c.close()

    print(f"{args.keys} x {args.value_size} B per batch, {args.num_connections} connections, "
          f"{args.rounds} rounds, medians")
    print(f"{'op':4} {'checksum':8} {'GB/s':>6} {'ms':>7} {'CPU s/GB':>9} {'vs none':>8}")
    for op in ("SET", "GET"):
        base = statistics.median(t for t, _ in samples[("none", op)])
        for name in SETTINGS:
            wall = statistics.median(t for t, _ in samples[(name, op)])
            cpu = statistics.median(c for _, c in samples[(name, op)])
            print(f"{op:4} {name:8} {moved / wall / 1e9:6.2f} {wall * 1e3:7.1f} "
                  f"{cpu / moved * 1e9:9.3f} {base / wall:7.2f}x")
    for name in SETTINGS[1:]:
        print(f"digest alone, one thread: {name} {digest_speed(name, values):.1f} GB/s")


if __name__ == "__main__":
    main()
