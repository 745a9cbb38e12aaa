"""Host staging for KV blocks, and the streams that move blocks through it.

The worker never lets a hook wait on the network. Block bytes leave and
enter the KV cache through a **staging pool** allocated once at
``register_kv_caches``: ``n_chunks`` chunks of ``chunk_blocks`` block-sized
rows each, pinned when the KV cache is on a GPU. A save copies its blocks
into a chunk off the step (a memcpy on a copier thread on CPU; a
stream-ordered device-to-host copy on GPU) and sends from the chunk in the
background; a
staged load receives into a chunk in the background, then one host-to-device
copy per chunk scatters the rows into their blocks. When no chunk is free a
save is dropped (and counted) and a load waits its turn: the pool is the
bound on the backlog.

On a GPU the copies run on side streams and finish through CUDA events:
nothing calls a device-wide synchronize and no hook waits for a copy, except
that a step whose scheduler freed blocks orders its compute after the
device-to-host copies still reading them (a GPU-side ``wait_event``, not a
host wait).

:class:`EmulatedStreams` gives the same interface on CPU — a thread per
stream runs the copies later, in order, and events are set when the thread
reaches them — so the GPU path's ordering runs and is tested in CI
(``staging: "force"``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from ..errors import ConfigError


class StagingPool:
    """Chunks of block-sized rows, allocated once; a free list of chunk indices."""

    def __init__(self, block_nbytes: int, staging_bytes: int, chunk_bytes: int, *,
                 pin: bool) -> None:
        if block_nbytes <= 0:
            raise ConfigError("ValkeyConnector: KV blocks have no bytes")
        self.block_nbytes = block_nbytes
        self.chunk_blocks = max(1, chunk_bytes // block_nbytes)
        chunk_nbytes = self.chunk_blocks * block_nbytes
        self.n_chunks = staging_bytes // chunk_nbytes
        if self.n_chunks < 1:
            raise ConfigError(
                f"ValkeyConnector: staging_bytes={staging_bytes} is smaller than one chunk "
                f"({self.chunk_blocks} blocks of {block_nbytes} bytes): raise staging_bytes")
        rows = self.n_chunks * self.chunk_blocks
        self.memory = torch.empty((rows, block_nbytes), dtype=torch.uint8, pin_memory=pin)
        # Pre-fault: first touch of fresh memory runs at page-fault speed, not memcpy speed.
        self.memory.view(-1)[::4096].zero_()
        self._host = self.memory.numpy()
        self._free = list(range(self.n_chunks - 1, -1, -1))
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self.memory.numel()

    def take(self) -> int | None:
        with self._lock:
            return self._free.pop() if self._free else None

    def give_back(self, chunk: int) -> None:
        with self._lock:
            self._free.append(chunk)

    def free_chunks(self) -> int:
        with self._lock:
            return len(self._free)

    def rows(self, chunk: int, n: int) -> torch.Tensor:
        """The first ``n`` rows of a chunk: ``[n, block_nbytes]`` uint8."""
        start = chunk * self.chunk_blocks
        return self.memory[start:start + n]

    def host_rows(self, chunk: int, n: int) -> list[Any]:
        """The same rows as numpy views: what the client sends from / receives into."""
        start = chunk * self.chunk_blocks
        return list(self._host[start:start + n])


# -- streams ---------------------------------------------------------------------


class CudaStreams:
    """Side streams and events on a CUDA device (no host synchronisation)."""

    emulated = False

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.load_stream = torch.cuda.Stream(device=device)
        self.save_stream = torch.cuda.Stream(device=device)

    def run(self, stream: Any, fn: Callable[[], None], *, after_compute: bool) -> Any:
        """Enqueue ``fn``'s copies on ``stream`` (after the compute stream's
        work so far when ``after_compute``); returns an event marking their end."""
        if after_compute:
            stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            fn()
            ev = torch.cuda.Event()
            ev.record(stream)
        return ev

    @staticmethod
    def done(event: Any) -> bool:
        return bool(event.query())

    def order_compute_after(self, event: Any) -> None:
        torch.cuda.current_stream(self.device).wait_event(event)

    @staticmethod
    def wait(event: Any) -> None:  # shutdown / sleep only, never in a step
        event.synchronize()

    def close(self) -> None:
        pass


class _Event:
    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = threading.Event()


class EmulatedStreams:
    """CPU stand-in for :class:`CudaStreams`: each stream is a thread that runs
    its work later, in order (``delay_s`` before each item widens the race
    windows in tests). The compute stream is the caller's thread, so
    "compute waits for an event" is a host wait on that event."""

    emulated = True

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.load_stream = self._start("load")
        self.save_stream = self._start("save")

    def _start(self, name: str) -> queue.SimpleQueue[Any]:
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=self._loop, args=(q,), name=f"valkey-emulated-{name}-stream",
                         daemon=True).start()
        return q

    def _loop(self, q: queue.SimpleQueue[Any]) -> None:
        while True:
            item = q.get()
            if item is None:
                return
            fn, ev = item
            if self.delay_s:
                time.sleep(self.delay_s)
            try:
                fn()
            finally:
                ev._set.set()

    def run(self, stream: Any, fn: Callable[[], None], *, after_compute: bool) -> _Event:
        # Compute (the caller) has already finished everything it enqueued.
        ev = _Event()
        stream.put((fn, ev))
        return ev

    @staticmethod
    def done(event: _Event) -> bool:
        return event._set.is_set()

    def order_compute_after(self, event: _Event) -> None:
        event._set.wait()

    @staticmethod
    def wait(event: _Event) -> None:
        event._set.wait()

    def close(self) -> None:
        self.load_stream.put(None)
        self.save_stream.put(None)
