"""What recording client stats costs per batch.

    .venv/bin/python examples/observability/bench_stats_overhead.py           # embedded Valkey
    .venv/bin/python examples/observability/bench_stats_overhead.py --url valkey://host:6379

One client; rounds alternate between stats recorded and recording patched
out (``ClientStats.record_batch`` replaced by a no-op), the order flipping
every round. Each round times ``--exists-batches`` EXISTS batches of
``--exists-keys`` keys and ``--get-batches`` GET batches of ``--keys`` ×
``--value-size``. Prints the median batch time of each mode and their
difference, and, for scale, ``record_batch`` alone on such results.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator

import numpy as np

from lmcache_valkey import ValkeyClient
from lmcache_valkey.observability.stats import ClientStats
from lmcache_valkey.protocol.operations import EXISTS, GET, SET, Operation
from lmcache_valkey.server.embedded import url_or_embedded
from lmcache_valkey.tools.bench import example_parser


@contextlib.contextmanager
def _recording(on: bool) -> Iterator[None]:
    real = ClientStats.record_batch
    if not on:
        ClientStats.record_batch = lambda *args, **kwargs: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        ClientStats.record_batch = real  # type: ignore[method-assign]


def _batch_times(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _record_alone(result: list, sizes: list[int] | None, op: Operation) -> float:
    """Microseconds per record_batch call on `result`."""
    stats = ClientStats()
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(n):
        stats.record_batch(op, result, {}, {}, None, 0.001, sizes)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    p = example_parser(__doc__, url=True, value_size="1MiB", keys=32, rounds=6)
    p.add_argument("--exists-keys", type=int, default=1000)
    p.add_argument("--exists-batches", type=int, default=200)
    p.add_argument("--get-batches", type=int, default=20)
    args = p.parse_args()

    values = [np.full(args.value_size, i, np.uint8) for i in range(args.keys)]
    dests = [np.ones(args.value_size, np.uint8) for _ in range(args.keys)]  # pre-faulted
    keys = [f"k{i}" for i in range(args.keys)]
    exists_keys = [f"k{i % args.keys}" if i % 2 else f"none{i}" for i in range(args.exists_keys)]
    times: dict[tuple[str, bool], list[float]] = {}
    with url_or_embedded(args.url) as url, ValkeyClient(url, key_prefix="bench-stats:") as client:
        client.batch_set(keys, values)
        for r in range(args.rounds + 1):  # round 0 warms up
            for on in ((True, False) if r % 2 else (False, True)):
                with _recording(on):
                    ex = _batch_times(lambda: client.batch_exists(exists_keys),
                                      args.exists_batches)
                    get = _batch_times(lambda: client.batch_get_into(keys, dests),
                                       args.get_batches)
                if r:
                    times.setdefault(("exists", on), []).extend(ex)
                    times.setdefault(("get", on), []).extend(get)
        client.batch_delete(keys)

    print(f"{'batch':<28} {'stats on':>10} {'stats off':>10} {'diff':>9}")
    for op, label in (("exists", f"EXISTS {args.exists_keys} keys"),
                      ("get", f"GET {args.keys} x {args.value_size >> 10} KiB")):
        on = statistics.median(times[(op, True)]) * 1e3
        off = statistics.median(times[(op, False)]) * 1e3
        print(f"{label:<28} {on:>8.3f}ms {off:>8.3f}ms {100 * (on - off) / off:>+8.1f}%")
    exists_result = [bool(i % 2) for i in range(args.exists_keys)]
    get_result = [args.value_size] * args.keys
    print(f"record_batch alone: {_record_alone(exists_result, None, EXISTS):.1f} us "
          f"(EXISTS {args.exists_keys}), "
          f"{_record_alone(get_result, None, GET):.1f} us (GET {args.keys}), "
          f"{_record_alone([True] * args.keys, [args.value_size] * args.keys, SET):.1f}"
          f" us (SET {args.keys})")


if __name__ == "__main__":
    main()
