"""Client-side counters: what a client's batches did, per operation.

A :class:`ClientStats` is fed once per finished batch, on the worker thread
that finishes it (never per key in a Python loop: ``list.count`` and
``sum(filter(...))`` do the counting in C), and once per connect. Reading it
gives a :class:`StatsSnapshot`: plain numbers and dicts, easy to print
(``str(snapshot)`` is a small table), to dump as JSON (``to_dict()``) and
to export (:mod:`lmcache_valkey.observability.metrics` turns it into Prometheus text).

Per operation (``get``, ``set``, ``exists``, ``touch`` — EXISTS with TTL
renewal —, ``delete``) every key lands in exactly one outcome:

=========  ==========================================================
``get``    ``hit`` (a value was written to its buffer), ``miss``, ``error``
``set``    ``stored``, ``error``
``exists`` ``found``, ``missing``, ``error`` (``touch`` likewise)
``delete`` ``deleted``, ``missing``, ``error``
=========  ==========================================================

An ``error`` key is counted once more under its kind in ``key_errors``: the
server's error code (``WRONGTYPE``, ``OOM``, ``NOPERM`` ...; any error object
with a ``code``), ``too_large`` (a GET value larger than its buffer), or, for
the keys a failed batch did not complete, the batch's failure kind
(``connection``, ``timeout``, ``protocol``, ``tls``, ``auth``, ``closed``),
which ``batch_errors`` also counts once per batch. Keys of a failed batch
that got no value count as errors, not misses: the client reports them as
failed, never as success.

Latency is from submit to the future being resolved, in a histogram with
fixed buckets (:data:`LATENCY_BUCKETS_S`, seconds).
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import (
    AuthenticationError,
    ClientClosedError,
    ProtocolError,
    TlsError,
    ValkeyConnectionError,
    ValkeyTimeoutError,
)
from ..protocol.operations import GET, OPERATIONS, SET, Operation

OPS = tuple(op.name for op in OPERATIONS)

#: Outcomes per op, in display order; the first is the "ok" one.
OUTCOMES = {op.name: op.outcomes for op in OPERATIONS}

#: Upper bounds (seconds) of the batch latency buckets; one more bucket, +Inf,
#: follows. From a 0.1 ms EXISTS batch to a multi-second GET of large values.
LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                     0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Most specific first: TlsError and ValkeyTimeoutError are connection errors too.
_BATCH_ERROR_KINDS: tuple[tuple[type[BaseException], str], ...] = (
    (ValkeyTimeoutError, "timeout"), (ProtocolError, "protocol"), (TlsError, "tls"),
    (ValkeyConnectionError, "connection"), (AuthenticationError, "auth"),
    (ClientClosedError, "closed"))


def batch_error_kind(exc: BaseException) -> str:
    """``timeout``, ``connection`` ... for a failed batch's exception; the
    class name for anything else (a bad buffer: ``TypeError``)."""
    for cls, kind in _BATCH_ERROR_KINDS:
        if isinstance(exc, cls):
            return kind
    return type(exc).__name__


@dataclasses.dataclass(frozen=True)
class OpStats:
    """One operation's counters (see the module docstring for outcomes)."""

    batches: int = 0
    keys: dict[str, int] = dataclasses.field(default_factory=dict)          # outcome -> keys
    key_errors: dict[str, int] = dataclasses.field(default_factory=dict)    # kind -> keys
    batch_errors: dict[str, int] = dataclasses.field(default_factory=dict)  # kind -> batches
    bytes: int = 0  # value bytes received (get) or sent and stored (set)
    #: Batches per latency bucket (not cumulative); the last one is +Inf.
    latency_counts: tuple[int, ...] = (0,) * (len(LATENCY_BUCKETS_S) + 1)
    latency_sum_s: float = 0.0

    @property
    def total_keys(self) -> int:
        return sum(self.keys.values())

    def __add__(self, other: OpStats) -> OpStats:
        return OpStats(
            self.batches + other.batches, _add(self.keys, other.keys),
            _add(self.key_errors, other.key_errors), _add(self.batch_errors, other.batch_errors),
            self.bytes + other.bytes,
            tuple(a + b for a, b in zip(self.latency_counts, other.latency_counts, strict=True)),
            self.latency_sum_s + other.latency_sum_s)


