"""Facts about the server(s) a client talks to: memory, clients, evictions,
and how many keys sit under the client's prefix, what they weigh and how
long they have left to live.

``INFO`` gives the server's own counters (one call per primary for a
cluster). Keys under the prefix come from a bounded ``SCAN``: it examines
at most about ``scan_limit`` keys of the keyspace (``COUNT`` per call ×
calls), so counting never walks a huge database; when the bound stops it
before the end, ``scan_truncated`` is true and the count is a lower bound.
With no prefix the per-node key counts from ``INFO keyspace`` are used and
nothing is scanned.

On a server shared with other consumers, ``INFO used_memory`` is everyone's.
The memory of one prefix is therefore *estimated*: ``MEMORY USAGE`` and
``PTTL`` of a uniform sample (at most ``memory_samples`` keys, drawn from the
same SCAN), the mean size times the key count. It is exact when the sample
holds every key. The walk is :class:`~lmcache_valkey.client.prefix_scan.PrefixScan`,
the package's one SCAN-under-a-prefix loop.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
from typing import Any

from ..client.prefix_scan import PrefixScan
from .stats import format_bytes, text_table

#: Default bound on the keys one count examines.
DEFAULT_SCAN_LIMIT = 100_000
#: Default bound on the keys whose MEMORY USAGE / PTTL are asked (2 commands each).
DEFAULT_MEMORY_SAMPLES = 200

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
class PrefixUsage:
    """What a sample of the keys under a prefix weighs and how long they live.

    ``memory_estimate`` = mean ``MEMORY USAGE`` of the sample × the key
    count: an estimate (exact when ``sampled`` equals the count). TTLs are
    seconds left; keys without an expiry are counted, not in the spread.
    """

    sampled: int
    sampled_bytes: int
    memory_estimate: int
    ttl_min_s: float | None
    ttl_median_s: float | None
    ttl_max_s: float | None
    without_ttl: int

    def __str__(self) -> str:
        if not self.sampled:
            return "memory under prefix: no keys to sample"
        exact = "" if self.sampled_bytes == self.memory_estimate else "~"
        lines = [f"memory under prefix: {exact}{format_bytes(self.memory_estimate)} "
                 f"(estimate: MEMORY USAGE of {self.sampled} sampled keys, "
                 f"mean {format_bytes(self.sampled_bytes / self.sampled)})"]
        if self.ttl_median_s is not None:
            lines.append(f"TTL left (sample): min {self.ttl_min_s:.0f} s, median "
                         f"{self.ttl_median_s:.0f} s, max {self.ttl_max_s:.0f} s; "
                         f"{self.without_ttl} without TTL")
        else:
            lines.append(f"TTL left (sample): none of the {self.without_ttl} keys expires")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class ServerFacts:
    key_prefix: str
    keys_under_prefix: int
    scan_limit: int
    scan_truncated: bool  # the bound stopped the count: keys_under_prefix is a lower bound
    nodes: list[NodeFacts]
    prefix_usage: PrefixUsage | None = None  # with a prefix and memory_samples > 0

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
        if self.prefix_usage is not None:
            lines.append(str(self.prefix_usage))
        rows = [("server", "role", "version", "keys", "used memory", "maxmemory", "policy",
                 "clients", "evicted", "expired", "hits", "misses")]
        for n in self.nodes:
            rows.append((n.endpoint, n.role, n.version, str(n.keys), format_bytes(n.used_memory),
                         format_bytes(n.maxmemory) if n.maxmemory else "none",
                         n.maxmemory_policy, str(n.connected_clients), str(n.evicted_keys),
                         str(n.expired_keys), str(n.keyspace_hits), str(n.keyspace_misses)))
        return "\n".join(lines + text_table(rows))


def count_keys(client: Any, prefix: bytes,
               scan_limit: int = DEFAULT_SCAN_LIMIT) -> tuple[int, bool]:
    """(keys whose name starts with `prefix`, whether the bound stopped the
    count first)."""
    keys, truncated, _ = _count_and_sample(client, prefix, scan_limit, 0)
    return keys, truncated


def _count_and_sample(client: Any, prefix: bytes, scan_limit: int,
                      samples: int) -> tuple[int, bool, list[bytes]]:
    """One bounded SCAN: the count, whether it was truncated, and a uniform
    sample of at most `samples` distinct names (reservoir sampling)."""
    scan = PrefixScan(client, prefix, scan_limit)
    seen: set[bytes] = set()  # SCAN may return a key twice
    sample: list[bytes] = []
    rng = random.Random(0)  # the same keyspace gives the same sample
    for names in scan:
        for name in names:
            if name not in seen:
                seen.add(name)
                _reservoir_offer(sample, samples, name, len(seen), rng)
    return len(seen), scan.truncated, sample


def _reservoir_offer(sample: list[bytes], size: int, name: bytes, offered: int,
                     rng: random.Random) -> None:
    """Algorithm R: keep `sample` a uniform sample of at most `size` of the
    `offered` distinct names offered so far (`name` the last of them)."""
    if len(sample) < size:
        sample.append(name)
    elif size:
        j = rng.randrange(offered)
        if j < size:
            sample[j] = name


def prefix_usage(client: Any, names: list[bytes], keys: int) -> PrefixUsage:
    """MEMORY USAGE and PTTL of the sampled `names` (full key names), scaled
    to `keys`. A key gone since the SCAN is left out."""
    sizes: list[int] = []
    ttls: list[float] = []
    without_ttl = 0
    for name in names:
        size = client.execute_on_key(name, "MEMORY", "USAGE", name)
        pttl = int(client.execute_on_key(name, "PTTL", name))
        if size is None or pttl == -2:  # expired, evicted or deleted meanwhile
            continue
        sizes.append(int(size))
        if pttl == -1:
            without_ttl += 1
        else:
            ttls.append(pttl / 1000)
    total = sum(sizes)
    estimate = total if len(sizes) >= keys else round(total / len(sizes) * keys) if sizes else 0
    return PrefixUsage(sampled=len(sizes), sampled_bytes=total, memory_estimate=estimate,
                       ttl_min_s=min(ttls) if ttls else None,
                       ttl_median_s=statistics.median(ttls) if ttls else None,
                       ttl_max_s=max(ttls) if ttls else None, without_ttl=without_ttl)


def server_stats(client: Any, scan_limit: int = DEFAULT_SCAN_LIMIT,
                 memory_samples: int = 0) -> ServerFacts:
    """INFO figures of every server behind `client` and the keys under its
    key prefix (see the module docstring for the bound); with a prefix and
    `memory_samples` > 0, also their estimated memory and TTL spread."""
    if memory_samples < 0:
        raise ValueError(f"memory_samples must be >= 0, not {memory_samples}")
    config = client.config
    if hasattr(client, "execute_on_all"):  # a cluster: every primary
        infos = client.execute_on_all("INFO")
    else:
        infos = {config.endpoint: client.execute("INFO")}
    nodes = [_node_facts(ep, _parse_info(raw), config.db) for ep, raw in sorted(infos.items())]
    prefix = config.key_prefix
    usage = None
    if prefix:
        keys, truncated, sample = _count_and_sample(client, prefix, scan_limit, memory_samples)
        if memory_samples:
            usage = prefix_usage(client, sample, keys)
    else:
        keys, truncated = sum(n.keys for n in nodes), False
    return ServerFacts(prefix.decode("utf-8", "backslashreplace"), keys, scan_limit, truncated,
                       nodes, usage)


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
