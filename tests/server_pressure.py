"""Memory pressure on a real server: maxmemory reached, keys evicted.

The faults are the server's own: a dedicated valkey-server with a small
``maxmemory`` answers ``-OOM`` (``noeviction``) or evicts keys
(``allkeys-lru``) while fillers are written beside the keys under test.
Which key LRU evicts first is made deterministic without faking anything:
``RESTORE ... IDLETIME`` gives one key an old access time (and the fillers a
less old one), so the server's own sampling picks it first and fillers next
(``maxmemory-samples 64`` sees nearly every key of these small databases).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

valkey = pytest.importorskip("valkey")

MAXMEMORY = "3mb"     # ~2 MiB above an empty valkey-server's own use
# Memory freed at once (not by a background thread), so that room made by a
# FLUSHALL or an eviction is there for the very next command.
_SYNC_FREE = {"lazyfree-lazy-user-flush": "no", "lazyfree-lazy-user-del": "no",
              "lazyfree-lazy-eviction": "no"}
NOEVICTION = {"maxmemory": MAXMEMORY, "maxmemory-policy": "noeviction", **_SYNC_FREE}
ALLKEYS_LRU = {"maxmemory": MAXMEMORY, "maxmemory-policy": "allkeys-lru",
               "maxmemory-samples": "64", **_SYNC_FREE}
FILLER = b"\xf1" * 32768
_fillers = itertools.count()


def admin(server: Any) -> Any:
    """valkey-py on `server`: an independent view of what the server holds."""
    return valkey.Valkey(host=server.host, port=server.port)


def own_server(make_server: Any, config: dict[str, str]) -> tuple[Any, Any]:
    """A server of the test's own with this memory config (``make_server``
    the fixture), and its admin connection."""
    server = make_server(config=config)
    return server, admin(server)


def fill_until_oom(r: Any, limit: int = 10_000) -> int:
    """Write fillers until the server refuses even small ones with OOM (a
    refused large SET frees its own request buffer, leaving room for small
    ones); returns how many fit."""
    n = 0
    for size in (len(FILLER), 1024, 64):
        for _ in range(limit):
            try:
                r.set(f"filler:{next(_fillers)}", FILLER[:size])
            except valkey.exceptions.ResponseError as e:  # OutOfMemoryError (valkey-py >= 6)
                assert str(e).startswith("OOM") or type(e).__name__ == "OutOfMemoryError", e
                break
            n += 1
        else:
            raise AssertionError(f"no OOM after {limit} fillers: is maxmemory set?")
    return n


def make_room(r: Any) -> None:
    """Room again after `fill_until_oom`: drop every key and lift maxmemory
    well above what the next writes need. Emptying alone leaves them at the
    mercy of the clients' query buffers (a pipelined 192 KiB SET grows a
    connection's buffer to twice that, and it counts toward maxmemory): with
    ~2 MiB of headroom a three-page batch was refused on a loaded CI machine."""
    r.flushall()
    r.config_set("maxmemory", "64mb")


def evictions(r: Any) -> int:
    return int(r.info("stats")["evicted_keys"])


def evict(r: Any, key: bytes | str, limit: int = 10_000) -> int:
    """Write fillers until the server's allkeys-lru eviction removes `key`;
    returns the evictions it took.

    `key` is made the least recently used key, and the fillers the next
    ones (restored with a smaller IDLETIME), so that every other eviction the
    fillers cause takes a filler, never another key under test.
    """
    r.restore(key, max(r.pttl(key), 0), r.dump(key), replace=True, idletime=1_000_000)
    template = f"filler:{next(_fillers)}"
    r.set(template, FILLER)
    payload = r.dump(template)
    before = evictions(r)
    for _ in range(limit):
        if not r.exists(key):
            return evictions(r) - before
        r.restore(f"filler:{next(_fillers)}", 0, payload, idletime=1_000)
    raise AssertionError(f"{key!r} not evicted after {limit} fillers")


def pressure(r: Any, evicted_at_least: int, limit: int = 10_000) -> None:
    """Write fillers until the server has evicted `evicted_at_least` keys
    (its own choice of keys: approximate LRU)."""
    target = evictions(r) + evicted_at_least
    for _ in range(limit):
        if evictions(r) >= target:
            return
        r.set(f"filler:{next(_fillers)}", FILLER)
    raise AssertionError(f"fewer than {evicted_at_least} evictions after {limit} fillers")
