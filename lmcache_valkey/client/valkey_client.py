"""ValkeyClient: the public façade.

Keys get the configured prefix, SETs the configured TTL. A batch is split
into contiguous tiles balanced by bytes, one per connection (jobs.py); each
connection is owned by one worker thread that runs its tile in the native
engine with the GIL released (workers.py). Results come back as a
:class:`BatchResult` (a list) through a ``concurrent.futures.Future``, and,
for asyncio, through an eventfd the event loop watches (batch_client.py).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from ..config import ClientConfig
from ..errors import ClientClosedError, ConfigError, ServerReplyError, ValkeyConnectionError
from ..observability.stats import ClientStats, StatsSnapshot
from ..protocol.buffers import Buffer, buffer_nbytes
from ..protocol.connection import Connection
from ..protocol.operations import Operation, run_batch
from ..server.embedded import EmbeddedValkey
from .batch_client import BatchClientBase, Key
from .batch_result import BatchResult, merge_outcome, resolve
from .completion import CompletionQueue
from .integrity import checksum_for
from .jobs import BatchJob, Tile, split_by_bytes
from .workers import Workers

# What the cluster client and the integrations import from here.
__all__ = ["BatchClientBase", "BatchResult", "Key", "ValkeyClient", "resolve"]

log = logging.getLogger(__name__)

# Below these sizes a batch is not worth splitting across connections: a
# 4 MiB tile moves in ~1-2 ms here, and a second thread's hand-off and its
# contention for the cores (with the server's) cost more than the overlap
# gains (32 x 64 KiB GET/SET, one tile against two, 2 cores: 8-20 % faster
# on Valkey 9.1, Valkey 8.1 and Redis 7.0).
_MIN_TILE_BYTES = 4 * 1024 * 1024
_MIN_TILE_KEYS = 64


class ValkeyClient(BatchClientBase):
    """Batched GET/SET/EXISTS/DEL of large values against one Valkey server.

    ``url`` is ``valkey://[user:password@]host:port[/db]`` (``redis://`` is an
    alias) or ``unix:///path/to.sock``. With no URL and no ``VALKEY_HOST`` in
    the environment, an embedded server is started and owned by the client.
    Options: see :class:`~lmcache_valkey.config.ClientConfig`; ``config=`` takes
    a ready :class:`~lmcache_valkey.config.ClientConfig` instead of URL and
    options. Cluster configurations are refused: use
    :func:`lmcache_valkey.open_client`.
    """

    def __init__(self, url: str | None = None, *,
                 on_connect: Sequence[tuple[Any, ...]] = (), **options: Any) -> None:
        config = ClientConfig.from_url_or_config(url, options)
        if config.cluster:
            raise ConfigError(
                "this is a cluster configuration (valkey+cluster:// or cluster=true): use "
                "lmcache_valkey.open_client(...) or ValkeyClusterClient, not ValkeyClient")
        self._server: EmbeddedValkey | None = None
        if config.embedded:
            self._server = EmbeddedValkey().start()
            config = config.with_endpoint(self._server.host, self._server.port)
            log.info("no Valkey server configured: started an embedded one on %s",
                     config.endpoint)
        self.config = config
        self.closed = False
        self._stats = ClientStats()
        self._own_prefix = config.key_prefix
        self._ttl_ms = config.ttl_ms
        self._checksum = checksum_for(config.checksum)
        self._workers = Workers(config, self._stats, self._checksum, on_connect)
        self._loop_queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CompletionQueue] = \
            weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        snap = self._stats.snapshot(self.config.endpoint)
        # The per-server GET and SET depths (server_profile.py), once a connect
        # learned them.
        server = (f", server={snap.server!r}, get_inflight_bytes={snap.get_inflight_bytes}, "
                  f"set_inflight_bytes={snap.set_inflight_bytes}") if snap.server else ""
        return (f"ValkeyClient({self.config.redacted_url()}, key_prefix={self._own_prefix!r}, "
                f"ttl_s={self.config.ttl_s}, num_connections={self.config.num_connections}"
                f"{server}, {state})")

    @property
    def embedded_server(self) -> EmbeddedValkey | None:
        """The server this client started, if it started one."""
        return self._server

    def stats(self) -> StatsSnapshot:
        """This client's counters so far: keys per outcome, errors by kind,
        value bytes, batch latency histogram, connects (see
        :mod:`lmcache_valkey.observability.stats`). ``print()`` it, or ``.to_dict()``."""
        return self._stats.snapshot(self.config.endpoint)

    # -- batches -----------------------------------------------------------

    def _start(self, op: Operation, bkeys: list[bytes], nbufs: list[Any] | None,
               completion: CompletionQueue | None, token: Any,
               caller_waits: bool = False) -> Future[BatchResult]:
        if nbufs is not None:
            sizes = [buffer_nbytes(b) for b in nbufs]
            parts = min(len(self._workers), max(1, sum(sizes) // _MIN_TILE_BYTES))
        else:
            sizes = [1] * len(bkeys)
            parts = min(len(self._workers), max(1, len(bkeys) // _MIN_TILE_KEYS))
        job = BatchJob(op, len(bkeys), completion, token, self._stats, sizes, pending=1)
        if not bkeys:
            job.part_done(range(0), None, None)
            return job.future
        ranges = split_by_bytes(sizes, parts)
        job.pending = len(ranges)
        args = op.args(self._ttl_ms)
        self._workers.submit_tiles([
            Tile(job, a, bkeys[a:b], None if nbufs is None else nbufs[a:b], args)
            for a, b in ranges], caller_waits)
        return job.future

    def submit_asking(self, op: Operation, keys: Sequence[Key],
                      buffers: Sequence[Buffer] | None) -> Future[BatchResult]:
        """Run each key as ``ASKING`` + a one-key batch of `op`, on one
        connection, after the batches queued there: how a cluster follows an
        ``-ASK`` redirection to this node (``ASKING`` lets only the command
        right after it in). Values are sealed and checked as in any batch;
        these batches are not counted in :meth:`stats`. A connection error
        carries the keys done before it as ``partial``."""
        bkeys, nbufs = self._prepare(keys, buffers)
        args = op.args(self._ttl_ms)
        checksum = self._checksum

        def run(conn: Connection) -> BatchResult:
            result = BatchResult([op.failed_value] * len(bkeys))
            for j, key in enumerate(bkeys):
                try:
                    conn.native.execute("ASKING")
                    outcome = run_batch(conn.native, op, [key],
                                        None if nbufs is None else [nbufs[j]], args, checksum)
                except ServerReplyError as e:
                    result.errors[j] = e
                    continue
                except ValkeyConnectionError as e:
                    e.partial = result
                    raise
                merge_outcome(result, range(j, j + 1), outcome)
            return result

        return self.submit_call(run)

    # -- control -----------------------------------------------------------

    def execute(self, *args: Any) -> Any:
        """Run one command (not prefixed) on the first connection; returns
        the decoded reply. For control commands (PING, INFO, CONFIG ...)."""
        if self.closed:
            raise ClientClosedError("client is closed")
        return self._workers.first.call(lambda conn: conn.native.execute(*args))

    def submit_call(self, fn: Callable[[Connection], Any]) -> Future[Any]:
        """Run ``fn(connection)`` on one connection's worker thread (round
        robin), after the batches queued there; the future holds its result.
        For slow paths that need a raw connection (a cluster's ASKING)."""
        if self.closed:
            raise ClientClosedError("client is closed")
        return self._workers.next().submit_call(fn)

    def ping(self) -> bool:
        return self.execute("PING") == "PONG"

    def execute_on_key(self, key: bytes, *args: Any) -> Any:
        """Run a command about `key` (a full, prefixed key name) where that
        key lives: here, the one server; see ValkeyClusterClient."""
        return self.execute(*args)

    def scan(self, cursor: str = "0", match: bytes = b"*",
             count: int = 1000) -> tuple[str, list[bytes]]:
        """One ``SCAN`` step: (next cursor, key names). Start and end at
        ``"0"``. `match` is a raw glob over full key names (not prefixed)."""
        nxt, names = self.execute("SCAN", cursor, "MATCH", match, "COUNT", count)
        return _cursor_text(nxt), list(names)

    def connect(self) -> None:
        """Open every connection now (a PING on each) instead of on first
        use, so the first batch does not pay for connects and handshakes.
        Raises what a failed connect raises."""
        if self.closed:
            raise ClientClosedError("client is closed")
        for w in self._workers:
            w.call(lambda conn: conn.native.execute("PING"))

    def close(self) -> None:
        """Stop the workers. Batches still running fail with
        ClientClosedError; none is reported as success."""
        if self.closed:
            return
        self.closed = True
        self._workers.close()
        self._close_loop_queues()
        if self._server is not None:
            self._server.close()


def _cursor_text(cursor: Any) -> str:
    return cursor.decode() if isinstance(cursor, bytes) else str(cursor)
