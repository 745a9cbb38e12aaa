"""ValkeyClient: the public façade.

Keys get the configured prefix, SETs the configured TTL. A batch is split
into contiguous tiles balanced by bytes, one per connection; each connection
is owned by one worker thread that runs its tile in the native engine with
the GIL released. Results come back as a :class:`BatchResult` (a list) through
a ``concurrent.futures.Future``, and, for asyncio, through an eventfd the
event loop watches.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from .buffers import Buffer, as_native_buffer, buffer_nbytes
from .completion import CompletionQueue
from .config import ClientConfig
from .connection import Connection, open_connection
from .embedded import EmbeddedValkey
from .errors import (
    AuthenticationError,
    ClientClosedError,
    ConfigError,
    ServerReplyError,
    ValkeyConnectionError,
    ValkeyError,
)
from .integrity import checksum_for
from .server_profile import ServerProfile
from .stats import ClientStats, StatsSnapshot

log = logging.getLogger(__name__)

Key = str | bytes

# Below these sizes a batch is not worth splitting across threads.
_MIN_TILE_BYTES = 256 * 1024
_MIN_TILE_KEYS = 64


class BatchResult(list):  # type: ignore[type-arg]
    """Per-key results, in key order, plus what went wrong per key.

    ``errors`` maps a key's index to the server's error reply for it
    (``-WRONGTYPE``, ``-OOM`` ...), or to an ``IntegrityError`` (code
    ``CHECKSUM``) for a value that failed the ``checksum`` option's check;
    ``too_large`` maps a GET's index to the
    stored length of a value that did not fit its destination (drained, not
    written). Those keys read as ``None``/``False`` in the list itself.
    """

    errors: dict[int, ServerReplyError]
    too_large: dict[int, int]

    def __init__(self, values: list[Any], errors: dict[int, ServerReplyError] | None = None,
                 too_large: dict[int, int] | None = None) -> None:
        super().__init__(values)
        self.errors = errors or {}
        self.too_large = too_large or {}

    def __repr__(self) -> str:
        extra = ""
        if self.errors:
            extra += f", errors={self.errors!r}"
        if self.too_large:
            extra += f", too_large={self.too_large!r}"
        return f"BatchResult({list.__repr__(self)}{extra})"


class _Job:
    """One submitted batch: its tiles finish on different threads."""

    __slots__ = ("future", "values", "errors", "too_large", "remaining", "exc", "lock",
                 "completion", "token", "stats", "method", "sizes", "started")

    def __init__(self, n: int, failed_value: Any, ntiles: int,
                 completion: CompletionQueue | None, token: Any,
                 stats: ClientStats | None = None, method: str = "",
                 sizes: list[int] | None = None) -> None:
        self.future: Future[BatchResult] = Future()
        self.future.set_running_or_notify_cancel()
        # Until a tile reports, every key counts as failed, never as success.
        self.values = [failed_value] * n
        self.errors: dict[int, ServerReplyError] = {}
        self.too_large: dict[int, int] = {}
        self.remaining = ntiles
        self.exc: BaseException | None = None
        self.lock = threading.Lock()
        self.completion = completion
        self.token = token
        # Recorded once, when the last tile is in (see lmcache_valkey.stats).
        self.stats = stats
        self.method = method
        self.sizes = sizes
        self.started = time.perf_counter()

    def tile_done(self, start: int, outcome: tuple[list[Any], dict, dict] | None,
                  exc: BaseException | None) -> None:
        with self.lock:
            if outcome is not None:
                values, errors, too_large = outcome
                self.values[start:start + len(values)] = values
                self.errors.update({start + i: e for i, e in errors.items()})
                self.too_large.update({start + i: n for i, n in too_large.items()})
            if exc is not None and self.exc is None:
                self.exc = exc
            self.remaining -= 1
            if self.remaining:
                return
        if self.stats is not None and self.values:
            self._record()
        resolve(self.future, BatchResult(self.values, self.errors, self.too_large), self.exc,
                self.completion, self.token)

    def _record(self) -> None:
        try:
            self.stats.record_batch(  # type: ignore[union-attr]
                self.method, self.values, self.errors, self.too_large, self.exc,
                time.perf_counter() - self.started, self.sizes)
        except Exception:  # a counting bug must never leave a future unresolved
            log.exception("lmcache_valkey: recording batch stats failed")


def resolve(future: Future[BatchResult], result: BatchResult, exc: BaseException | None,
            completion: CompletionQueue | None, token: Any) -> None:
    """Finish a batch's future (a connection error carries the per-key
    results as ``partial``), then announce it on `completion`."""
    if exc is not None:
        if isinstance(exc, ValkeyConnectionError):
            exc.partial = result
        future.set_exception(exc)
    else:
        future.set_result(result)
    if completion is not None:
        completion.put(future, token)


class _Tile:
    __slots__ = ("job", "start", "method", "keys", "buffers", "args")

    def __init__(self, job: _Job, start: int, method: str, keys: list[bytes],
                 buffers: list[Any] | None, args: tuple[Any, ...] = ()) -> None:
        self.job = job
        self.start = start
        self.method = method
        self.keys = keys
        self.buffers = buffers
        self.args = args


class _Worker:
    """One connection and the thread that drives it.

    A broken connection is dropped; the next tile reconnects. Failed connect
    attempts back off exponentially; during a back-off window tiles fail at
    once instead of piling up behind a dead server. A successful connect by
    any worker of the client ends every worker's back-off: the server is back.
    """

    def __init__(self, client: ValkeyClient, index: int) -> None:
        self._client = client
        self._config = client.config
        self._queue: queue.SimpleQueue[_Tile | Callable[[], None] | None] = queue.SimpleQueue()
        self._conn: Connection | None = None
        self._backoff = 0.0
        self._retry_at = 0.0
        self._last_error: str = ""
        self._last_error_type: type[ValkeyError] = ValkeyConnectionError
        self._failed_epoch = -1
        self._connects = 0
        self._thread = threading.Thread(
            target=self._loop, name=f"lmcache-valkey-{index}", daemon=True)
        self._thread.start()

    def submit(self, item: _Tile | Callable[[], None] | None) -> None:
        self._queue.put(item)

    def abort(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.abort()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _connection(self) -> Connection:
        if self._conn is not None:
            if not self._conn.closed_while_idle():
                return self._conn
            # Replace it before the batch instead of failing the batch on it.
            self._drop_connection()
        now = time.monotonic()
        if now < self._retry_at and self._failed_epoch == self._client._connect_epoch:
            # Same error class as the failed attempt: wrong credentials stay an
            # AuthenticationError, without another AUTH reaching the server.
            raise self._last_error_type(
                f"{self._config.endpoint}: not connected ({self._last_error}); "
                f"next attempt in {self._retry_at - now:.2f}s")
        try:
            # The server is learned once per client (its first connect):
            # reconnects, often to a struggling server, add no round trip.
            conn = open_connection(self._config, self._client._server_profile)
            self._client._server_profile = conn.profile
            try:
                for command in self._client._on_connect:  # e.g. READONLY on a replica
                    conn.native.execute(*command)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        except (ValkeyConnectionError, AuthenticationError) as e:
            # Refused credentials back off too: no storm of AUTHs while every
            # batch of a misconfigured deployment fails.
            self._last_error_type = type(e)
            self._backoff = min(max(self._backoff * 2, self._config.reconnect_backoff_s),
                                self._config.reconnect_backoff_max_s)
            self._retry_at = time.monotonic() + self._backoff
            self._last_error = str(e)
            self._failed_epoch = self._client._connect_epoch
            self._client._stats.record_connect_failure()
            raise
        self._client._stats.record_connect(reconnect=self._connects > 0,
                                           server=str(self._conn.profile),
                                           inflight_bytes=self._conn.inflight_bytes)
        self._connects += 1
        self._backoff = 0.0
        self._client._connect_epoch += 1
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._drop_connection()
                return
            if not isinstance(item, _Tile):
                item()  # control callables (run on this thread, e.g. execute)
                continue
            self._run(item)
            del item  # do not pin the tile's buffers while idle

    def _run(self, tile: _Tile) -> None:
        if self._client.closed:
            tile.job.tile_done(tile.start, None, ClientClosedError("client is closed"))
            return
        try:
            native = self._connection().native
            method = getattr(native, tile.method)
            if tile.buffers is None:
                outcome = method(tile.keys, *tile.args)
            elif self._client._checksum is not None:  # trailers added and checked here
                outcome = self._client._checksum.run(native, tile.method, tile.keys,
                                                     tile.buffers, tile.args)
            else:
                outcome = method(tile.keys, tile.buffers, *tile.args)
        except ValkeyConnectionError as e:
            self._drop_connection()
            if self._client.closed:
                tile.job.tile_done(tile.start, None,
                                   ClientClosedError("client closed while the batch ran"))
            else:
                tile.job.tile_done(tile.start, e.partial, e)
        except BaseException as e:  # misuse (bad buffer), out of memory: fail the batch
            tile.job.tile_done(tile.start, None, e)
        else:
            tile.job.tile_done(tile.start, outcome, None)

    def call(self, fn: Callable[[Connection], Any]) -> Any:
        """Run fn(connection) on this worker's thread; return its result."""
        return self.submit_call(fn).result()

    def submit_call(self, fn: Callable[[Connection], Any]) -> Future[Any]:
        """Queue fn(connection) on this worker's thread (after the tiles
        already queued); its result or exception lands in the future."""
        fut: Future[Any] = Future()

        def run() -> None:
            try:
                fut.set_result(fn(self._connection()))
            except ValkeyConnectionError as e:
                self._drop_connection()
                fut.set_exception(e)
            except BaseException as e:
                fut.set_exception(e)

        self.submit(run)
        return fut


