"""Eight threads share one client for 10 000 mixed operations each (GET, SET,
EXISTS, DEL; values of 0 B to 256 KiB) against a real server.

Every value carries its own identity and checksum (key, generation, length,
CRC-32 of the body), and each thread owns its keys, so it knows every key's
last written generation: a GET must return exactly those bytes, or a miss
where the key was deleted or never written. A value delivered into the wrong
buffer, torn, or mixed between threads fails the comparison and the header
says whose bytes arrived. No deadlock: every thread must finish within a
bound far above the run's length.
"""

from __future__ import annotations

import random
import struct
import threading
import zlib
from concurrent.futures import Future

import numpy as np
import pytest

pytestmark = [pytest.mark.engine, pytest.mark.timeout(300)]

THREADS = 8
OPS_PER_THREAD = 10_000
KEYS_PER_THREAD = 64
MAX_BATCH = 16
MAX_SIZE = 256 * 1024
JOIN_S = 240
HEADER = struct.Struct("<24sQII")   # key, generation, body length, CRC-32 of the body
_POOL = np.random.default_rng(0).integers(0, 256, 2 * MAX_SIZE, dtype=np.uint8).tobytes()


def value_of(key: str, gen: int, size: int) -> bytes:
    """The value written for (key, generation): header + body, cut to `size`
    (values shorter than the header are its first bytes)."""
    off = (gen * 7919 + zlib.crc32(key.encode())) % MAX_SIZE
    body = _POOL[off:off + max(0, size - HEADER.size)]
    head = HEADER.pack(key.encode(), gen, len(body), zlib.crc32(body))
    return (head + body)[:size]


def describe(data: bytes) -> str:
    """Whose bytes these are, from their own header."""
    if len(data) < HEADER.size:
        return f"{len(data)} bytes, too short for a header"
    key, gen, n, crc = HEADER.unpack_from(data)
    body = data[HEADER.size:]
    ok = len(body) == n and zlib.crc32(body) == crc
    return f"key {key.rstrip(bytes(1))!r} gen {gen} ({'intact' if ok else 'CORRUPT'})"


def random_size(rng: random.Random) -> int:
    kind = rng.random()
    if kind < 0.05:
        return 0
    if kind < 0.30:
        return rng.randrange(1, 64)
    if kind < 0.70:
        return rng.randrange(64, 8192)
    if kind < 0.95:
        return rng.randrange(8192, 65536)
    return rng.randrange(65536, MAX_SIZE + 1)


class Owner:
    """One thread's keys, what it last wrote to each, and its checks."""

    def __init__(self, client, index: int) -> None:
        self.c = client
        self.index = index
        self.rng = random.Random(index)
        self.keys = [f"t{index}:k{i}" for i in range(KEYS_PER_THREAD)]
        self.state: dict[str, tuple[int, int] | None] = dict.fromkeys(self.keys)  # gen, size
        self.gen = 0
        self.ops = 0
        self.counts = {"get": 0, "set": 0, "exists": 0, "delete": 0, "hit": 0}
        self.dests = [np.empty(MAX_SIZE + 8, np.uint8) for _ in range(MAX_BATCH)]

    def call(self, submit, *args, **kwargs):
        """Half the batches blocking, half through the future form."""
        if self.rng.random() < 0.5:
            return getattr(self.c, submit.replace("submit_", ""))(*args, **kwargs)
        fut: Future = getattr(self.c, submit)(*args, **kwargs)
        return fut.result(timeout=60)

    def run(self) -> None:
        while self.ops < OPS_PER_THREAD:
            batch = self.rng.sample(self.keys, self.rng.randint(1, MAX_BATCH))
            op = self.rng.choices(["get", "set", "exists", "delete"], [35, 35, 20, 10])[0]
            getattr(self, op)(batch)
            self.counts[op] += len(batch)
            self.ops += len(batch)

    def expected(self, key: str) -> bytes | None:
        st = self.state[key]
        return None if st is None else value_of(key, *st)

    def set(self, batch: list[str]) -> None:
        values = []
        for key in batch:
            self.gen += 1
            size = random_size(self.rng)
            values.append(value_of(key, self.gen, size))
            self.state[key] = (self.gen, size)
        assert self.call("submit_batch_set", batch, values) == [True] * len(batch)

    def get(self, batch: list[str]) -> None:
        dests = self.dests[:len(batch)]
        expected = [self.expected(k) for k in batch]
        for d, want in zip(dests, expected, strict=True):
            if want is not None:
                d[len(want):len(want) + 8] = 0xA5     # a write past the value shows here
        got = self.call("submit_batch_get_into", batch, dests)
        for key, d, want, n in zip(batch, dests, expected, got, strict=True):
            if want is None:
                assert n is None, f"{key}: deleted or never written, got {n} bytes"
                continue
            data = d[:n].tobytes() if n is not None else b""
            assert n == len(want) and data == want, (
                f"{key}: expected {describe(want)} ({len(want)} B), got {n} B: {describe(data)}")
            assert (d[n:n + 8] == 0xA5).all(), f"{key}: bytes written past the value"
            self.counts["hit"] += 1

    def exists(self, batch: list[str]) -> None:
        got = self.call("submit_batch_exists", batch)
        assert got == [self.state[k] is not None for k in batch]

    def delete(self, batch: list[str]) -> None:
        got = self.call("submit_batch_delete", batch)
        assert got == [int(self.state[k] is not None) for k in batch]
        for k in batch:
            self.state[k] = None


def test_eight_threads_share_one_client_without_corruption_or_deadlock(server, prefix,
                                                                       make_client) -> None:
    c = make_client(server.url, key_prefix=prefix, num_connections=4)
    owners = [Owner(c, i) for i in range(THREADS)]
    failures: list[BaseException] = []

    def work(owner: Owner) -> None:
        try:
            owner.run()
        except BaseException as e:  # reported below, with the thread that saw it
            failures.append(e)

    threads = [threading.Thread(target=work, args=(o,), name=f"mixed-{o.index}")
               for o in owners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_S)
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"threads still running after {JOIN_S}s (deadlock?): {stuck}"
    assert not failures, failures[0]

    totals = {k: sum(o.counts[k] for o in owners) for k in owners[0].counts}
    print(f"\n8 threads x {OPS_PER_THREAD} ops on one client: {totals}")
    assert sum(o.ops for o in owners) >= THREADS * OPS_PER_THREAD
    assert totals["hit"] > 1000 and totals["delete"] > 1000

    # Finally, every key as its owner last left it, in one batch per thread.
    for o in owners:
        dests = [np.empty(MAX_SIZE, np.uint8) for _ in o.keys]
        got = c.batch_get_into(o.keys, dests)
        for key, d, n in zip(o.keys, dests, got, strict=True):
            want = o.expected(key)
            assert (n is None) if want is None else (d[:n].tobytes() == want)
