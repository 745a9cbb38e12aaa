"""What a batch call returns: per-key results, and the means to build them.

A batch's parts (a client's tiles, a cluster's per-node groups, the keys
that follow an ASK) finish on different threads; each part's engine outcome
``(values, errors, too_large)`` is merged at its keys' positions into one
:class:`BatchResult`, and the batch's future is resolved with it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from concurrent.futures import Future
from typing import Any

from ..errors import ServerReplyError, ValkeyConnectionError
from .completion import CompletionQueue

#: An engine's per-batch outcome: values, server errors and too-large sizes,
#: both by the key's index in that batch.
Outcome = tuple[list[Any], dict[int, Any], dict[int, int]]


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


def merge_outcome(result: BatchResult, idxs: Sequence[int], outcome: Outcome,
                  skip: Collection[int] = ()) -> None:
    """Put a part's `outcome` into `result`: the part's key j is the batch's
    key ``idxs[j]``; keys `skip` (by j) are left as they are (a cluster key
    that is retried elsewhere)."""
    values, errors, too_large = outcome
    if not skip and type(idxs) is range:  # a contiguous tile: copied in C
        result[idxs.start:idxs.start + len(values)] = values
    else:
        for j, (i, value) in enumerate(zip(idxs, values, strict=False)):
            if j not in skip:
                result[i] = value
    for j, err in errors.items():
        if j not in skip:
            result.errors[idxs[j]] = err
    for j, size in too_large.items():
        if j not in skip:
            result.too_large[idxs[j]] = size


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