@dataclasses.dataclass(frozen=True)
class StatsSnapshot:
    """A client's counters at one moment. For a cluster client: the sum over
    its node clients, each also in ``nodes`` (by ``host:port``), and the
    redirections and slot-map refreshes in ``cluster``."""

    endpoint: str
    ops: dict[str, OpStats]
    connects: int = 0
    reconnects: int = 0       # connects that replaced a connection lost before
    connect_failures: int = 0
    # What the last connect learned (lmcache_valkey.protocol.server_profile): the
    # server, the GET reply bytes each connection requests ahead there, and
    # the SET value bytes it sends ahead of their +OK.
    server: str = ""
    get_inflight_bytes: int = 0
    set_inflight_bytes: int = 0
    cluster: dict[str, int] = dataclasses.field(default_factory=dict)
    nodes: dict[str, StatsSnapshot] = dataclasses.field(default_factory=dict)

    @property
    def hits(self) -> int:
        return self.ops["get"].keys.get("hit", 0)

    @property
    def misses(self) -> int:
        return self.ops["get"].keys.get("miss", 0)

    @property
    def bytes_in(self) -> int:
        """Value bytes received by GETs."""
        return self.ops["get"].bytes

    @property
    def bytes_out(self) -> int:
        """Value bytes of SETs the server stored."""
        return self.ops["set"].bytes

    @property
    def errors(self) -> dict[str, int]:
        """Keys that failed, by kind, over all operations."""
        out: dict[str, int] = {}
        for op in self.ops.values():
            out = _add(out, op.key_errors)
        return out

    def summary(self) -> dict[str, Any]:
        """The headline figures, for status reports and log lines."""
        return {"hits": self.hits, "misses": self.misses, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "errors": self.errors,
                "connects": self.connects, "reconnects": self.reconnects}

    @classmethod
    def combine(cls, endpoint: str, parts: Iterable[StatsSnapshot],
                cluster: dict[str, int] | None = None,
                nodes: dict[str, StatsSnapshot] | None = None) -> StatsSnapshot:
        """The sum of `parts` (e.g. a cluster's node clients)."""
        parts = list(parts)
        ops = {op: sum((p.ops[op] for p in parts), OpStats()) for op in OPS}
        return cls(endpoint, ops, sum(p.connects for p in parts),
                   sum(p.reconnects for p in parts), sum(p.connect_failures for p in parts),
                   cluster=dict(cluster or {}), nodes=dict(nodes or {}))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain dicts, lists and numbers; latency buckets keyed
        by their upper bound (``"+Inf"`` last)."""
        out = dataclasses.asdict(self)
        bounds = [str(b) for b in LATENCY_BUCKETS_S] + ["+Inf"]
        for op in out["ops"].values():
            op["latency_counts"] = dict(zip(bounds, op["latency_counts"], strict=True))
        out["nodes"] = {k: v.to_dict() for k, v in self.nodes.items()}
        out["hits"], out["misses"] = self.hits, self.misses
        out["bytes_in"], out["bytes_out"] = self.bytes_in, self.bytes_out
        out["errors"] = self.errors
        return out

    def __str__(self) -> str:
        rows = [("op", "batches", "keys", "ok", "miss", "errors", "bytes", "mean ms")]
        for operation in OPERATIONS:
            op = self.ops[operation.name]
            if not op.batches:
                continue
            ok, *rest = operation.outcomes
            rows.append((operation.name, str(op.batches), str(op.total_keys),
                         str(op.keys.get(ok, 0)),
                         str(op.keys.get(rest[0], 0)) if len(rest) == 2 else "-",
                         str(op.keys.get("error", 0)),
                         format_bytes(op.bytes) if operation.has_buffers else "-",
                         f"{1e3 * op.latency_sum_s / op.batches:.2f}"))
        lines = [f"client {self.endpoint}", *text_table(rows)]
        if len(rows) == 1:
            lines.append("  (no batches yet)")
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items()))
        lines.append(f"  key errors: {errors or 'none'}")
        lines.append(f"  connections: {self.connects} connects, {self.reconnects} reconnects, "
                     f"{self.connect_failures} failed connects")
        if self.server:
            lines.append(f"  server: {self.server}; in flight per connection: GET replies "
                         f"{format_bytes(self.get_inflight_bytes)}, SET values "
                         f"{format_bytes(self.set_inflight_bytes)}")
        if self.cluster:
            lines.append("  cluster: " + ", ".join(f"{k} {v}" for k, v in self.cluster.items()))
        return "\n".join(lines)


class _OpCounters:
    __slots__ = ("batches", "keys", "key_errors", "batch_errors", "bytes", "latency_counts",
                 "latency_sum_s")

    def __init__(self) -> None:
        self.batches = 0
        self.keys: dict[str, int] = {}
        self.key_errors: dict[str, int] = {}
        self.batch_errors: dict[str, int] = {}
        self.bytes = 0
        self.latency_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.latency_sum_s = 0.0

    def frozen(self) -> OpStats:
        return OpStats(self.batches, dict(self.keys), dict(self.key_errors),
                       dict(self.batch_errors), self.bytes, tuple(self.latency_counts),
                       self.latency_sum_s)


class ClientStats:
    """The counters of one :class:`~lmcache_valkey.ValkeyClient` (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ops = {op: _OpCounters() for op in OPS}
        self._connects = 0
        self._reconnects = 0
        self._server = ""
        self._inflight_bytes = 0
        self._set_inflight_bytes = 0
        self._connect_failures = 0

    def record_batch(self, op: Operation, result: list[Any], errors: dict[int, Any],
                     too_large: dict[int, int], exc: BaseException | None, seconds: float,
                     sizes: Sequence[int] | None) -> None:
        """One finished batch of operation `op` (lmcache_valkey.protocol.operations):
        its per-key `result` (failed keys hold the failed value), per-key
        `errors` and `too_large`, the batch's exception if it failed, its
        latency, and (SET) the value size of each key."""
        n = len(result)
        nbytes = 0
        if op is GET:
            ok = n - result.count(None)
            nbytes = sum(filter(None, result))
        else:  # True/False, or DEL's 1/0: sum() is the fastest count in C
            ok = sum(result)
            if op is SET and sizes is not None:
                nbytes = sum(sizes) if ok == n else sum(itertools.compress(sizes, result))
        kinds: dict[str, int] = {}
        for e in errors.values():
            kind = getattr(e, "code", None) or type(e).__name__
            kinds[kind] = kinds.get(kind, 0) + 1
        if too_large:
            kinds["too_large"] = kinds.get("too_large", 0) + len(too_large)
        rest = n - ok - len(errors) - len(too_large)  # neither a value nor a reason
        exc_kind = batch_error_kind(exc) if exc is not None else None
        if exc_kind is not None and rest:
            kinds[exc_kind] = kinds.get(exc_kind, 0) + rest
        elif op is SET and rest:  # a SET has no "miss": not stored is an error
            kinds["not_stored"] = kinds.get("not_stored", 0) + rest
        nerr = sum(kinds.values())
        outcomes = op.outcomes
        bucket = bisect.bisect_left(LATENCY_BUCKETS_S, seconds)
        with self._lock:
            c = self._ops[op.name]
            c.batches += 1
            c.bytes += nbytes
            c.latency_counts[bucket] += 1
            c.latency_sum_s += seconds
            keys = c.keys
            keys[outcomes[0]] = keys.get(outcomes[0], 0) + ok
            if len(outcomes) == 3:
                keys[outcomes[1]] = keys.get(outcomes[1], 0) + n - ok - nerr
            keys["error"] = keys.get("error", 0) + nerr
            for kind, k in kinds.items():
                c.key_errors[kind] = c.key_errors.get(kind, 0) + k
            if exc_kind is not None:
                c.batch_errors[exc_kind] = c.batch_errors.get(exc_kind, 0) + 1

    def record_connect(self, reconnect: bool, server: str = "", inflight_bytes: int = 0,
                       set_inflight_bytes: int = 0) -> None:
        with self._lock:
            self._connects += 1
            self._reconnects += reconnect
            self._server, self._inflight_bytes = server, inflight_bytes
            self._set_inflight_bytes = set_inflight_bytes

    def record_connect_failure(self) -> None:
        with self._lock:
            self._connect_failures += 1

    def snapshot(self, endpoint: str) -> StatsSnapshot:
        with self._lock:
            return StatsSnapshot(endpoint, {op: c.frozen() for op, c in self._ops.items()},
                                 self._connects, self._reconnects, self._connect_failures,
                                 self._server, self._inflight_bytes, self._set_inflight_bytes)


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def text_table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Aligned lines: the first column left, the others right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in rows]


def _add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out
