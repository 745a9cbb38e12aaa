"""Delete the keys under one prefix, and nothing else, on a server that other
consumers share (``lmcache-valkey delete-prefix``).

A shared Valkey holds the KV cache beside other people's data (embeddings,
sessions, Ray state); ``FLUSHALL``/``FLUSHDB`` would take theirs too, so this
never sends them. It walks the prefix with ``SCAN ... MATCH`` (the prefix's
glob characters escaped, so ``kv:*`` means the literal prefix) and removes
each step's names with ``UNLINK`` (freed by a background thread, so the
server does not stall on large values), one bounded batch at a time: no
command the server runs is bigger than ``batch`` keys, and other clients are
served between batches. Keys written under the prefix while it runs may
survive; ``remaining`` (a second, counting walk) says how many.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator
from typing import Any

from .prefix_scan import PrefixScan

DEFAULT_BATCH = 500


@dataclasses.dataclass(frozen=True)
class DeleteReport:
    prefix: str
    dry_run: bool
    matched: int  # names the walk returned (deduplicated)
    deleted: int  # keys UNLINK removed (0 on a dry run)
    batches: int  # UNLINK commands sent
    remaining: int | None  # keys under the prefix after the run (None: not counted)

    def __str__(self) -> str:
        if self.dry_run:
            return f"dry run: {self.matched} keys under prefix {self.prefix!r} would be deleted"
        left = "" if self.remaining is None else f"; {self.remaining} left under the prefix"
        return (f"deleted {self.deleted} of {self.matched} keys under prefix {self.prefix!r} "
                f"in {self.batches} UNLINK batches{left}")


def delete_prefix(client: Any, prefix: bytes | str, *, batch: int = DEFAULT_BATCH,
                  dry_run: bool = False, progress: Callable[[int], None] | None = None,
                  recount: bool = True) -> DeleteReport:
    """UNLINK every key whose name starts with `prefix` (a full key name
    prefix: the client's own ``key_prefix`` is not added).

    `progress(n)` is called after each batch with the names it held. With
    `dry_run` nothing is deleted: the keys are counted. An empty prefix is
    refused -- that would be every key of every consumer.
    """
    raw = prefix.encode() if isinstance(prefix, str) else bytes(prefix)
    if not raw:
        raise ValueError("refusing to delete under an empty prefix: that is every key "
                         "(this never runs FLUSHALL/FLUSHDB)")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, not {batch}")
    seen: set[bytes] = set()  # SCAN may return a name twice
    deleted = batches = 0
    for names in _batches(PrefixScan(client, raw, count=batch), batch):
        fresh = [n for n in names if n not in seen]
        seen.update(fresh)
        if fresh and not dry_run:
            deleted += _unlink(client, fresh)
            batches += 1
        if progress is not None:
            progress(len(fresh))
    remaining = None
    if recount and not dry_run:
        remaining = sum(len(names) for names in PrefixScan(client, raw))
    return DeleteReport(raw.decode("utf-8", "backslashreplace"), dry_run, len(seen), deleted,
                        batches, remaining)


def _batches(scan: PrefixScan, size: int) -> Iterator[list[bytes]]:
    """The scan's names regrouped into lists of at most `size` (SCAN's COUNT
    is a hint: one step may return more)."""
    for names in scan:
        for i in range(0, len(names), size):
            yield names[i:i + size]


def _unlink(client: Any, names: list[bytes]) -> int:
    if not hasattr(client, "execute_on_all"):  # one server: one command per batch
        return int(client.execute("UNLINK", *names))
    # A cluster takes a multi-key command only within one hash slot.
    from ..cluster.slots import key_slot

    by_slot: dict[int, list[bytes]] = {}
    for n in names:
        by_slot.setdefault(key_slot(n), []).append(n)
    return sum(int(client.execute_on_key(group[0], "UNLINK", *group))
               for group in by_slot.values())


def tqdm_progress(desc: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    """(advance, close) of a progress bar on stderr: tqdm when installed,
    else a line every 10 000 keys."""
    try:
        from tqdm import tqdm
    except ImportError:
        done = [0]

        def advance(n: int) -> None:
            before, done[0] = done[0], done[0] + n
            if before // 10_000 != done[0] // 10_000:
                print(f"{desc}: {done[0]} keys", file=sys.stderr, flush=True)

        return advance, lambda: None
    bar = tqdm(desc=desc, unit=" keys", file=sys.stderr)
    return bar.update, bar.close
