"""The native RESP parser and batch engine, checked against a pure-Python oracle.

* parse_reply_header: exact results for every reply kind and every error,
  then property tests against tests/resp_reference.py.
* The batch engine over a socketpair whose far end is a scripted peer: replies
  are cut at random points (1 byte .. 100 KiB chunks, tiny pauses) so that
  headers, bodies and CRLFs straddle reads; every result and every byte written
  into the caller's buffers must match what the oracle reads from the same
  stream, and the requests the client wrote must parse as the expected commands.

Everything random is seeded; no server is needed.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import select
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from resp_reference import RespError, RespReader, RespSyntaxError, parse_header, read_all

from lmcache_valkey._native import RespConnection, parse_reply_header
from lmcache_valkey.errors import ProtocolError, ServerReplyError

pytestmark = pytest.mark.engine

LABEL = "socketpair-peer"
KiB = 1024
MIN_RBUF = 64 * KiB + 16  # the smallest receive buffer RespConnection accepts


# -- parse_reply_header: exact results ----------------------------------------

LONGEST_LINE = b"+" + b"x" * (64 * KiB - 3) + b"\r\n"  # 64 KiB with its CRLF


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"$5\r\n", ("$", 5, b"5", 4)),
        (b"$0\r\n", ("$", 0, b"0", 4)),
        (b"$-1\r\n", ("$", -1, b"-1", 5)),
        (b"*3\r\n", ("*", 3, b"3", 4)),
        (b"*0\r\n", ("*", 0, b"0", 4)),
        (b"*-1\r\n", ("*", -1, b"-1", 5)),
        (b":42\r\n", (":", 42, b"42", 5)),
        (b":-7\r\n", (":", -7, b"-7", 5)),
        (b":-0\r\n", (":", 0, b"-0", 5)),
        (b":999999999999999999\r\n", (":", 10**18 - 1, b"9" * 18, 21)),
        (b":-999999999999999999\r\n", (":", -(10**18 - 1), b"-" + b"9" * 18, 22)),
        (b"+OK\r\n", ("+", 0, b"OK", 5)),
        (b"+\r\n", ("+", 0, b"", 3)),
        (b"-ERR unknown command\r\n", ("-", 0, b"ERR unknown command", 22)),
        (b"_\r\n", ("_", -1, b"", 3)),
        # Only the first line is looked at; what follows is the caller's.
        (b"$3\r\nabc\r\n", ("$", 3, b"3", 4)),
        (b"+OK\r\n+OK\r\n", ("+", 0, b"OK", 5)),
        (LONGEST_LINE, ("+", 0, LONGEST_LINE[1:-2], 64 * KiB)),
    ],
    ids=lambda v: repr(v)[:24] if isinstance(v, bytes) else None,
)
def test_header_kinds(data: bytes, expected: tuple) -> None:
    assert parse_reply_header(data) == expected


@pytest.mark.parametrize(
    "data",
    [b"", b"$", b"$5", b"$5\r", b"*", b":-", b"+OK", b"-ERR", b"_", b"_\r",
     b"?junk", b"x" * (64 * KiB - 1)],  # no LF yet, under the line limit
    ids=lambda v: repr(v)[:24],
)
def test_incomplete_header_needs_more(data: bytes) -> None:
    assert parse_reply_header(data) is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"+" + b"x" * (64 * KiB), "longer than 64 KiB"),  # no LF within the limit
        (LONGEST_LINE[:-2] + b"x\r\n", "longer than 64 KiB"),  # LF one byte too late
        (b"$1000000000000000000\r\n", "too long"),  # 19 digits
        (b":-1000000000000000000\r\n", "too long"),
        (b"$-2\r\n", "negative length"),
        (b"*-5\r\n", "negative length"),
        (b"$5\n", "not terminated by CRLF"),
        (b"+OK\n", "not terminated by CRLF"),
        (b"\n", "not terminated by CRLF"),
        (b"?x\r\n", "unknown reply type byte"),
        (b"%2\r\n", "unknown reply type byte"),  # RESP3 map: not spoken here
        (b"\r\n", "unknown reply type byte"),
        (b"$\r\n", "empty integer"),
        (b":-\r\n", "empty integer"),
        (b"$abc\r\n", "non-digit"),
        (b"$+5\r\n", "non-digit"),
        (b"$ 5\r\n", "non-digit"),
        (b"$5 \r\n", "non-digit"),
        (b":1.5\r\n", "non-digit"),
        (b"_x\r\n", "malformed null"),
    ],
    ids=lambda v: repr(v)[:24] if isinstance(v, bytes) else None,
)
def test_malformed_header_is_a_protocol_error(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_reply_header(data)


# -- parse_reply_header against the oracle ------------------------------------

# Deterministic runs that leave no example database in the repository.
PROPERTY = settings(max_examples=400, deadline=None, derandomize=True, database=None)

_line_text = st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
valid_headers = st.one_of(
    st.tuples(st.sampled_from("$*"), st.integers(-1, 10**18 - 1)).map(
        lambda kv: f"{kv[0]}{kv[1]}\r\n".encode()),
    st.integers(-(10**18 - 1), 10**18 - 1).map(lambda v: f":{v}\r\n".encode()),
    st.tuples(st.sampled_from([b"+", b"-"]), _line_text).map(lambda t: t[0] + t[1] + b"\r\n"),
    st.just(b"_\r\n"),
)
# Junk built from RESP-ish tokens finds far more edge cases than raw bytes.
_TOKENS = [b"$", b"*", b":", b"+", b"-", b"_", b"?", b"%", b"\r", b"\n", b"\r\n", b"0",
           b"7", b"-1", b"-2", b"999999999", b"abc", b" ", b"\x00", b"\xff"]
junk = st.one_of(st.binary(max_size=64),
                 st.lists(st.sampled_from(_TOKENS), max_size=24).map(b"".join))


def oracle_header(data: bytes) -> tuple | None | type[RespSyntaxError]:
    try:
        return parse_header(data)
    except RespSyntaxError:
        return RespSyntaxError


def native_header(data: bytes) -> tuple | None | type[RespSyntaxError]:
    try:
        return parse_reply_header(data)
    except ProtocolError:
        return RespSyntaxError


@PROPERTY
@given(header=valid_headers, rest=junk)
def test_valid_header_matches_oracle(header: bytes, rest: bytes) -> None:
    got = parse_reply_header(header + rest)
    assert got == parse_header(header + rest)
    assert got is not None and got[3] == len(header)


@PROPERTY
@given(header=valid_headers)
def test_every_prefix_of_a_header_needs_more(header: bytes) -> None:
    for cut in range(len(header)):
        assert parse_reply_header(header[:cut]) is None, cut


@PROPERTY
@given(data=junk)
def test_junk_matches_oracle(data: bytes) -> None:
    assert native_header(data) == oracle_header(data)


# -- a scripted peer on the far end of a socketpair ---------------------------


class Peer(threading.Thread):
    """Plays a reply stream to the client in random-size chunks.

    Like a real server it is causal: the bytes of reply i are released only
    once request i has fully arrived (otherwise a batch could finish before
    its own requests were sent). It reads everything the client writes, so
    neither side can block, and keeps the parsed requests for the test.
    """

    def __init__(self, sock: socket.socket, replies: list[bytes], rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.stream = memoryview(b"".join(replies))
        self.ends = list(itertools.accumulate(len(r) for r in replies))
        self.rng = rng
        self.requests: list[object] = []
        self.stop = threading.Event()
        self.error: str | None = None

    def _chunk(self) -> int:
        # Log-uniform 1 B .. 100 KiB: many tiny cuts, a few large reads.
        return min(100 * KiB, int(2 ** self.rng.uniform(0, 17)))

    def run(self) -> None:
        try:
            self._serve()
        except Exception as e:  # e.g. the client wrote something that is not RESP
            self.error = repr(e)

    def _serve(self) -> None:
        reader = RespReader()
        sent = 0
        deadline = time.monotonic() + 15
        self.sock.setblocking(False)
        while sent < len(self.stream) and not self.stop.is_set():
            if time.monotonic() > deadline:
                self.error = f"stalled: {len(self.requests)} requests, {sent} bytes sent"
                return
            answered = min(len(self.requests), len(self.ends))
            allowed = self.ends[answered - 1] if answered else 0
            readable, writable, _ = select.select(
                [self.sock], [self.sock] if sent < allowed else [], [], 0.05)
            if readable:
                data = self.sock.recv(1 << 20)
                if not data:
                    self.error = "client closed early"
                    return
                reader.feed(data)
                self.requests.extend(reader)
            if writable:
                with contextlib.suppress(BlockingIOError):
                    sent += self.sock.send(self.stream[sent:min(allowed, sent + self._chunk())])
                if self.rng.random() < 0.5:  # let the client read this piece alone
                    time.sleep(self.rng.uniform(0, 0.001))


def run_with_peer(replies: list[bytes], call: Callable[[RespConnection], object],
                  rng: random.Random, **conn_kwargs) -> tuple[object, list[object]]:
    """call(conn) against a Peer playing `replies`; returns (its result, requests)."""
    client, server = socket.socketpair()
    client.setblocking(False)
    peer = Peer(server, replies, random.Random(rng.random()))
    peer.start()
    try:
        # A short timeout turns an engine stall into an error, not a hang.
        conn = RespConnection(client.fileno(), LABEL, timeout_s=5.0, **conn_kwargs)
        result = call(conn)
        peer.join(10)
        assert not peer.is_alive() and peer.error is None, peer.error
        return result, peer.requests
    finally:
        peer.stop.set()
        peer.join()
        client.close()
        server.close()


def random_conn_kwargs(rng: random.Random) -> dict:
    # Small receive buffers and in-flight limits force the window and
    # buffer-compaction paths that big defaults would skip.
    return {
        "rbuf_size": rng.choice([MIN_RBUF, 100 * KiB, 256 * KiB]),
        "max_inflight_bytes": rng.choice([1, 256 * KiB, 64 * 1024 * KiB]),
    }


# -- building random batches --------------------------------------------------


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def random_key(rng: random.Random) -> bytes:
    # Keys are binary-safe: CR, LF and '$' inside a key must not matter.
    return rng.choice([b"k", b"key\r\n$3\r\n", b""]) + rng.randbytes(rng.randint(0, 24))


def random_size(rng: random.Random) -> int:
    return rng.choice([0, 1, rng.randint(2, 1 * KiB), rng.randint(1 * KiB, 32 * KiB),
                       rng.randint(32 * KiB, 300 * KiB)])


def random_value(rng: random.Random, size: int) -> bytes:
    if rng.random() < 0.2:  # a value that looks like more replies
        return (b"$3\r\nabc\r\n-ERR x\r\n:1\r\n" * (size // 20 + 1))[:size]
    return rng.randbytes(size)


def random_error(rng: random.Random) -> bytes:
    text = rng.choice([b"ERR no such thing",
                       b"WRONGTYPE Operation against a key holding the wrong kind",
                       b"OOM command not allowed when used memory > 'maxmemory'.",
                       b"ERR \xff\xfe bad utf-8"])
    return b"-" + text + b" %d\r\n" % rng.randint(0, 999)


def random_segments(rng: random.Random, data: bytes, writable: bool) -> object:
    """`data` as one buffer or a scatter list of 2-3 non-empty segments.

    Zero-length segments are left out here: see
    test_zero_length_segment_in_scatter_destination.
    """
    def buffer(chunk: bytes) -> object:
        kind = rng.choice(["bytearray", "numpy", "memoryview"] + ([] if writable else ["bytes"]))
        if kind == "numpy":
            return np.frombuffer(bytearray(chunk), dtype=np.uint8)
        if kind == "memoryview":
            return memoryview(bytearray(chunk))
        return bytearray(chunk) if kind == "bytearray" else bytes(chunk)

    if len(data) < 3 or rng.random() < 0.6:
        return buffer(data)
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 2)))
    return [buffer(data[a:b]) for a, b in itertools.pairwise([0, *cuts, len(data)])]


def contents(dest: object) -> bytes:
    segs = dest if isinstance(dest, list) else [dest]
    return b"".join(bytes(memoryview(s).cast("B")) for s in segs)


@dataclass
class GetBatch:
    keys: list[bytes] = field(default_factory=list)
    dests: list[object] = field(default_factory=list)
    before: list[bytes] = field(default_factory=list)  # dest contents before the batch
    replies: list[bytes] = field(default_factory=list)


def random_get_batch(rng: random.Random) -> GetBatch:
    batch = GetBatch()
    for _ in range(rng.randint(1, 24)):
        roll = rng.random()
        if roll < 0.6:  # a hit that fits (with or without room to spare)
            value = random_value(rng, random_size(rng))
            reply, cap = bulk(value), len(value) + rng.choice([0, 0, rng.randint(1, 64)])
        elif roll < 0.75:  # a hit too large for its destination: drained
            value = random_value(rng, max(1, random_size(rng)))
            reply, cap = bulk(value), rng.randint(0, len(value) - 1)
        elif roll < 0.9:
            reply, cap = rng.choice([b"$-1\r\n", b"_\r\n"]), rng.randint(0, 64)
        else:
            reply, cap = random_error(rng), rng.randint(0, 64)
        # Random filler, so "untouched" is checked against something unlikely.
        before = rng.randbytes(cap)
        batch.keys.append(random_key(rng))
        batch.dests.append(random_segments(rng, before, writable=True))
        batch.before.append(before)
        batch.replies.append(reply)
    return batch


def oracle_replies(replies: list[bytes], rng: random.Random) -> list[object]:
    """Decode the stream with the oracle, itself fed at random cut points."""
    stream = b"".join(replies)
    reader, decoded, pos = RespReader(), [], 0
    while pos < len(stream):
        step = rng.randint(1, 64 * KiB)
        reader.feed(stream[pos:pos + step])
        pos += step
        decoded.extend(reader)
    assert reader.pending == 0 and len(decoded) == len(replies)
    return decoded


def expected_get(decoded: list[object], caps: list[int]) -> tuple[list, dict, dict]:
    values: list[int | None] = []
    errors: dict[int, str] = {}
    too_large: dict[int, int] = {}
    for i, (reply, cap) in enumerate(zip(decoded, caps, strict=True)):
        if isinstance(reply, RespError):
            errors[i] = reply.text
        elif isinstance(reply, bytes) and len(reply) > cap:
            too_large[i] = len(reply)
        values.append(len(reply) if isinstance(reply, bytes) and len(reply) <= cap else None)
    return values, errors, too_large


def error_texts(errors: dict) -> dict[int, str]:
    assert all(isinstance(e, ServerReplyError) for e in errors.values())
    return {i: str(e) for i, e in errors.items()}


# -- the engine against the oracle --------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("seed", range(20))
def test_get_batches_match_oracle_at_random_cut_points(seed: int) -> None:
    rng = random.Random(seed)
    # Two batches on one connection: state left by the first (buffered bytes,
    # receive-buffer position) must not leak into the second.
    batches = [random_get_batch(rng) for _ in range(2)]
    results, requests = run_with_peer(
        [r for b in batches for r in b.replies],
        lambda conn: [conn.batch_get_into(b.keys, b.dests) for b in batches],
        rng, **random_conn_kwargs(rng))

    assert requests == [[b"GET", k] for b in batches for k in b.keys]
    for batch, (values, errors, too_large) in zip(batches, results, strict=True):
        decoded = oracle_replies(batch.replies, rng)
        expected = expected_get(decoded, [len(b) for b in batch.before])
        assert (values, error_texts(errors), too_large) == expected
        for reply, n, dest, before in zip(decoded, values, batch.dests, batch.before, strict=True):
            written = reply[:n] if n is not None else b""
            # The value lands exactly; nothing past it (or in a missed,
            # failed or too-large key's buffer) is touched.
            assert contents(dest) == written + before[len(written):]


@dataclass
class KeyOnlyCase:
    """The replies one command may get, and what values[i] the client must
    make of the oracle's reading of each (errors map to error_value)."""

    replies: list[bytes]
    meaning: Callable[[object], object]
    error_value: object


