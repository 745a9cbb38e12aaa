"""What ValkeyClient and ValkeyClusterClient share.

Both take a batch the same way (key names, buffers; :meth:`_prepare`) and
offer it the same ways: a ``concurrent.futures.Future`` (``submit_*``), a
blocking call (``batch_*``) and an await (``abatch_*``), plus the context
managers. A subclass runs the prepared batch (``_start``).
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from ..config import ClientConfig
from ..errors import ClientClosedError, ConfigError
from ..protocol.buffers import Buffer, as_native_buffer
from ..protocol.operations import DELETE, EXISTS, GET, SET, TOUCH, Operation
from .batch_result import BatchResult
from .completion import CompletionQueue

Key = str | bytes

_C = TypeVar("_C", bound="BatchClientBase")


def key_bytes(keys: Sequence[Key], prefix: bytes = b"") -> list[bytes]:
    """Key names as the engine takes them: bytes, with `prefix` in front."""
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


class BatchClientBase:
    """The batch calls in their three forms, over ``_start``; the
    context managers (which call ``close``)."""

    config: ClientConfig
    closed: bool
    _loop_queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CompletionQueue]

    #: What this client puts in front of every key itself (a cluster client
    #: leaves the prefix to its node clients).
    _own_prefix = b""

    def _start(self, op: Operation, keys: list[bytes], buffers: list[Any] | None,
               completion: CompletionQueue | None, token: Any,
               caller_waits: bool = False) -> Future[BatchResult]:
        """Run a prepared batch (keys with this client's own prefix, buffers
        as the engine pins them). ``caller_waits``: the calling thread
        blocks on the future right after, so it may run part of the batch
        itself (a client that can't ignores it)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def submit_op(self, op: Operation, keys: Sequence[Key],
                  buffers: Sequence[Buffer] | None = None, *,
                  completion: CompletionQueue | None = None,
                  token: Any = None) -> Future[BatchResult]:
        """Start a batch of any operation (lmcache_valkey.protocol.operations); the
        ``submit_*`` methods are its named forms."""
        bkeys, nbufs = self._prepare(keys, buffers)
        return self._start(op, bkeys, nbufs, completion, token)

    def _prepare(self, keys: Sequence[Key], buffers: Sequence[Buffer] | None
                 ) -> tuple[list[bytes], list[Any] | None]:
        """A submitted batch's keys as bytes (with this client's own prefix)
        and its buffers as the engine pins them; refused on a closed client."""
        if self.closed:
            raise ClientClosedError("client is closed")
        bkeys = key_bytes(keys, self._own_prefix)
        if buffers is None:
            return bkeys, None
        if len(buffers) != len(bkeys):
            raise ConfigError(f"{len(bkeys)} keys but {len(buffers)} buffers")
        return bkeys, [as_native_buffer(b) for b in buffers]

    # -- futures -----------------------------------------------------------

    def submit_batch_get_into(self, keys: Sequence[Key], buffers: Sequence[Buffer], *,
                              completion: CompletionQueue | None = None,
                              token: Any = None) -> Future[BatchResult]:
        """Start GETs into caller buffers. Each buffer is a writable
        C-contiguous buffer or a list of them (segments filled in order).
        The buffers must stay untouched until the future is done."""
        return self.submit_op(GET, keys, buffers, completion=completion, token=token)

    def submit_batch_set(self, keys: Sequence[Key], buffers: Sequence[Buffer], *,
                         completion: CompletionQueue | None = None,
                         token: Any = None) -> Future[BatchResult]:
        return self.submit_op(SET, keys, buffers, completion=completion, token=token)

    def submit_batch_exists(self, keys: Sequence[Key], *, refresh_ttl: bool = False,
                            completion: CompletionQueue | None = None,
                            token: Any = None) -> Future[BatchResult]:
        """``True`` per key present. With ``refresh_ttl`` and a configured
        TTL, each key found also gets its full TTL again (``PEXPIRE``, same
        single round trip), so it cannot expire between a lookup and the
        load that follows it."""
        return self.submit_op(self._exists_op(refresh_ttl), keys, None,
                              completion=completion, token=token)

    def _exists_op(self, refresh_ttl: bool) -> Operation:
        return TOUCH if refresh_ttl and self.config.ttl_ms > 0 else EXISTS

    def submit_batch_delete(self, keys: Sequence[Key], *,
                            completion: CompletionQueue | None = None,
                            token: Any = None) -> Future[BatchResult]:
        return self.submit_op(DELETE, keys, None, completion=completion, token=token)

    # -- blocking ----------------------------------------------------------

    # The calling thread would only wait, so it runs a part of the batch
    # itself on an idle connection (workers.py): no hand-off to a worker
    # thread and back, ~0.1 ms a batch here, a fifth of a 2 MiB batch.

    def _run_here(self, op: Operation, keys: Sequence[Key],
                  buffers: Sequence[Buffer] | None = None) -> BatchResult:
        bkeys, nbufs = self._prepare(keys, buffers)
        return self._start(op, bkeys, nbufs, None, None, caller_waits=True).result()

    def batch_get_into(self, keys: Sequence[Key], buffers: Sequence[Buffer]) -> BatchResult:
        """Bytes written per key; ``None`` for a miss, an error, or a value
        that does not fit its buffer (see ``errors`` / ``too_large``)."""
        return self._run_here(GET, keys, buffers)

    def batch_set(self, keys: Sequence[Key], buffers: Sequence[Buffer]) -> BatchResult:
        """``True`` per stored key (with the configured TTL)."""
        return self._run_here(SET, keys, buffers)

    def batch_exists(self, keys: Sequence[Key], *, refresh_ttl: bool = False) -> BatchResult:
        return self._run_here(self._exists_op(refresh_ttl), keys)

    def batch_delete(self, keys: Sequence[Key]) -> BatchResult:
        """Number of keys removed per key (1 or 0)."""
        return self._run_here(DELETE, keys)

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


def _remove_reader_and_close(loop: asyncio.AbstractEventLoop, q: CompletionQueue) -> None:
    loop.remove_reader(q.fileno())
    # close() joined the workers first, so every batch has ended and is in q;
    # deliver them now: removing the reader also cancels a wake-up already
    # due, and those awaits would never end.
    BatchClientBase._on_loop_completions(q)
    q.close()
