"""The key names under one prefix: the package's one ``SCAN ... MATCH`` loop.

Everything that walks a prefix goes through :class:`PrefixScan`: the
statistics (:mod:`~lmcache_valkey.observability.server_stats`), ``delete-prefix`` and
SGLang's ``clear`` (:mod:`~lmcache_valkey.client.prefix_delete`), the LMCache
connector's ``list`` and the L2 adapter's paged ``list_l2_keys``. ``SCAN``
never blocks the server the way ``KEYS`` does, and the prefix's glob
characters are escaped, so ``kv:*`` means the literal prefix ``kv:*``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: Keys the server examines per SCAN step unless told otherwise (a hint).
DEFAULT_COUNT = 1000


def glob_escape(raw: bytes) -> bytes:
    """`raw` as a literal in a SCAN MATCH pattern (``*?[]\\`` escaped)."""
    out = bytearray()
    for b in raw:
        if b in b"*?[]\\":
            out += b"\\"
        out.append(b)
    return bytes(out)


class PrefixScan:
    """The key names under `prefix`, one ``SCAN`` step's batch at a time.

    ``for names in PrefixScan(client, b"kv:", limit=10_000): ...`` --
    `limit` bounds the keys the server *examines* (steps of ``count``), not
    the names returned; ``None`` walks the whole keyspace. After the loop,
    ``truncated`` says whether the bound stopped it before the end, and
    ``cursor`` is where a later walk resumes (``"0"``: the walk ended), also
    after a ``break``: a caller can page through a keyspace with it. A batch
    may be empty, and (SCAN's contract) a key may come twice; a key present
    for the whole walk always comes. Works for a ValkeyClient and a cluster
    client (its ``scan`` walks every primary in turn, with ``node:N``
    cursors).
    """

    def __init__(self, client: Any, prefix: bytes, limit: int | None = None,
                 count: int = DEFAULT_COUNT, cursor: str = "0") -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"scan_limit must be >= 1, not {limit}")
        if count < 1:
            raise ValueError(f"count must be >= 1, not {count}")
        self._client = client
        self._match = glob_escape(prefix) + b"*"
        self._count = count if limit is None else min(count, limit)
        self._steps = None if limit is None else -(-limit // self._count)
        self.cursor = cursor
        self.truncated = False

    def __iter__(self) -> Iterator[list[bytes]]:
        step = 0
        while self._steps is None or step < self._steps:
            # Updated before the yield: a caller that breaks out has it.
            self.cursor, names = self._client.scan(self.cursor, self._match, self._count)
            step += 1
            yield names
            if self.cursor == "0":
                return
        self.truncated = True
