"""A batch in flight: its parts finish on different threads.

A :class:`Job` starts with every key failed (its operation's failed value:
until a part reports, no key counts as a success), merges each part's
outcome as it comes in, and resolves the batch's future when the last part
is in. :class:`ValkeyClient` cuts a batch into :class:`Tile` s, one per
connection (:func:`split_by_bytes`), and counts it in its stats
(:class:`BatchJob`); the cluster client's job (cluster/client.py) spreads
one over nodes.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from ..observability.stats import ClientStats
from ..protocol.operations import Operation
from .batch_result import BatchResult, Outcome, merge_outcome, resolve
from .completion import CompletionQueue

log = logging.getLogger(__name__)


class Job:
    """One submitted batch of `op` over `n` keys, finished by `pending` parts."""

    __slots__ = ("op", "future", "result", "exc", "lock", "pending", "completion", "token")

    def __init__(self, op: Operation, n: int, completion: CompletionQueue | None, token: Any,
                 pending: int = 0) -> None:
        self.op = op
        self.future: Future[BatchResult] = Future()
        self.future.set_running_or_notify_cancel()
        self.result = BatchResult([op.failed_value] * n)
        self.exc: BaseException | None = None
        self.lock = threading.Lock()
        self.pending = pending
        self.completion = completion
        self.token = token

    def hold(self) -> None:
        """One more part to wait for."""
        with self.lock:
            self.pending += 1

    def release(self) -> None:
        """A part is done; the last one resolves the future."""
        with self.lock:
            self.pending -= 1
            if self.pending:
                return
        self.finish()

    def part_done(self, idxs: Sequence[int], outcome: Outcome | None,
                  exc: BaseException | None) -> None:
        """A part of keys `idxs` ended with `outcome` (None: nothing known)
        and/or `exc` (the first one is the batch's)."""
        with self.lock:
            if outcome is not None:
                merge_outcome(self.result, idxs, outcome)
            if exc is not None and self.exc is None:
                self.exc = exc
        self.release()

    def failure(self) -> BaseException | None:
        """The exception the batch's future raises, if any."""
        return self.exc

    def finish(self) -> None:
        resolve(self.future, self.result, self.failure(), self.completion, self.token)


class BatchJob(Job):
    """A batch on one server, counted in its client's stats once done."""

    __slots__ = ("stats", "sizes", "started")

    def __init__(self, op: Operation, n: int, completion: CompletionQueue | None, token: Any,
                 stats: ClientStats | None, sizes: list[int] | None, pending: int) -> None:
        super().__init__(op, n, completion, token, pending)
        self.stats = stats
        self.sizes = sizes
        self.started = time.perf_counter()

    def finish(self) -> None:
        if self.stats is not None and self.result:
            try:
                self.stats.record_batch(self.op, self.result, self.result.errors,
                                        self.result.too_large, self.exc,
                                        time.perf_counter() - self.started, self.sizes)
            except Exception:  # a counting bug must never leave a future unresolved
                log.exception("lmcache_valkey: recording batch stats failed")
        super().finish()


@dataclasses.dataclass(slots=True)
class Tile:
    """The contiguous keys [start, start + len(keys)) of a job, for one connection."""

    job: Job
    start: int
    keys: list[bytes]
    buffers: list[Any] | None
    args: tuple[Any, ...]  # the engine method's, after keys and buffers

    def done(self, outcome: Any, exc: BaseException | None) -> None:
        """The engine's outcome (or a failed batch's ``partial``: the same
        shape, or None) and the exception that ended it, if any."""
        self.job.part_done(range(self.start, self.start + len(self.keys)), outcome, exc)


def split_by_bytes(sizes: Sequence[int], parts: int) -> list[tuple[int, int]]:
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