def _split(sizes: Sequence[int], parts: int) -> list[tuple[int, int]]:
    """Cut [0, n) into at most `parts` contiguous ranges of about equal bytes."""
    n = len(sizes)
    if parts <= 1 or n <= 1:
        return [(0, n)]
    total = sum(sizes)
    ranges: list[tuple[int, int]] = []
    start = acc = 0
    for i, size in enumerate(sizes[:-1]):
        acc += size
        if acc * parts >= total * (len(ranges) + 1):  # crossed the next cut
            ranges.append((start, i + 1))
            start = i + 1
            if len(ranges) == parts - 1:
                break
    ranges.append((start, n))
    return ranges


_C = TypeVar("_C", bound="BatchClientBase")


class BatchClientBase:
    """What ValkeyClient and ValkeyClusterClient share: the blocking and
    asyncio forms of the batch calls, built on the ``submit_*`` methods a
    subclass defines, and the context managers (which call ``close``)."""

    _loop_queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CompletionQueue]

    def submit_batch_get_into(self, keys: Sequence[Key], buffers: Sequence[Buffer], *,
                              completion: CompletionQueue | None = None,
                              token: Any = None) -> Future[BatchResult]:
        raise NotImplementedError

    def submit_batch_set(self, keys: Sequence[Key], buffers: Sequence[Buffer], *,
                         completion: CompletionQueue | None = None,
                         token: Any = None) -> Future[BatchResult]:
        raise NotImplementedError

    def submit_batch_exists(self, keys: Sequence[Key], *, refresh_ttl: bool = False,
                            completion: CompletionQueue | None = None,
                            token: Any = None) -> Future[BatchResult]:
        raise NotImplementedError

    def submit_batch_delete(self, keys: Sequence[Key], *,
                            completion: CompletionQueue | None = None,
                            token: Any = None) -> Future[BatchResult]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- blocking ----------------------------------------------------------

    def batch_get_into(self, keys: Sequence[Key], buffers: Sequence[Buffer]) -> BatchResult:
        """Bytes written per key; ``None`` for a miss, an error, or a value
        that does not fit its buffer (see ``errors`` / ``too_large``)."""
        return self.submit_batch_get_into(keys, buffers).result()

    def batch_set(self, keys: Sequence[Key], buffers: Sequence[Buffer]) -> BatchResult:
        """``True`` per stored key (with the configured TTL)."""
        return self.submit_batch_set(keys, buffers).result()

    def batch_exists(self, keys: Sequence[Key], *, refresh_ttl: bool = False) -> BatchResult:
        return self.submit_batch_exists(keys, refresh_ttl=refresh_ttl).result()

    def batch_delete(self, keys: Sequence[Key]) -> BatchResult:
        """Number of keys removed per key (1 or 0)."""
        return self.submit_batch_delete(keys).result()

    # -- asyncio -----------------------------------------------------------

    def _loop_queue(self, loop: asyncio.AbstractEventLoop) -> CompletionQueue:
        q = self._loop_queues.get(loop)
        if q is None:
            q = CompletionQueue()
            loop.add_reader(q.fileno(), self._on_loop_completions, q)
            self._loop_queues[loop] = q
            # A loop that goes away before the client (asyncio.run per call)
            # must not leave its eventfd open for the life of the process.
            weakref.finalize(loop, q.close)
        return q

    @staticmethod
    def _on_loop_completions(q: CompletionQueue) -> None:
        for fut, afut in q.drain():
            if afut.done():  # the awaiting task was cancelled
                continue
            exc = fut.exception()
            if exc is not None:
                afut.set_exception(exc)
            else:
                afut.set_result(fut.result())

    async def _await(self, submit: Callable[..., Future[BatchResult]], *args: Any) -> BatchResult:
        loop = asyncio.get_running_loop()
        afut: asyncio.Future[BatchResult] = loop.create_future()
        submit(*args, completion=self._loop_queue(loop), token=afut)
        return await afut

    async def abatch_get_into(self, keys: Sequence[Key], buffers: Sequence[Buffer]) -> BatchResult:
        """asyncio form of :meth:`batch_get_into`. Cancelling the await does
        not stop the transfer: keep the buffers untouched until it ends."""
        return await self._await(self.submit_batch_get_into, keys, buffers)

    async def abatch_set(self, keys: Sequence[Key], buffers: Sequence[Buffer]) -> BatchResult:
        return await self._await(self.submit_batch_set, keys, buffers)

    async def abatch_exists(self, keys: Sequence[Key], *,
                            refresh_ttl: bool = False) -> BatchResult:
        return await self._await(functools.partial(self.submit_batch_exists,
                                                   refresh_ttl=refresh_ttl), keys)

    async def abatch_delete(self, keys: Sequence[Key]) -> BatchResult:
        return await self._await(self.submit_batch_delete, keys)

    def _close_loop_queues(self) -> None:
        for loop, q in list(self._loop_queues.items()):
            if not loop.is_closed():
                loop.call_soon_threadsafe(_remove_reader_and_close, loop, q)
            else:
                q.close()

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self: _C) -> _C:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


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
        # Commands run on every new connection after its handshake (READONLY
        # for a cluster replica); a failure fails that connect.
        self._on_connect = [tuple(c) for c in on_connect]
        self._server: EmbeddedValkey | None = None
        if config.embedded:
            self._server = EmbeddedValkey().start()
            config = config.with_endpoint(self._server.host, self._server.port)
            log.info("no Valkey server configured: started an embedded one on %s",
                     config.endpoint)
        self.config = config
        self.closed = False
        self._connect_epoch = 0  # bumped by every successful connect (ends back-offs)
        self._server_profile: ServerProfile | None = None  # learned at the first connect
        self._stats = ClientStats()
        self._prefix = config.key_prefix
        self._ttl_ms = config.ttl_ms
        self._checksum = checksum_for(config.checksum)
        self._workers = [_Worker(self, i) for i in range(config.num_connections)]
        self._next_worker = itertools.count()
        self._loop_queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CompletionQueue] = \
            weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        snap = self._stats.snapshot(self.config.endpoint)
        # The per-server GET depth (server_profile.py), once a connect learned it.
        server = f", server={snap.server!r}, get_inflight_bytes={snap.get_inflight_bytes}" \
            if snap.server else ""
        return (f"ValkeyClient({self.config.redacted_url()}, key_prefix={self._prefix!r}, "
                f"ttl_s={self.config.ttl_s}, num_connections={self.config.num_connections}"
                f"{server}, {state})")

    @property
    def embedded_server(self) -> EmbeddedValkey | None:
        """The server this client started, if it started one."""
        return self._server

    def stats(self) -> StatsSnapshot:
        """This client's counters so far: keys per outcome, errors by kind,
        value bytes, batch latency histogram, connects (see
        :mod:`lmcache_valkey.stats`). ``print()`` it, or ``.to_dict()``."""
        return self._stats.snapshot(self.config.endpoint)

    # -- keys and tiling ---------------------------------------------------

    def _keys(self, keys: Sequence[Key]) -> list[bytes]:
        prefix = self._prefix
        out = []
        for i, k in enumerate(keys):
            if isinstance(k, str):
                out.append(prefix + k.encode())
            elif isinstance(k, bytes):
                out.append(prefix + k)
            elif isinstance(k, (bytearray, memoryview)):
                out.append(prefix + bytes(k))
            else:
                raise TypeError(f"key #{i} must be str or bytes, not {type(k).__name__}")
        return out

    def _submit(self, method: str, keys: Sequence[Key], buffers: Sequence[Buffer] | None,
                failed_value: Any, args: tuple[Any, ...] = (),
                completion: CompletionQueue | None = None, token: Any = None
                ) -> Future[BatchResult]:
        if self.closed:
            raise ClientClosedError("client is closed")
        bkeys = self._keys(keys)
        nbufs: list[Any] | None = None
        if buffers is not None:
            if len(buffers) != len(bkeys):
                raise ConfigError(f"{len(bkeys)} keys but {len(buffers)} buffers")
            nbufs = [as_native_buffer(b) for b in buffers]
            sizes = [buffer_nbytes(b) for b in nbufs]
            parts = min(len(self._workers), max(1, sum(sizes) // _MIN_TILE_BYTES))
        else:
            sizes = [1] * len(bkeys)
            parts = min(len(self._workers), max(1, len(bkeys) // _MIN_TILE_KEYS))
        job = _Job(len(bkeys), failed_value, 1, completion, token, self._stats, method, sizes)
        if not bkeys:
            job.tile_done(0, None, None)
            return job.future
        ranges = _split(sizes, parts)
        job.remaining = len(ranges)
        first = next(self._next_worker)
        for j, (a, b) in enumerate(ranges):
            tile = _Tile(job, a, method, bkeys[a:b], None if nbufs is None else nbufs[a:b], args)
            self._workers[(first + j) % len(self._workers)].submit(tile)
        return job.future

    # -- futures -----------------------------------------------------------

    def submit_batch_get_into(self, keys: Sequence[Key], buffers: Sequence[Buffer], *,
                              completion: CompletionQueue | None = None,
                              token: Any = None) -> Future[BatchResult]:
        """Start GETs into caller buffers. Each buffer is a writable
        C-contiguous buffer or a list of them (segments filled in order).
        The buffers must stay untouched until the future is done."""
        return self._submit("batch_get_into", keys, buffers, None,
                            completion=completion, token=token)

    def submit_batch_set(self, keys: Sequence[Key], buffers: Sequence[Buffer], *,
                         completion: CompletionQueue | None = None,
                         token: Any = None) -> Future[BatchResult]:
        return self._submit("batch_set", keys, buffers, False, (self._ttl_ms,),
                            completion=completion, token=token)

    def submit_batch_exists(self, keys: Sequence[Key], *, refresh_ttl: bool = False,
                            completion: CompletionQueue | None = None,
                            token: Any = None) -> Future[BatchResult]:
        """``True`` per key present. With ``refresh_ttl`` and a configured
        TTL, each key found also gets its full TTL again (``PEXPIRE``, same
        single round trip), so it cannot expire between a lookup and the
        load that follows it."""
        if refresh_ttl and self._ttl_ms > 0:
            return self._submit("batch_touch", keys, None, False, (self._ttl_ms,),
                                completion=completion, token=token)
        return self._submit("batch_exists", keys, None, False,
                            completion=completion, token=token)

    def submit_batch_delete(self, keys: Sequence[Key], *,
                            completion: CompletionQueue | None = None,
                            token: Any = None) -> Future[BatchResult]:
        return self._submit("batch_delete", keys, None, 0, completion=completion, token=token)

    # -- control -----------------------------------------------------------

    def execute(self, *args: Any) -> Any:
        """Run one command (not prefixed) on the first connection; returns
        the decoded reply. For control commands (PING, INFO, CONFIG ...)."""
        if self.closed:
            raise ClientClosedError("client is closed")
        return self._workers[0].call(lambda conn: conn.native.execute(*args))

    def submit_call(self, fn: Callable[[Connection], Any]) -> Future[Any]:
        """Run ``fn(connection)`` on one connection's worker thread (round
        robin), after the batches queued there; the future holds its result.
        For slow paths that need a raw connection (a cluster's ASKING)."""
        if self.closed:
            raise ClientClosedError("client is closed")
        return self._workers[next(self._next_worker) % len(self._workers)].submit_call(fn)

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
        for w in self._workers:
            w.abort()
            w.submit(None)
        for w in self._workers:
            w.join(10.0)
        self._close_loop_queues()
        if self._server is not None:
            self._server.close()



def _cursor_text(cursor: Any) -> str:
    return cursor.decode() if isinstance(cursor, bytes) else str(cursor)


def _remove_reader_and_close(loop: asyncio.AbstractEventLoop, q: CompletionQueue) -> None:
    loop.remove_reader(q.fileno())
    # close() joined the workers first, so every batch has ended and is in q;
    # deliver them now: removing the reader also cancels a wake-up already
    # due, and those awaits would never end.
    BatchClientBase._on_loop_completions(q)
    q.close()
