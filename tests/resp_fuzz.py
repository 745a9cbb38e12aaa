"""Fuzz harness for the native RESP reply parser and batch engine.

Three targets, each fed seeded, reproducible inputs:

* ``header``: ``parse_reply_header`` on one reply line (valid, mutated, cut,
  random bytes, RESP token soup, lines at the 64 KiB limit); the result must
  equal the pure-Python oracle's (tests/resp_reference.py).
* ``engine``: a ``RespConnection`` on a socketpair whose far end sends a
  reply stream (now and then pausing mid-stream) and then FIN, so no input can
  wait on the peer forever. Batches of GET (into caller buffers carved out of
  one arena with guard bytes around every segment; scatter lists up to 300
  segments; values past the receive buffer), SET, EXISTS, PEXPIRE, DEL (one
  batch, or two on one connection), and ``execute()`` calls. Streams
  are built from valid replies with structure-aware mutations (lengths off by
  one, multi-GB, negative or 19+ digits; missing or doubled CRLF; RESP3 and
  unknown type bytes; arrays nested past the limit; bodies cut short or run
  long; truncated, spliced, flipped streams) or are random bytes. Every input
  must end in exactly what a small model of the engine built on the oracle
  predicts: per-key results, or the ProtocolError / connection-closed error at
  the predicted key, with `.partial` holding the keys before it and the arena
  holding exactly the predicted bytes (a value, or the part of one received
  before the stream broke) and nothing else. Any other exception, any timeout
  and any input slower than HANG_S is a finding.
* ``engine-socket``: the differential one. Each ``engine`` input runs twice,
  on the fd transport and on the socket-object transport
  (``RespConnection.over_socket``: send / recv_into on the socket object, the
  path TLS takes; a plain socketpair socket exercises it without TLS). Both
  must match the model, and each other exactly: results, exception class and
  text, ``.partial``, destination bytes. Two connections per input: ~60% of
  the ``engine`` target's inputs per second.

Inputs come in chunks of CHUNK, each from ``random.Random(f"{seed}/{target}/{chunk}")``,
so a finding is reproduced by its (seed, target, index) alone::

    .venv/bin/python tests/resp_fuzz.py --inputs 1000000   # every target, 1M each
    .venv/bin/python tests/resp_fuzz.py --replay engine:123456 --seed 0

A native call that spins without returning is caught by a monitor thread
(with the GIL released) or by faulthandler (with it held), which dump the
stacks and end the process.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import faulthandler
import itertools
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from resp_reference import MAX_LINE, RespSyntaxError, parse_header

from lmcache_valkey._native import RespConnection, parse_reply_header
from lmcache_valkey.errors import ProtocolError, ServerReplyError, ValkeyConnectionError

CHUNK = 1000
HANG_S = 5.0          # one input taking longer than this is a finding
CHUNK_HANG_S = 300.0  # a chunk taking longer is taken for a spin with the GIL held
TIMEOUT_S = 2.0       # the connection's own no-progress timeout
MIN_RBUF = MAX_LINE + 16
DEFAULT_MAX_BULK = 512 * 1024 * 1024
MAX_ERROR_TEXT = 512  # the engine keeps this much of a per-key error's text
MAX_DEPTH = 8         # execute() reads arrays nested this deep, no deeper
GUARD = 16            # guard bytes before, between and after GET segments
LABEL = "fuzz-peer"
# How engine inputs ended ("get: ok", "get: ProtocolError", "get: value cut short", ...),
# printed with the totals to show the inputs reach every outcome.
OUTCOMES: collections.Counter[str] = collections.Counter()

# -- generating replies -------------------------------------------------------

HUGE_LENGTHS = [2**31 - 1, 2**31, 2**32 + 1, 5_000_000_000, 2**53 + 1, 10**18 - 1]
OVERFLOWING = [b"1000000000000000000", b"9223372036854775807", b"9223372036854775808",
               b"-9223372036854775808", b"18446744073709551616", b"99999999999999999999999"]
ODD_NUMBERS = [b"", b"-", b"+5", b" 5", b"5 ", b"05", b"-0", b"0x10", b"1.0", b"1e3",
               b"\x00", b"\xff", b"--1", b"1-"]
RESP3_TYPES = b"%~#,(=!>|_"
TERMINATORS = [b"\n", b"\r", b"", b"\r\r\n", b"\n\r", b"\r\n\r\n", b" \r\n", b"\r\x00\n"]
TOKENS = [b"$", b"*", b":", b"+", b"-", b"_", b"%", b"~", b"#", b",", b">", b"\r", b"\n",
          b"\r\n", b"\r\n", b"0", b"1", b"3", b"-1", b"-2", b"5000000000", b"999999999999999999",
          b"1000000000000000000", b"OK", b"ERR x", b" ", b"\x00", b"\xff"]


class Emitter:
    """Writes replies as bytes; with probability `p` each piece (type byte,
    number, terminator, body, element count) comes out wrong."""

    def __init__(self, rng: random.Random, p: float) -> None:
        self.rng = rng
        self.p = p

    def wrong(self) -> bool:
        return self.p > 0 and self.rng.random() < self.p

    def type_byte(self, t: bytes) -> bytes:
        if not self.wrong():
            return t
        r = self.rng.random()
        if r < 0.5:
            return bytes([self.rng.choice(RESP3_TYPES)])
        if r < 0.8:
            return self.rng.choice([b"$", b"*", b":", b"+", b"-", b"_"])
        return bytes([self.rng.randrange(256)])

    def number(self, n: int) -> bytes:
        if not self.wrong():
            return b"%d" % n
        rng = self.rng
        r = rng.randrange(7)
        if r == 0:
            return b"%d" % (n + rng.choice([-1, 1]))             # off by one
        if r == 1:
            return b"%d" % rng.choice(HUGE_LENGTHS)               # multi-GB claim
        if r == 2:
            return b"%d" % rng.choice([-1, -2, -n - 1, -(10**18 - 1)])
        if r == 3:
            return rng.choice(OVERFLOWING)
        if r == 4:
            return rng.choice(ODD_NUMBERS)
        if r == 5:
            return bytes(rng.choices(b"0123456789", k=rng.randint(1, 22)))
        return rng.randbytes(rng.randint(0, 4))

    def crlf(self) -> bytes:
        return self.rng.choice(TERMINATORS) if self.wrong() else b"\r\n"

    def line(self, t: bytes, text: bytes) -> bytes:
        return self.type_byte(t) + text + self.crlf()

    def bulk(self, body: bytes) -> bytes:
        head = self.line(b"$", self.number(len(body)))
        if self.wrong():
            body = body[:-1] if body and self.rng.random() < 0.5 else body + b"x"
        return head + body + self.crlf()

    def array(self, items: list[bytes]) -> bytes:
        return self.line(b"*", self.number(len(items))) + b"".join(items)

    def null(self) -> bytes:
        return self.line(*self.rng.choice([(b"$", b"-1"), (b"*", b"-1"), (b"_", b"")]))

    # -- pieces -----------------------------------------------------------

    def body(self, size: int | None = None) -> bytes:
        rng = self.rng
        if size is None:
            r = rng.random()
            if r < 0.03:  # past the receive buffer: read straight into the destination
                size = rng.randint(60_000, 140_000)
            else:
                size = rng.choice([0, 1, rng.randint(2, 16), rng.randint(17, 200),
                                   rng.randint(200, 4000) if r < 0.1 else 3])
        if rng.random() < 0.2:  # a value that looks like more replies
            return (b"$3\r\nabc\r\n-ERR x\r\n:1\r\n*2\r\n" * (size // 28 + 1))[:size]
        return rng.randbytes(size)

    def text(self) -> bytes:
        """Simple-string / error text: no CR or LF, sometimes not UTF-8,
        sometimes past the engine's 512-byte error limit."""
        rng = self.rng
        n = rng.choice([0, rng.randint(1, 30), rng.randint(500, 530), rng.randint(531, 2000)])
        if rng.random() < 0.003:  # at the 64 KiB line limit
            n = rng.randint(MAX_LINE - 4, MAX_LINE + 1)
        raw = bytes(rng.choices(b"ERR WRONGTYPE OOM abc xyz019 \xc3\xa9\xff\xfe", k=n))
        return raw.replace(b"\r", b"").replace(b"\n", b"")

    def error(self) -> bytes:
        return self.line(b"-", self.text())

    def integer(self) -> bytes:
        rng = self.rng
        n = rng.choice([0, 1, 2, -1, rng.randint(-(10**18 - 1), 10**18 - 1)])
        return self.line(b":", self.number(n))

    def any_reply(self, depth: int = 0) -> bytes:
        """Any reply, arrays nested up to 10 deep (past execute's limit)."""
        rng = self.rng
        roll = rng.randrange(8 if depth < 10 else 7)
        if roll == 0:
            return self.bulk(self.body())
        if roll == 1:
            return self.null()
        if roll == 2:
            return self.integer()
        if roll == 3:
            return self.line(b"+", self.text())
        if roll == 4:
            return self.error()
        if roll == 5:
            return self.line(b"+", b"OK")
        if roll == 6:  # a RESP3 type this client does not speak
            return self.line(bytes([rng.choice(RESP3_TYPES)]), rng.choice([b"1", b"0", b"x"]))
        n = rng.choice([0, 1, 1, 2, 3, rng.randint(4, 12)])
        return self.array([self.any_reply(depth + 1) for _ in range(n)])

    def reply_for(self, kind: str) -> bytes:
        """A reply a server could send to one command of `kind` (an
        unexpected reply type now and then)."""
        rng = self.rng
        r = rng.random()
        if kind == "execute":
            if r < 0.1:  # arrays nested around execute()'s limit of 8
                depth = rng.randint(6, 11)
                return self.line(b"*", self.number(1)) * depth + self.any_reply(depth)
            return self.any_reply()
        if r < 0.05:
            return self.any_reply()
        if r < 0.15:
            return self.error()
        if kind == "set":
            return self.line(b"+", b"OK") if r < 0.8 else (
                self.null() if r < 0.9 else self.line(b"+", self.text()))
        if kind == "get":
            return self.bulk(self.body()) if r < 0.8 else self.null()
        return self.integer()


