"""Facts about the server(s) a client talks to: memory, clients, evictions,
and how many keys sit under the client's prefix.

``INFO`` gives the server's own counters (one call per primary for a
cluster). Keys under the prefix come from a bounded ``SCAN``: it examines
at most about ``scan_limit`` keys of the keyspace (``COUNT`` per call ×
calls), so counting never walks a huge database; when the bound stops it
before the end, ``scan_truncated`` is true and the count is a lower bound.
With no prefix the per-node key counts from ``INFO keyspace`` are used and
nothing is scanned.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .stats import format_bytes, text_table

#: Default bound on the keys one count examines.
DEFAULT_SCAN_LIMIT = 100_000
_SCAN_COUNT = 1000

_INT_FIELDS = ("used_memory", "maxmemory", "connected_clients", "evicted_keys", "expired_keys",
               "keyspace_hits", "keyspace_misses")


@dataclasses.dataclass(frozen=True)
class NodeFacts:
    """One server's ``INFO`` figures (a cluster primary, or the one server)."""

    endpoint: str
    version: str
    role: str
    keys: int  # in the client's database
    used_memory: int
    maxmemory: int  # 0: no limit
    maxmemory_policy: str
    connected_clients: int
    evicted_keys: int
    expired_keys: int
    keyspace_hits: int
    keyspace_misses: int


@dataclasses.dataclass(frozen=True)
class ServerFacts:
    key_prefix: str
    keys_under_prefix: int
    scan_limit: int
    scan_truncated: bool  # the bound stopped the count: keys_under_prefix is a lower bound
    nodes: list[NodeFacts]

    def total(self, field: str) -> int:
        """A counter summed over the nodes (``used_memory``, ``evicted_keys`` ...)."""
        return sum(getattr(n, field) for n in self.nodes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        count = f"{'>= ' if self.scan_truncated else ''}{self.keys_under_prefix}"
        bound = f" (SCAN stopped at its bound of {self.scan_limit} keys)" \
            if self.scan_truncated else ""
        lines = [f"keys under prefix {self.key_prefix!r}: {count}{bound}"]
        rows = [("server", "role", "version", "keys", "used memory", "maxmemory", "policy",
                 "clients", "evicted", "expired", "hits", "misses")]
        for n in self.nodes:
            rows.append((n.endpoint, n.role, n.version, str(n.keys), format_bytes(n.used_memory),
                         format_bytes(n.maxmemory) if n.maxmemory else "none",
                         n.maxmemory_policy, str(n.connected_clients), str(n.evicted_keys),
                         str(n.expired_keys), str(n.keyspace_hits), str(n.keyspace_misses)))
        return "\n".join(lines + text_table(rows))


def glob_escape(raw: bytes) -> bytes:
    """`raw` as a literal in a SCAN MATCH pattern (``*?[]\\`` escaped)."""
    out = bytearray()
    for b in raw:
        if b in b"*?[]\\":
            out += b"\\"
        out.append(b)
    return bytes(out)


def count_keys(client: Any, prefix: bytes,
               scan_limit: int = DEFAULT_SCAN_LIMIT) -> tuple[int, bool]:
    """(keys whose name starts with `prefix`, whether the bound stopped the
    count first). Works for a ValkeyClient and a cluster client (its
    ``scan`` walks every primary)."""
    if scan_limit < 1:
        raise ValueError(f"scan_limit must be >= 1, not {scan_limit}")
    count = min(_SCAN_COUNT, scan_limit)
    steps = -(-scan_limit // count)
    match = glob_escape(prefix) + b"*"
    seen: set[bytes] = set()  # SCAN may return a key twice
    cursor = "0"
    for _ in range(steps):
        cursor, names = client.scan(cursor, match, count)
        seen.update(names)
        if cursor == "0":
            return len(seen), False
    return len(seen), True


def server_stats(client: Any, scan_limit: int = DEFAULT_SCAN_LIMIT) -> ServerFacts:
    """INFO figures of every server behind `client` and the keys under its
    key prefix (see the module docstring for the bound)."""
    config = client.config
    if hasattr(client, "execute_on_all"):  # a cluster: every primary
        infos = client.execute_on_all("INFO")
    else:
        infos = {config.endpoint: client.execute("INFO")}
    nodes = [_node_facts(ep, _parse_info(raw), config.db) for ep, raw in sorted(infos.items())]
    prefix = config.key_prefix
    if prefix:
        keys, truncated = count_keys(client, prefix, scan_limit)
    else:
        keys, truncated = sum(n.keys for n in nodes), False
    return ServerFacts(prefix.decode("utf-8", "backslashreplace"), keys, scan_limit, truncated,
                       nodes)


def _parse_info(raw: Any) -> dict[str, str]:
    text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, sep, value = line.partition(":")
            if sep:
                out[key] = value.strip()
    return out


def _node_facts(endpoint: str, info: dict[str, str], db: int) -> NodeFacts:
    ints = {f: _int(info.get(f)) for f in _INT_FIELDS}
    # "db0:keys=12,expires=12,avg_ttl=3599000"
    space = dict(p.partition("=")[::2] for p in info.get(f"db{db}", "").split(",") if p)
    return NodeFacts(endpoint=endpoint,
                     version=info.get("valkey_version") or info.get("redis_version", "?"),
                     role=info.get("role", "?"), keys=_int(space.get("keys")),
                     maxmemory_policy=info.get("maxmemory_policy", "?"), **ints)


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0
