"""Replies that claim multi-GB lengths never make the client allocate them.

A real server cannot be made to send `$5000000000` for a 3-byte value or an
array header claiming two billion elements, so the far end here is a scripted
peer on a socketpair (tests/resp_fuzz.py's peer_playing): it sends the hostile
header and a little (or, for the growing cases, one MiB) of what it claims,
then hangs up. Each call must end in the documented error at once (the
connection's own timeout would turn a wait into ValkeyTimeoutError, which
fails the exact-class check), destinations must be untouched, and neither
Python's allocator (tracemalloc peak) nor the process (RSS) may grow by more
than a few MiB: memory follows the bytes that arrived, never the claim. The
AddressSanitizer job (`make asan`) also caps any single allocation at 1 GiB
(ASAN_OPTIONS max_allocation_size_mb), which catches a claim-sized C malloc
even if its pages are never touched.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psutil
import pytest
from resp_fuzz import TRANSPORTS, engine_on, peer_playing

from lmcache_valkey._native import RespConnection
from lmcache_valkey.errors import ProtocolError, ValkeyConnectionError

MiB = 1 << 20
NO_LIMIT = 2**63 - 1  # max_bulk_len raised as far as it goes: only the engine's own care is left
GROWTH_LIMIT = 8 * MiB

pytestmark = [pytest.mark.engine, pytest.mark.timeout(30)]


@dataclass(frozen=True)
class Claim:
    stream: bytes
    error: type[ValkeyConnectionError]  # the exact class raised
    message: str
    max_bulk_len: int = 512 * MiB  # RespConnection's default


def one_mib_then_fin(header: bytes) -> bytes:
    return header + b"x" * MiB


GET_CLAIMS = {
    # Over max_bulk_len: refused at the header, before anything is received.
    "5GB-bulk": Claim(b"$5000000000\r\nabc", ProtocolError, "longer than max_bulk_len"),
    "max-18-digit-bulk": Claim(b"$999999999999999999\r\n", ProtocolError,
                               "longer than max_bulk_len"),
    # 19 digits: refused by the parser whatever the limit.
    "int64-max-bulk": Claim(b"$9223372036854775807\r\n", ProtocolError, "too long", NO_LIMIT),
    "uint64-bulk": Claim(b"$18446744073709551615\r\n", ProtocolError, "too long", NO_LIMIT),
    # Under a raised limit: too large for the destination, so drained (the
    # bytes are read and dropped) until the peer hangs up.
    "5GB-bulk-drained": Claim(one_mib_then_fin(b"$5000000000\r\n"), ValkeyConnectionError,
                              "connection closed by the server", NO_LIMIT),
    "18-digit-bulk-drained": Claim(b"$999999999999999999\r\nabc", ValkeyConnectionError,
                                   "connection closed by the server", NO_LIMIT),
    "negative-length": Claim(b"$-5000000000\r\n", ProtocolError, "negative length"),
    "2G-array": Claim(b"*2000000000\r\n", ProtocolError, "unexpected reply type to GET"),
}

EXECUTE_CLAIMS = {
    "5GB-bulk": Claim(b"$5000000000\r\nabc", ProtocolError, "longer than max_bulk_len"),
    "int64-max-bulk": Claim(b"$9223372036854775807\r\n", ProtocolError, "too long", NO_LIMIT),
    # execute() copies a bulk through the receive buffer: under a raised limit
    # its buffer grows with the bytes that arrive, not with the claim.
    "5GB-bulk-growing": Claim(one_mib_then_fin(b"$5000000000\r\n"), ValkeyConnectionError,
                              "connection closed by the server", NO_LIMIT),
    "18-digit-bulk-growing": Claim(one_mib_then_fin(b"$999999999999999999\r\n"),
                                   ValkeyConnectionError, "connection closed by the server",
                                   NO_LIMIT),
    # An array's list grows one element at a time as elements arrive.
    "2G-array": Claim(b"*2000000000\r\n" + b":1\r\n" * 1000, ValkeyConnectionError,
                      "connection closed by the server"),
    "int64-max-array": Claim(b"*9223372036854775807\r\n", ProtocolError, "too long"),
    "nested-2G-arrays": Claim(b"*2000000000\r\n" * 8 + b"$5000000000\r\n", ProtocolError,
                              "longer than max_bulk_len"),
    "nested-2G-arrays-past-depth-limit": Claim(b"*2000000000\r\n" * 12, ProtocolError,
                                               "nested deeper than 8"),
}


@pytest.fixture
def bounded_memory() -> Iterator[None]:
    """Fails the test if Python's allocations peak, or RSS grows, by more than
    GROWTH_LIMIT while it runs."""
    gc.collect()
    process = psutil.Process()
    rss_before = process.memory_info().rss
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    gc.collect()
    rss_growth = process.memory_info().rss - rss_before
    assert peak < GROWTH_LIMIT, f"Python allocations peaked at {peak / MiB:.1f} MiB"
    assert rss_growth < GROWTH_LIMIT, f"RSS grew by {rss_growth / MiB:.1f} MiB"


def call_against(claim: Claim, transport: str, call: Callable[[RespConnection], object]
                 ) -> None:
    with peer_playing(claim.stream) as sock:
        conn = engine_on(sock, transport, "hostile-peer", timeout_s=5.0,
                         max_bulk_len=claim.max_bulk_len)
        with pytest.raises(ValkeyConnectionError) as info:
            call(conn)
    assert type(info.value) is claim.error, repr(info.value)
    assert claim.message in str(info.value), str(info.value)
    assert conn.failed


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", list(GET_CLAIMS))
def test_get_claiming_gigabytes(name: str, transport: str, bounded_memory: None) -> None:
    dest = bytearray(b"\xee" * 16)
    call_against(GET_CLAIMS[name], transport, lambda conn: conn.batch_get_into([b"k"], [dest]))
    assert dest == b"\xee" * 16, "nothing may be written for a value that never completed"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", list(EXECUTE_CLAIMS))
def test_execute_claiming_gigabytes(name: str, transport: str, bounded_memory: None) -> None:
    call_against(EXECUTE_CLAIMS[name], transport, lambda conn: conn.execute("GET", "k"))