KEY_CASES = {
    "set": KeyOnlyCase([b"+OK\r\n", b"$-1\r\n", b"_\r\n"], lambda r: r == "OK", False),
    "exists": KeyOnlyCase([b":0\r\n", b":1\r\n"], lambda r: r > 0, False),
    "delete": KeyOnlyCase([b":0\r\n", b":1\r\n", b":2\r\n"], lambda r: r, None),
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("kind", sorted(KEY_CASES))
def test_set_exists_delete_match_oracle_at_random_cut_points(kind: str, seed: int) -> None:
    rng = random.Random(f"{kind}-{seed}")
    case = KEY_CASES[kind]
    n = rng.randint(1, 24)
    keys = [random_key(rng) for _ in range(n)]
    values = [random_value(rng, random_size(rng)) for _ in range(n)]
    ttl_ms = rng.choice([0, 1, rng.randint(2, 10**9), 2**40])
    replies = [rng.choice(case.replies) if rng.random() < 0.85 else random_error(rng)
               for _ in range(n)]

    def call(conn: RespConnection) -> tuple:
        if kind == "set":
            segments = [random_segments(rng, v, writable=False) for v in values]
            return conn.batch_set(keys, segments, ttl_ms)
        return conn.batch_exists(keys) if kind == "exists" else conn.batch_delete(keys)

    (got, errors, too_large), requests = run_with_peer(replies, call, rng)

    # What the client wrote, read back by the oracle.
    if kind == "set":
        px = [b"PX", str(ttl_ms).encode()] if ttl_ms else []
        assert requests == [[b"SET", k, v, *px] for k, v in zip(keys, values, strict=True)]
    else:
        assert requests == [[{"exists": b"EXISTS", "delete": b"DEL"}[kind], k] for k in keys]
    # What it made of the replies, against the oracle's reading of them.
    decoded = oracle_replies(replies, rng)
    assert error_texts(errors) == {
        i: r.text for i, r in enumerate(decoded) if isinstance(r, RespError)}
    assert got == [case.error_value if isinstance(r, RespError) else case.meaning(r)
                   for r in decoded]
    assert too_large == {}


def random_reply(rng: random.Random, depth: int = 0) -> bytes:
    """Wire bytes of any RESP2 reply (plus the RESP3 null), nested <= 3 deep."""
    roll = rng.randrange(7 if depth < 3 else 6)
    if roll == 0:
        return bulk(random_value(rng, random_size(rng) // 4))
    if roll == 1:
        return rng.choice([b"$-1\r\n", b"*-1\r\n", b"_\r\n"])
    if roll == 2:
        return b":%d\r\n" % rng.randint(-(10**18 - 1), 10**18 - 1)
    if roll == 3:
        return b"+" + bytes(rng.choices(b"abcXYZ 019\xc3\xa9", k=rng.randint(0, 40))) + b"\r\n"
    if roll == 4:
        return random_error(rng)
    if roll == 5:
        return b"+OK\r\n"
    n = rng.randint(0, 5)
    return b"*%d\r\n" % n + b"".join(random_reply(rng, depth + 1) for _ in range(n))


def normalized(reply: object) -> object:
    """Oracle and native values in one form (errors as ('error', text))."""
    if isinstance(reply, (RespError, ServerReplyError)):
        return ("error", reply.text if isinstance(reply, RespError) else str(reply))
    if isinstance(reply, list):
        return [normalized(r) for r in reply]
    return reply


@pytest.mark.timeout(20)
@pytest.mark.parametrize("seed", range(8))
def test_execute_matches_oracle_at_random_cut_points(seed: int) -> None:
    rng = random.Random(f"execute-{seed}")
    replies = [random_reply(rng) for _ in range(8)]
    args = [[b"ECHO", rng.randbytes(rng.randint(0, 40))] for _ in replies]

    def call(conn: RespConnection) -> list[object]:
        out = []
        for a in args:
            try:
                out.append(conn.execute(*a))
            except ServerReplyError as e:  # a top-level error reply raises
                out.append(e)
        return out

    got, requests = run_with_peer(replies, call, rng, rbuf_size=MIN_RBUF)
    assert requests == args
    assert [normalized(r) for r in got] == [normalized(r) for r in read_all(b"".join(replies))]


# -- native bugs found by these tests (see the module's report) ---------------


def run_isolated(code: str, tmp_path) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter. These inputs spin with the GIL
    released or corrupt the heap, either of which would take pytest down.
    cwd is tmp_path so the source tree cannot shadow the installed package."""
    prologue = textwrap.dedent("""
        import socket, threading
        from lmcache_valkey._native import RespConnection
        client, server = socket.socketpair()
        client.setblocking(False)
        conn = RespConnection(client.fileno(), "isolated", timeout_s=2.0)
    """)
    try:
        return subprocess.run([sys.executable, "-c", prologue + textwrap.dedent(code)],
                              cwd=tmp_path, capture_output=True, text=True, timeout=3)
    except subprocess.TimeoutExpired:
        pytest.fail("the native call hung (killed after 3 s)")


@pytest.mark.timeout(15)
# Regression: the receive cursor once stood still on a 0-byte segment and
# spun forever without the GIL.
@pytest.mark.parametrize("segments", ["[bytearray(0), bytearray(8)]",
                                      "[bytearray(2), bytearray(0), bytearray(8)]"])
def test_zero_length_segment_in_scatter_destination(segments: str, tmp_path) -> None:
    proc = run_isolated(f"""
        server.sendall(b"$5\\r\\nhello\\r\\n")  # body arrives together with its header
        segs = {segments}
        values, _, _ = conn.batch_get_into([b"k"], [segs])
        assert values == [5] and b"".join(segs)[:5] == b"hello", (values, segs)
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.timeout(15)
# Regression: one SET with more segments than the iovec window once wrote
# past the engine's iovec array (heap corruption; run isolated for that reason).
def test_set_with_many_value_segments(tmp_path) -> None:
    proc = run_isolated("""
        segs = [bytes([65 + i % 26]) for i in range(2000)]
        got = bytearray()
        def serve():
            while not got.endswith(b"\\r\\n") or len(got) < 2000:
                data = server.recv(1 << 16)
                if not data:
                    return
                got.extend(data)
            server.sendall(b"+OK\\r\\n")
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        assert conn.batch_set([b"k"], [segs])[0] == [True]
        t.join()
        head = b"*3\\r\\n$3\\r\\nSET\\r\\n$1\\r\\nk\\r\\n$2000\\r\\n"
        assert bytes(got) == head + b"".join(segs) + b"\\r\\n"
        del conn
        import gc; gc.collect()
        junk = [bytearray(64) for _ in range(10000)]  # let malloc notice a smashed heap
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
