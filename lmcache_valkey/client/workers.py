"""The connections of one server's client, each driven by its own thread.

A :class:`Worker` owns one connection and runs the tiles queued to it, one
after another, in the native engine (which releases the GIL for the whole
batch); :class:`Workers` is a client's set of them and what they share: the
configuration, the stats, the checksum, what the server is, and the
back-off state that a successful connect ends for all.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from ..config import ClientConfig
from ..errors import (
    AuthenticationError,
    ClientClosedError,
    ValkeyConnectionError,
    ValkeyError,
)
from ..observability.stats import ClientStats
from ..protocol.connection import Connection, open_connection
from ..protocol.operations import run_batch
from ..protocol.server_profile import ServerProfile
from .integrity import Checksum
from .jobs import Tile


class Workers:
    """A client's workers, round robin, and the state they share."""

    def __init__(self, config: ClientConfig, stats: ClientStats, checksum: Checksum | None,
                 on_connect: Sequence[tuple[Any, ...]]) -> None:
        self.config = config
        self.stats = stats
        self.checksum = checksum
        # Commands run on every new connection after its handshake (READONLY
        # for a cluster replica); a failure fails that connect.
        self.on_connect = [tuple(c) for c in on_connect]
        self.closed = False
        # Orders submissions against close(): an item queued after a worker
        # took its stop marker would never run, and its caller would wait
        # forever (found by the ASan job: batches racing close()).
        self.closing_lock = threading.Lock()
        self.connect_epoch = 0  # bumped by every successful connect (ends back-offs)
        self.server_profile: ServerProfile | None = None  # learned at the first connect
        self._all = [Worker(self, i) for i in range(config.num_connections)]
        self._next = itertools.count()

    def __len__(self) -> int:
        return len(self._all)

    def __iter__(self) -> Any:
        return iter(self._all)

    @property
    def first(self) -> Worker:
        return self._all[0]

    def next(self) -> Worker:
        """The next worker in turn."""
        return self._all[next(self._next) % len(self._all)]

    def submit_tiles(self, tiles: list[Tile], caller_waits: bool = False) -> None:
        """One tile per worker, starting at the next one in turn. With
        ``caller_waits`` (a blocking call) this thread runs the first tile
        itself on an idle worker's connection, after queueing the others."""
        first = next(self._next)
        order = [self._all[(first + j) % len(self._all)] for j in range(len(self._all))]
        here = next((w for w in order if w.claim()), None) if caller_waits else None
        if here is not None:
            order.remove(here)
            tiles, mine = tiles[1:], tiles[0]
        for worker, tile in zip(order, tiles, strict=False):  # tiles <= workers
            if not worker.submit(tile):
                tile.done(None, ClientClosedError("client is closed"))
        if here is not None:
            here.run_claimed(mine)

    def close(self) -> None:
        """Stop every worker: a running batch fails, queued ones fail with
        ClientClosedError."""
        with self.closing_lock:
            self.closed = True
        for w in self._all:
            w.abort()
            w.stop()
        for w in self._all:
            w.join(10.0)


class Worker:
    """One connection and the thread that drives it.

    The connection is used by one thread at a time, under ``_busy``: the
    worker's own, or a caller's that found it idle (:meth:`claim`) and runs
    its blocking batch here instead of waiting for a hand-off.

    A broken connection is dropped; the next tile reconnects. Failed connect
    attempts back off exponentially; during a back-off window tiles fail at
    once instead of piling up behind a dead server. A successful connect by
    any worker of the client ends every worker's back-off: the server is back.
    """

    def __init__(self, workers: Workers, index: int) -> None:
        self._workers = workers
        self._config = workers.config
        self._queue: queue.SimpleQueue[Tile | Callable[[], None] | None] = queue.SimpleQueue()
        self._conn: Connection | None = None
        self._backoff = 0.0
        self._retry_at = 0.0
        self._last_error: str = ""
        self._last_error_type: type[ValkeyError] = ValkeyConnectionError
        self._failed_epoch = -1
        self._connects = 0
        self._busy = threading.Lock()
        self._thread = threading.Thread(
            target=self._loop, name=f"lmcache-valkey-{index}", daemon=True)
        self._thread.start()

    def submit(self, item: Tile | Callable[[], None]) -> bool:
        """Queue `item` for this worker's thread; False (nothing queued) once
        the client is closed."""
        with self._workers.closing_lock:
            if self._workers.closed:
                return False
            self._queue.put(item)
            return True

    def stop(self) -> None:
        """Queue the stop marker: the thread ends after what is queued before
        it (tiles fail, the client being closed)."""
        self._queue.put(None)

    def claim(self) -> bool:
        """Take the connection for the calling thread, if nothing is running
        or queued on it; :meth:`run_claimed` gives it back."""
        if not self._queue.empty() or not self._busy.acquire(blocking=False):
            return False
        if self._queue.empty():
            return True
        self._busy.release()  # work arrived meanwhile: it goes first
        return False

    def run_claimed(self, tile: Tile) -> None:
        """Run `tile` on this thread (after :meth:`claim`)."""
        try:
            self._run(tile)
        finally:
            self._busy.release()

    def abort(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.abort()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _connection(self) -> Connection:
        if self._conn is not None:
            if not self._conn.native.failed and not self._conn.closed_while_idle():
                return self._conn
            # Replace it before the batch instead of failing the batch on it.
            self._drop_connection()
        shared = self._workers
        now = time.monotonic()
        if now < self._retry_at and self._failed_epoch == shared.connect_epoch:
            # Same error class as the failed attempt: wrong credentials stay an
            # AuthenticationError, without another AUTH reaching the server.
            raise self._last_error_type(
                f"{self._config.endpoint}: not connected ({self._last_error}); "
                f"next attempt in {self._retry_at - now:.2f}s")
        try:
            # The server is learned once per client (its first connect):
            # reconnects, often to a struggling server, add no round trip.
            conn = open_connection(self._config, shared.server_profile)
            shared.server_profile = conn.profile
            try:
                for command in shared.on_connect:  # e.g. READONLY on a replica
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
            self._failed_epoch = shared.connect_epoch
            shared.stats.record_connect_failure()
            raise
        shared.stats.record_connect(reconnect=self._connects > 0,
                                    server=str(self._conn.profile),
                                    inflight_bytes=self._conn.inflight_bytes,
                                    set_inflight_bytes=self._conn.set_inflight_bytes)
        self._connects += 1
        self._backoff = 0.0
        shared.connect_epoch += 1
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            with self._busy:
                if item is None:
                    self._drop_connection()
                    return
                if isinstance(item, Tile):
                    self._run(item)
                else:
                    item()  # control callables (run on this thread, e.g. execute)
            del item  # do not pin the tile's buffers while idle

    def _run(self, tile: Tile) -> None:
        if self._workers.closed:
            tile.done(None, ClientClosedError("client is closed"))
            return
        try:
            outcome = run_batch(self._connection().native, tile.job.op, tile.keys,
                                tile.buffers, tile.args, self._workers.checksum)
        except ValkeyConnectionError as e:
            self._drop_connection()
            if self._workers.closed:
                tile.done(None, ClientClosedError("client closed while the batch ran"))
            else:
                tile.done(e.partial, e)
        except BaseException as e:  # misuse (bad buffer), out of memory: fail the batch
            tile.done(None, e)
            if not isinstance(e, Exception) and threading.current_thread() is not self._thread:
                raise  # Ctrl-C in a caller running its batch here: stop, don't wait on
        else:
            tile.done(outcome, None)

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

        if not self.submit(run):
            fut.set_exception(ClientClosedError("client is closed"))
        return fut
