"""The bench's peer adapters, each against a real server over TCP and the
unix socket. A peer whose library is not installed is skipped, so this runs
in the project's venv (ours, ceiling, valkey-py) as well as in one with every
peer installed."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from lmcache_valkey import EmbeddedValkey
from lmcache_valkey.tools.bench_peers import BenchClient, LMCacheResp, _pieces, all_peers

# Small, a few hundred KiB (many socket reads), and over 4 MiB at an odd
# length (no alignment luck), each twice.
SIZES = [1024, 300 * 1024, (4 << 20) + 7] * 2

CASES = [pytest.param((cls, route), id=f"{cls.name}-{route}")
         for cls in all_peers() for route in ("tcp", "unix")
         if route == "tcp" or cls.supports_unix]


@pytest.fixture(params=CASES)
def peer(request: pytest.FixtureRequest, server: EmbeddedValkey) -> Iterator[BenchClient]:
    cls, route = request.param
    reason = cls.unavailable_reason()
    if reason:
        pytest.skip(reason)
    if route == "tcp":
        client = cls(server.host, server.port, None, 2)
    else:
        client = cls(None, None, server.unix_path, 2)
    yield client
    client.close()


@pytest.fixture
def stored(peer: BenchClient, prefix: str) -> tuple[list[bytes], list[np.ndarray]]:
    rng = np.random.default_rng(len(prefix))
    keys = [f"{prefix}{i}".encode() for i in range(len(SIZES))]
    values = [rng.integers(0, 256, n, dtype=np.uint8) for n in SIZES]
    peer.set(keys, values)
    return keys, values


def test_names_are_unique_and_reasons_are_strings() -> None:
    names = [cls.name for cls in all_peers()]
    assert len(set(names)) == len(names) and names[:2] == ["ours", "ceiling"]
    for cls in all_peers():
        assert cls.unavailable_reason() is None or isinstance(cls.unavailable_reason(), str)


def test_pieces_cut_by_bytes_keeping_one_item_at_least() -> None:
    assert _pieces([3, 3, 3], 6) == [slice(0, 2), slice(2, 3)]
    assert _pieces([10, 1, 1], 4) == [slice(0, 1), slice(1, 3)]
    assert _pieces([0] * 5, 4) == [slice(0, 5)]
    assert _pieces([], 4) == []


def test_round_trip(peer: BenchClient, stored: tuple[list[bytes], list[np.ndarray]],
                    prefix: str) -> None:
    keys, values = stored
    dests = [np.zeros(v.nbytes, np.uint8) for v in values]
    peer.get(keys, dests)
    for i, (v, d) in enumerate(zip(values, dests, strict=True)):
        assert np.array_equal(v, d), f"value {i} ({v.nbytes} bytes) differs"
    missing = f"{prefix}missing".encode()
    assert peer.exists(keys) == len(keys)
    assert peer.exists([missing, *keys]) == len(keys)
    assert peer.exists([missing]) == 0
    # empty batches are no-ops for everyone
    peer.set([], [])
    peer.get([], [])
    assert peer.exists([]) == 0


def test_miss_raises_and_the_client_goes_on(
        peer: BenchClient, stored: tuple[list[bytes], list[np.ndarray]], prefix: str) -> None:
    keys, values = stored
    with pytest.raises(RuntimeError):
        peer.get([keys[0], f"{prefix}missing".encode()],
                 [np.zeros(values[0].nbytes, np.uint8), np.zeros(16, np.uint8)])
    dest = np.zeros(values[2].nbytes, np.uint8)
    peer.get([keys[2]], [dest])
    assert np.array_equal(dest, values[2])


def test_wrong_size_dest_raises(peer: BenchClient,
                                stored: tuple[list[bytes], list[np.ndarray]]) -> None:
    keys, values = stored
    for delta in (-1, 1):  # a value that does not fit, and one that falls short
        with pytest.raises(RuntimeError):
            peer.get([keys[1]], [np.zeros(values[1].nbytes + delta, np.uint8)])
        if isinstance(peer, LMCacheResp):
            return  # its connection is out of step after a size mismatch (see its docstring)


def test_tcp_only_peer_refuses_unix_clearly(server: EmbeddedValkey) -> None:
    for cls in all_peers():
        if not cls.supports_unix and cls.unavailable_reason() is None:
            with pytest.raises(RuntimeError, match="TCP only"):
                cls(None, None, server.unix_path, 1)
