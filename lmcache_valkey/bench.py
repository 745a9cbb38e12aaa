"""`lmcache-valkey bench`: batch GET/SET/EXISTS throughput and latency.

Rounds are interleaved (SET, GET, EXISTS in each round), destination buffers
are allocated once and pre-touched so page faults are not measured, and the
last GET round's bytes are checked against what was stored. A benchmark that
does not verify can report any speed.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from .client import ValkeyClient


@dataclass
class OpFigures:
    op: str
    batches: int
    keys_per_batch: int
    value_bytes: int
    median_gbps: float
    best_gbps: float
    median_ops_per_s: float
    p50_ms: float
    p99_ms: float


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _figures(op: str, times: list[float], keys: int, value_bytes: int) -> OpFigures:
    moved = keys * value_bytes
    median = statistics.median(times)
    return OpFigures(
        op=op, batches=len(times), keys_per_batch=keys, value_bytes=value_bytes,
        median_gbps=moved / median / 1e9 if moved else 0.0,
        best_gbps=moved / min(times) / 1e9 if moved else 0.0,
        median_ops_per_s=keys / median,
        p50_ms=median * 1e3, p99_ms=_percentile(times, 0.99) * 1e3,
    )


def _progress(done: int, total: int) -> None:
    if sys.stderr.isatty():
        width = 30
        filled = width * done // total
        sys.stderr.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] round {done}/{total}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def run_bench(url: str | None, *, value_bytes: int, keys: int, rounds: int,
              num_connections: int, warmup: int = 2) -> dict[str, Any]:
    import numpy as np

    with ValkeyClient(url, key_prefix=f"lmcache-valkey-bench:{os.getpid()}:",
                      num_connections=num_connections) as client:
        names = [f"k{i}" for i in range(keys)]
        rng = np.random.default_rng(0)
        sources = [rng.integers(0, 256, value_bytes, dtype=np.uint8) for _ in range(keys)]
        dests = [np.ones(value_bytes, np.uint8) for _ in range(keys)]  # pre-faulted
        times: dict[str, list[float]] = {"SET": [], "GET": [], "EXISTS": []}
        total = warmup + rounds
        for r in range(total):
            t0 = time.perf_counter()
            stored = client.batch_set(names, sources)
            t1 = time.perf_counter()
            got = client.batch_get_into(names, dests)
            t2 = time.perf_counter()
            present = client.batch_exists(names)
            t3 = time.perf_counter()
            if not (all(stored) and got == [value_bytes] * keys and all(present)):
                raise RuntimeError(f"round {r}: a key failed: set={stored!r} get={got!r}")
            if r >= warmup:
                times["SET"].append(t1 - t0)
                times["GET"].append(t2 - t1)
                times["EXISTS"].append(t3 - t2)
            _progress(r + 1, total)
        for i, (src, dst) in enumerate(zip(sources, dests)):
            if not np.array_equal(src, dst):
                raise RuntimeError(f"verification failed: key {names[i]} came back different")
        client.batch_delete(names)
        server = client.config.endpoint
        server_version = _server_version(client)
    figures = [
        _figures("SET", times["SET"], keys, value_bytes),
        _figures("GET", times["GET"], keys, value_bytes),
        _figures("EXISTS", times["EXISTS"], keys, 0),
    ]
    return {
        "server": server if url else f"embedded valkey {server_version}",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "num_connections": num_connections,
        "verified": True,
        "results": [asdict(f) for f in figures],
    }


def _server_version(client: ValkeyClient) -> str:
    info = client.execute("INFO", "server").decode(errors="replace")
    for line in info.splitlines():
        if line.startswith(("valkey_version:", "redis_version:")):
            version = line.split(":", 1)[1]
            if line.startswith("valkey_version:"):
                return version
    return version


def format_table(report: dict[str, Any]) -> str:
    lines = [
        f"server: {report['server']}   machine: {report['machine']}   "
        f"connections: {report['num_connections']}   bytes verified: {report['verified']}",
        f"{'op':<7} {'keys':>5} {'value':>9} {'GB/s med':>9} {'GB/s best':>10} "
        f"{'ops/s med':>10} {'p50 ms':>8} {'p99 ms':>8}",
    ]
    for f in report["results"]:
        size = _human(f["value_bytes"]) if f["value_bytes"] else "-"
        gbps = f"{f['median_gbps']:.2f}" if f["value_bytes"] else "-"
        best = f"{f['best_gbps']:.2f}" if f["value_bytes"] else "-"
        lines.append(
            f"{f['op']:<7} {f['keys_per_batch']:>5} {size:>9} {gbps:>9} {best:>10} "
            f"{f['median_ops_per_s']:>10.0f} {f['p50_ms']:>8.2f} {f['p99_ms']:>8.2f}")
    return "\n".join(lines)


def _human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % (size // 1024 or 1) == 0:
            return f"{n / size:g} {unit}"
    return f"{n} B"


def parse_size(text: str) -> int:
    """'4MiB', '512k', '1048576' -> bytes."""
    t = text.strip().lower().replace(" ", "")
    for suffix, mult in (("gib", 1 << 30), ("mib", 1 << 20), ("kib", 1 << 10),
                         ("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10), ("b", 1)):
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(t)


def main(args: Any) -> int:
    report = run_bench(args.url, value_bytes=args.value_size, keys=args.keys,
                       rounds=args.rounds, num_connections=args.num_connections)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0