def mutate_stream(rng: random.Random, data: bytes) -> bytes:
    """One byte-level mutation of a whole reply stream."""
    n = len(data)
    r = rng.randrange(6)
    i, j = sorted((rng.randint(0, n), rng.randint(0, n)))
    if r == 0:
        return data[:i]                                            # truncated
    if r == 1 and n:
        return data[:i] + bytes([rng.randrange(256)]) + data[i + 1:]  # flipped
    if r == 2:
        return data[:i] + rng.choice(TOKENS) + data[i:]            # token inserted
    if r == 3:
        return data[:i] + data[j:]                                 # slice deleted
    if r == 4:
        return data[:j] + data[i:j] + data[j:]                     # slice doubled
    return data[:i] + Emitter(rng, 0.1).any_reply() + data[j:]     # spliced


def junk(rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return rng.randbytes(rng.choice([rng.randint(0, 8), rng.randint(0, 64), 300]))
    return b"".join(rng.choices(TOKENS, k=rng.randint(0, 40)))


# -- target: parse_reply_header -------------------------------------------------


def header_input(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.6:
        em = Emitter(rng, 0.0 if r < 0.25 else rng.choice([0.1, 0.3, 0.6]))
        data = em.reply_for(rng.choice(["get", "set", "exists", "execute"]))
        if rng.random() < 0.2:
            data = data[:rng.randint(0, len(data))]
        return data + (junk(rng)[:rng.randint(0, 16)] if rng.random() < 0.5 else b"")
    if r < 0.9:
        return junk(rng)
    if r < 0.95:
        return mutate_stream(rng, Emitter(rng, 0.0).any_reply())
    # Lines right around the 64 KiB limit (CRLF, a bare LF, or no LF at all).
    body = rng.randint(MAX_LINE - 5, MAX_LINE + 1)
    end = rng.choice([b"\r\n", b"\n", b"", b"\r"])
    return rng.choice([b"+", b"-", b"$", b"?"]) + b"7" * body + end + rng.randbytes(3)


def check_header(data: bytes) -> str | None:
    """None when the native parser agrees with the oracle; else the finding."""
    try:
        expected: object = parse_header(data)
    except RespSyntaxError:
        expected = "error"
    try:
        got: object = parse_reply_header(data)
    except ProtocolError:
        got = "error"
    if got != expected:
        return f"native {got!r:.200} != oracle {expected!r:.200}"
    if isinstance(got, tuple) and not (got[3] <= len(data) and got[2] == data[1:got[3] - 2]):
        return f"consumed/text out of range: {got!r:.200}"
    return None


# -- the model: what the engine must make of a stream ---------------------------


class Eof(Exception):
    """The stream ends inside this reply (the peer sent FIN there)."""


class Broken(Exception):
    """The engine must stop with a ProtocolError at this reply."""


def _header(stream: bytes, pos: int) -> tuple[str, int, bytes, int]:
    try:
        h = parse_header(stream, pos)
    except RespSyntaxError as e:
        raise Broken(str(e)) from None
    if h is None:
        raise Eof
    return h


def _body(stream: bytes, start: int, n: int) -> bytes:
    """The n-byte body at `start`, which must be followed by CRLF."""
    if len(stream) < start + n + 2:
        raise Eof
    if stream[start + n:start + n + 2] != b"\r\n":
        raise Broken("bulk not terminated by CRLF")
    return stream[start:start + n]


def read_value(stream: bytes, pos: int, max_bulk: int, depth: int = 0) -> tuple[object, int]:
    """execute()'s reading of the reply at pos: (value, end). Errors are
    ('error', text); the checks come in the engine's order."""
    if depth > MAX_DEPTH:
        raise Broken("nested too deep")
    kind, value, text, consumed = _header(stream, pos)
    pos += consumed
    if kind == "+":
        return text.decode("utf-8", "replace"), pos
    if kind == "-":
        return ("error", text.decode("utf-8", "replace")), pos
    if kind == ":":
        return value, pos
    if value == -1:
        return None, pos
    if kind == "*":
        items = []
        for _ in range(value):
            item, pos = read_value(stream, pos, max_bulk, depth + 1)
            items.append(item)
        return items, pos
    if value > max_bulk:
        raise Broken("bulk longer than max_bulk_len")
    return _body(stream, pos, value), pos + value + 2


@dataclass
class Expected:
    values: list = field(default_factory=list)
    errors: dict = field(default_factory=dict)
    too_large: dict = field(default_factory=dict)
    writes: dict = field(default_factory=dict)   # GET op index -> bytes at the start of its dest
    failure: type | None = None                  # ProtocolError or ValkeyConnectionError
    failed_at: int = -1
    end: int = 0                                 # where the next batch's replies start


FAILED_VALUE = {"get": None, "set": False, "exists": False, "touch": False, "delete": None}


def expect_batch(kind: str, stream: bytes, pos: int, caps: list[int], max_bulk: int) -> Expected:
    """The engine's documented per-reply decisions, on the oracle's framing,
    for the batch whose replies start at stream[pos]."""
    exp = Expected()
    for i, cap in enumerate(caps):
        try:
            h_kind, value, text, consumed = _header(stream, pos)
            pos += consumed
            if h_kind == "-":
                raw = text[:MAX_ERROR_TEXT].decode("utf-8", "replace")
                exp.values.append(FAILED_VALUE[kind])
                exp.errors[i] = raw
                continue
            null = (h_kind == "$" or h_kind == "_") and value == -1
            if kind == "get":
                if null:
                    exp.values.append(None)
                    continue
                if h_kind != "$":
                    raise Broken("unexpected reply type to GET")
                if value > max_bulk:
                    raise Broken("bulk longer than max_bulk_len")
                if value <= cap:
                    # Whatever of the body arrives is written, even if it breaks later.
                    exp.writes[i] = stream[pos:pos + value]
                body = _body(stream, pos, value)
                pos += value + 2
                if value <= cap:
                    exp.values.append(len(body))
                else:
                    exp.values.append(None)
                    exp.too_large[i] = value
            elif kind == "set":
                if h_kind == "+":
                    exp.values.append(True)
                elif null:
                    exp.values.append(False)
                else:
                    raise Broken("unexpected reply type to SET")
            else:
                if h_kind != ":":
                    raise Broken("expected an integer")
                exp.values.append(value if kind == "delete" else value > 0)
        except (Broken, Eof) as e:
            exp.failure = ProtocolError if isinstance(e, Broken) else ValkeyConnectionError
            exp.failed_at = i
            exp.values.extend(FAILED_VALUE[kind] for _ in range(len(caps) - i))
            return exp
    exp.end = pos
    return exp


def expect_execute(stream: bytes, calls: int, max_bulk: int) -> list[object]:
    """Each call's value, ('error', text) for an error reply, or the class of
    the connection failure (after which every later call fails the same way)."""
    out: list[object] = []
    pos = 0
    for _ in range(calls):
        try:
            value, pos = read_value(stream, pos, max_bulk)
        except (Broken, Eof) as e:
            failure = ProtocolError if isinstance(e, Broken) else ValkeyConnectionError
            return out + [failure] * (calls - len(out))
        out.append(value)
    return out


# -- target: the engine ---------------------------------------------------------

ENGINE_KINDS = ["get"] * 7 + ["execute"] * 4 + ["set"] * 3 + ["exists", "exists", "touch",
                                                               "touch", "delete", "delete"]


@dataclass
class EngineInput:
    kind: str
    stream: bytes
    caps: list[list[int]]        # per op: its segment lengths (GET) or value lengths (SET)
    options: dict
    calls: int = 1               # execute() calls in a row
    split: int = 0               # > 0: two batches, ops[:split] then the rest, one connection
    fill: bytes = b""            # GET: the arena's bytes before the call
    values: list[bytes] = field(default_factory=list)  # SET: the values sent
    ttl_ms: int = 0              # SET
    cut: int | None = None       # the peer pauses here (None: all at once)


def engine_input(rng: random.Random) -> EngineInput:
    kind = rng.choice(ENGINE_KINDS)
    n = rng.choice([1, 1, 2, 3, rng.randint(4, 12)])
    if kind == "execute":
        n = rng.choice([1, 1, 2, 3])
    options = {
        "rbuf_size": MIN_RBUF + rng.choice([0, 0, 0, rng.randrange(70_000)]),
        "max_bulk_len": rng.choice([DEFAULT_MAX_BULK] * 6 + [rng.randint(0, 40), 2**62]),
        "max_inflight_bytes": rng.choice([1, 64, 64 * 1024 * 1024]),
    }
    mode = rng.random()
    caps: list[list[int]] = []
    if mode < 0.85:
        em = Emitter(rng, 0.0 if mode < 0.4 else rng.choice([0.03, 0.1, 0.3]))
        replies = []
        for _ in range(n):
            reply = em.reply_for(kind)
            replies.append(reply)
            if kind == "get":
                caps.append(_dest_layout(rng, reply))
        stream = b"".join(replies)
        if mode >= 0.7:
            for _ in range(rng.randint(1, 3)):
                stream = mutate_stream(rng, stream)
    else:
        stream = junk(rng)
    inp = EngineInput(kind, stream, caps, options, calls=n)
    if kind != "execute" and n > 1 and rng.random() < 0.3:
        inp.split = rng.randint(1, n - 1)
    if rng.random() < 0.02:
        inp.cut = rng.randint(0, len(stream))
    if kind == "get":
        inp.caps = caps or [_dest_layout(rng, b"") for _ in range(n)]
        inp.fill = rng.randbytes(Arena.size(inp.caps))
    else:
        inp.caps = [[0]] * n
    if kind == "set":
        inp.values = [rng.randbytes(rng.randint(0, 16)) for _ in range(n)]
        inp.ttl_ms = rng.choice([0, 1000])
    return inp


def _dest_layout(rng: random.Random, reply: bytes) -> list[int]:
    """Segment lengths of one GET destination, sized around the reply's body."""
    declared = len(reply) - reply.find(b"\n") - 3 if reply.startswith(b"$") else 8
    cap = max(0, rng.choice([declared, declared, declared + rng.randint(1, 8), declared - 1,
                             rng.randint(0, max(declared, 1)), 0]))
    r = rng.random()
    if cap < 2 or r < 0.7:
        return [cap]
    # 2-3 pieces (0-length ones too), now and then more than one readv takes (64)
    pieces = rng.randint(65, 300) if r > 0.98 else rng.randint(2, 3)
    cuts = sorted(rng.randint(0, cap) for _ in range(pieces - 1))
    return [b - a for a, b in itertools.pairwise([0, *cuts, cap])]


class Arena:
    """All GET destinations of one input as slices of one bytearray, with
    GUARD random bytes before, between and after every segment."""

    @staticmethod
    def size(layouts: list[list[int]]) -> int:
        return GUARD + sum(n + GUARD for layout in layouts for n in layout)

    def __init__(self, fill: bytes, layouts: list[list[int]]) -> None:
        self.before = fill
        self.buf = bytearray(self.before)
        view = memoryview(self.buf)
        self.offsets: list[list[int]] = []
        self.dests: list[object] = []
        pos = GUARD
        for layout in layouts:
            offs, segs = [], []
            for n in layout:
                offs.append(pos)
                segs.append(view[pos:pos + n])
                pos += n + GUARD
            self.offsets.append(offs)
            self.dests.append(segs[0] if len(segs) == 1 and layout[0] else segs)

    def expected(self, layouts: list[list[int]], writes: dict[int, bytes]) -> bytearray:
        out = bytearray(self.before)
        for i, data in writes.items():
            for off, n in zip(self.offsets[i], layouts[i], strict=True):
                piece, data = data[:n], data[n:]
                out[off:off + len(piece)] = piece
        return out

    def release(self) -> None:
        for d in self.dests:
            for seg in d if isinstance(d, list) else [d]:
                seg.release()


@contextlib.contextmanager
def peer_playing(stream: bytes, cut: int | None = None) -> Iterator[socket.socket]:
    """A non-blocking client socket whose peer sends `stream`, then FIN
    (shutdown, not close: closing with unread requests would send RST).
    The part from `cut` on (and whatever the socket cannot hold) is sent by
    a thread a moment later, while the client reads; both ends are closed on
    exit. Where the reads split the stream must never change the outcome."""
    client, peer = socket.socketpair()
    writer = None
    try:
        peer.setblocking(False)
        try:
            sent = peer.send(stream[:cut])
        except BlockingIOError:
            sent = 0
        if sent == len(stream):
            peer.shutdown(socket.SHUT_WR)
        else:
            writer = threading.Thread(target=_send_rest, args=(peer, stream[sent:], cut))
            writer.start()
        client.setblocking(False)
        yield client
    finally:
        client.close()  # first: a writer blocked on a client that stopped reading fails
        if writer is not None:
            writer.join()
        peer.close()


def _send_rest(peer: socket.socket, rest: bytes, cut: int | None) -> None:
    peer.settimeout(HANG_S)
    if cut is not None:
        time.sleep(0.0002)  # let the client read up to the cut first
    try:
        peer.sendall(rest)
        peer.shutdown(socket.SHUT_WR)
    except OSError:  # the client stopped reading (it failed, or closed) first
        pass


#: The engine's transports, as RespConnection.transport names them.
TRANSPORTS = ("fd", "socket")


def engine_on(sock: socket.socket, transport: str, label: str, **options: object
              ) -> RespConnection:
    """A RespConnection on `sock` over `transport`: "fd" (system calls on the
    fd) or "socket" (the socket object's send / recv_into, TLS's path)."""
    if transport == "socket":
        return RespConnection.over_socket(sock, label, **options)
    return RespConnection(sock.fileno(), label, **options)


def run_engine(inp: EngineInput, transport: str = "fd",
               seen: list[object] | None = None) -> str | None:
    """Play inp.stream to a fresh connection over `transport` ("fd": system
    calls on the fd; "socket": the socket object's send / recv_into, as over
    TLS); None when all is as predicted. What the caller saw (results,
    exceptions, `.partial`, arena bytes) is appended to `seen`."""
    seen = [] if seen is None else seen
    with peer_playing(inp.stream, inp.cut) as client:
        conn = engine_on(client, transport, LABEL, timeout_s=TIMEOUT_S, **inp.options)
        if conn.transport != transport:
            return f"built a {conn.transport!r} connection, not {transport!r}"
        if inp.kind == "execute":
            return _check_execute(conn, inp, seen)
        return _check_batch(conn, inp, seen)


def run_engine_both(inp: EngineInput) -> str | None:
    """The differential target: the same input over both transports; each
    must match the model, and they must match each other exactly (results,
    exception class and text, `.partial`, destination bytes)."""
    seen: dict[str, list[object]] = {"fd": [], "socket": []}
    for transport, observed in seen.items():
        problem = run_engine(inp, transport, observed)
        if problem is not None:
            return f"{transport} transport: {problem}"
    if seen["fd"] != seen["socket"]:
        return f"transports differ: fd {seen['fd']!r:.300} != socket {seen['socket']!r:.300}"
    return None


def _check_batch(conn: RespConnection, inp: EngineInput, seen: list[object]) -> str | None:
    arena = Arena(inp.fill, inp.caps) if inp.kind == "get" else None
    writes: dict[int, bytes] = {}
    pos = 0
    n = len(inp.caps)
    try:
        for lo, hi in ((0, inp.split), (inp.split, n)) if inp.split else ((0, n),):
            caps = [sum(layout) for layout in inp.caps[lo:hi]]
            exp = expect_batch(inp.kind, inp.stream, pos, caps, inp.options["max_bulk_len"])
            problem = _check_one_batch(conn, inp, lo, hi, arena, exp, seen)
            if problem is not None:
                return problem
            writes.update((lo + i, w) for i, w in exp.writes.items())
            if exp.failure is not None:
                break
            pos = exp.end
    finally:
        if arena is not None:
            arena.release()
            seen.append(bytes(arena.buf))
    if arena is not None and arena.buf != (want := arena.expected(inp.caps, writes)):
        diff = [i for i, (a, b) in enumerate(zip(arena.buf, want, strict=True)) if a != b]
        return f"arena bytes differ at {diff[:20]} (segments at {arena.offsets})"
    return None


def _check_one_batch(conn: RespConnection, inp: EngineInput, lo: int, hi: int,
                     arena: Arena | None, exp: Expected, seen: list[object]) -> str | None:
    keys = [b"k%d" % i for i in range(lo, hi)]
    try:
        if inp.kind == "get":
            result = conn.batch_get_into(keys, arena.dests[lo:hi])
        elif inp.kind == "set":
            result = conn.batch_set(keys, inp.values[lo:hi], inp.ttl_ms)
        elif inp.kind == "exists":
            result = conn.batch_exists(keys)
        elif inp.kind == "touch":
            result = conn.batch_touch(keys, 1000)
        else:
            result = conn.batch_delete(keys)
        failure = None
    except ValkeyConnectionError as e:
        result, failure = e.partial, e
    if exp.failure is None and failure is not None:
        return f"raised {failure!r}, expected results"
    if exp.failure is not None and type(failure) is not exp.failure:
        return f"expected {exp.failure.__name__} at key {exp.failed_at}, got {failure!r}"
    values, errors, too_large = result
    got = (values, {i: str(e) for i, e in errors.items()}, too_large)
    seen.append((got, repr(failure)))
    if not all(isinstance(e, ServerReplyError) for e in errors.values()):
        return f"per-key errors of the wrong class: {errors!r}"
    if got != (exp.values, exp.errors, exp.too_large):
        return f"results {got!r:.300} != expected {(exp.values, exp.errors, exp.too_large)!r:.300}"
    if conn.failed != (failure is not None):
        return f"conn.failed is {conn.failed} after {failure!r}"
    OUTCOMES[f"{inp.kind}: {type(failure).__name__ if failure else 'ok'}"] += 1
    if exp.too_large:
        OUTCOMES[f"{inp.kind}: too large, drained"] += 1
    if exp.failure and exp.failed_at in exp.writes:
        OUTCOMES[f"{inp.kind}: value cut short"] += 1
    if lo:
        OUTCOMES[f"{inp.kind}: second batch on the connection"] += 1
    return None


def _check_execute(conn: RespConnection, inp: EngineInput, seen: list[object]) -> str | None:
    expected = expect_execute(inp.stream, inp.calls, inp.options["max_bulk_len"])
    got: list[object] = []
    for _ in range(inp.calls):
        try:
            got.append(_plain(conn.execute("GET", "k")))
        except ServerReplyError as e:
            got.append(("error", str(e)))
        except ValkeyConnectionError as e:
            got.append(type(e))
            seen.append(repr(e))
    seen.append(got)
    if got != expected:
        return f"execute {got!r:.300} != expected {expected!r:.300}"
    last = got[-1]
    OUTCOMES[f"execute: {last.__name__ if isinstance(last, type) else 'ok'}"] += 1
    return None


def _plain(value: object) -> object:
    if isinstance(value, ServerReplyError):
        return ("error", str(value))
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# -- the driver -----------------------------------------------------------------


@dataclass
class Finding:
    target: str
    index: int
    message: str
    data: object


@dataclass
class Target:
    make: Callable[[random.Random], object]    # an input, from the chunk's rng
    check: Callable[[object], str | None]      # None, or what went wrong


TARGETS = {"header": Target(header_input, check_header),
           "engine": Target(engine_input, run_engine),
           "engine-socket": Target(engine_input, run_engine_both)}


class _Watch:
    """Ends the process when one input runs longer than HANG_S, even while a
    native call holds no GIL (a spin with the GIL held is left to faulthandler)."""

    def __init__(self) -> None:
        self.what: tuple[str, int] | None = None
        self.since = 0.0
        threading.Thread(target=self._run, daemon=True, name="fuzz-watch").start()

    def _run(self) -> None:
        while True:
            time.sleep(1.0)
            what, since = self.what, self.since
            if what is not None and time.monotonic() - since > 4 * HANG_S:
                print(f"\nFUZZ HANG: {what[0]} input {what[1]} still running after "
                      f"{4 * HANG_S:.0f} s; replay with --replay {what[0]}:{what[1]}",
                      file=sys.__stderr__, flush=True)
                faulthandler.dump_traceback(sys.__stderr__, all_threads=True)
                os._exit(70)


_watch: _Watch | None = None


def inputs(seed: int, target: str, start: int, stop: int) -> Iterator[tuple[int, object]]:
    """(index, input) for indices [start, stop): chunk c's inputs all come
    from random.Random(f"{seed}/{target}/{c}"), so any index can be replayed."""
    make = TARGETS[target].make
    for chunk in range(start // CHUNK, (stop + CHUNK - 1) // CHUNK):
        rng = random.Random(f"{seed}/{target}/{chunk}")
        for index in range(chunk * CHUNK, min(chunk * CHUNK + CHUNK, stop)):
            data = make(rng)
            if index >= start:
                yield index, data


@dataclass
class Totals:
    inputs: int = 0
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)


def fuzz(target: str, count: int, seed: int = 0, start: int = 0,
         max_findings: int = 20, progress: bool = False) -> Totals:
    """Run inputs [start, start + count) of one target; return the totals."""
    global _watch
    if _watch is None:
        _watch = _Watch()
    check = TARGETS[target].check
    totals = Totals()
    t0 = last = time.monotonic()
    try:
        for index, data in inputs(seed, target, start, start + count):
            if index % CHUNK == 0:  # re-arm once per chunk: arming costs ~0.2 ms
                faulthandler.dump_traceback_later(CHUNK_HANG_S, exit=True, file=sys.__stderr__)
            _watch.what, _watch.since = (target, index), time.monotonic()
            began = _watch.since
            try:
                message = check(data)
            except Exception as e:  # anything but the predicted outcome is a finding
                message = f"unexpected {type(e).__name__}: {e}"
            if message is None and time.monotonic() - began > HANG_S:
                message = f"took {time.monotonic() - began:.1f} s"
            if message is not None:
                totals.findings.append(Finding(target, index, message, data))
                if len(totals.findings) >= max_findings:
                    break
            totals.inputs += 1
            if progress and time.monotonic() - last > 10:
                last = time.monotonic()
                rate = totals.inputs / (last - t0)
                print(f"  {target}: {totals.inputs} inputs, {rate:,.0f}/s", file=sys.stderr)
    finally:
        _watch.what = None
        faulthandler.cancel_dump_traceback_later()
    totals.seconds = time.monotonic() - t0
    return totals


def summary(target: str, totals: Totals) -> str:
    rate = totals.inputs / totals.seconds if totals.seconds else 0.0
    return (f"{target}: {totals.inputs:,} inputs in {totals.seconds:.1f} s "
            f"({rate:,.0f} inputs/s), {len(totals.findings)} findings")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=1_000_000, help="inputs per target")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--replay", metavar="TARGET:INDEX",
                    help="run one input and show it and its outcome")
    args = ap.parse_args(argv)
    if args.replay:
        target, index = args.replay.split(":")
        for _, data in inputs(args.seed, target, int(index), int(index) + 1):
            print(f"input: {data!r}")
            print(f"outcome: {TARGETS[target].check(data) or 'as predicted'}")
        return 0
    found = 0
    for target in args.targets.split(","):
        totals = fuzz(target, args.inputs, args.seed, progress=True)
        print(summary(target, totals), flush=True)
        if target.startswith("engine"):
            print("  outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(OUTCOMES.items())))
        for f in totals.findings:
            print(f"  FINDING {f.target}:{f.index}: {f.message}\n    input: {f.data!r:.500}")
        found += len(totals.findings)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
