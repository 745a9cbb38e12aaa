"""Micro-benchmarks (pytest-benchmark) for the parser and the batch path.

Marked `bench` and left out of the default run (`make test`); run them with
`make microbench`. They assert behaviour only; the timings are for reading.
"""

from __future__ import annotations

import numpy as np
import pytest

from lmcache_valkey._native import parse_reply_header

pytest.importorskip("pytest_benchmark")
pytestmark = pytest.mark.bench


@pytest.mark.parametrize("header", [b"$4194304\r\n", b"-WRONGTYPE Operation\r\n", b":1\r\n"])
def test_parse_header(benchmark, header: bytes) -> None:
    kind, _, _, consumed = benchmark(parse_reply_header, header + b"x" * 64)
    assert consumed == len(header) and kind == chr(header[0])


@pytest.mark.parametrize("size", [64 << 10, 4 << 20])
def test_batch_get_into(benchmark, client, size: int) -> None:
    keys = [f"b{i}" for i in range(32)]
    client.batch_set(keys, [np.full(size, i, np.uint8) for i in range(32)])
    dests = [np.ones(size, np.uint8) for _ in keys]
    assert benchmark(client.batch_get_into, keys, dests) == [size] * 32
    benchmark.extra_info["GB/s"] = 32 * size / benchmark.stats.stats.median / 1e9


def test_batch_exists_1000(benchmark, client) -> None:
    keys = [f"e{i}" for i in range(1000)]
    assert benchmark(client.batch_exists, keys) == [False] * 1000
