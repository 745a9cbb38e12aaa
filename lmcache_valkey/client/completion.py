"""Completion through an eventfd.

A :class:`CompletionQueue` collects finished batches and makes its eventfd
readable, so any poller — asyncio's ``add_reader``, ``selectors``, LMCache's
eventfd-driven L2 loop — wakes without polling. Plain threads need none of
this: ``concurrent.futures.Future.result()`` already sleeps on a condition.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
from concurrent.futures import Future
from typing import Any


class CompletionQueue:
    """Finished ``(future, token)`` pairs, announced through one eventfd."""

    def __init__(self) -> None:
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._done: collections.deque[tuple[Future[Any], Any]] = collections.deque()
        # close() may run on another thread than put() (e.g. when an event
        # loop is collected): never write to an fd number already reused.
        self._lock = threading.Lock()

    def fileno(self) -> int:
        return self._fd

    def put(self, future: Future[Any], token: Any = None) -> None:
        """Called by a worker thread once `future` is resolved."""
        self._done.append((future, token))
        with self._lock, contextlib.suppress(OSError):
            if self._fd >= 0:  # closed: nobody is waiting
                os.eventfd_write(self._fd, 1)

    def drain(self) -> list[tuple[Future[Any], Any]]:
        """Clear the eventfd and return every pair finished so far.

        The counter is read before the deque is emptied, so a pair that lands
        in between leaves the fd readable: at worst one empty wake-up, never a
        lost completion."""
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._fd)
        out = []
        while self._done:
            out.append(self._done.popleft())
        return out

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
