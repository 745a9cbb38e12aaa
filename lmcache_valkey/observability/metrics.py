"""Prometheus export of client counters and server facts (``lmcache_valkey_*``).

Needs ``prometheus_client`` (``pip install 'lmcache-valkey[metrics]'``)::

    from lmcache_valkey.observability import metrics

    text = metrics.render(client)                # the text exposition format
    httpd = metrics.serve(9464, client)          # GET http://127.0.0.1:9464/metrics
    registry.register(metrics.ValkeyCollector(client))   # or into your own registry

A :class:`ValkeyCollector` reads the clients' :meth:`stats` at each scrape
and, unless ``server=False``, asks the server for its facts
(:func:`~lmcache_valkey.observability.server_stats.server_stats`: INFO, and a SCAN bounded
by ``scan_limit`` for the keys under each client's prefix, and with
``memory_samples`` > 0 their estimated memory and TTL spread). Labels are
``endpoint`` (``host:port``; a cluster's series are per node), ``op``,
``result``, ``kind`` and ``prefix`` -- never a user name or password.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import ValkeyError
from .server_stats import DEFAULT_SCAN_LIMIT, ServerFacts, server_stats
from .stats import LATENCY_BUCKETS_S, OPS, StatsSnapshot

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

log = logging.getLogger(__name__)

_NS = "lmcache_valkey_"


def _prometheus() -> Any:
    try:
        import prometheus_client
        import prometheus_client.core
        import prometheus_client.utils
    except ImportError:
        raise ImportError("Prometheus export needs prometheus_client: "
                          "pip install 'lmcache-valkey[metrics]'") from None
    return prometheus_client


class ValkeyCollector:
    """A prometheus_client collector over one or more clients (ValkeyClient
    or ValkeyClusterClient). Clients on the same endpoint are summed."""

    def __init__(self, *clients: Any, client_stats: bool = True, server: bool = True,
                 scan_limit: int = DEFAULT_SCAN_LIMIT, memory_samples: int = 0) -> None:
        _prometheus()
        self._clients = list(clients)
        self._lock = threading.Lock()
        self.client_stats = client_stats
        self.server = server
        self.scan_limit = scan_limit
        self.memory_samples = memory_samples

    def add(self, client: Any) -> None:
        with self._lock:
            self._clients.append(client)

    def describe(self) -> list[Any]:
        # Registering must not scrape (which would ask the server): no names.
        return []

    def collect(self) -> Iterator[Any]:
        with self._lock:
            clients = list(self._clients)
        snapshots = [c.stats() for c in clients]
        if self.client_stats:
            yield from client_families(snapshots)
        if self.server:
            yield from self._server_families(clients, snapshots)

    def _server_families(self, clients: list[Any],
                         snapshots: list[StatsSnapshot]) -> Iterator[Any]:
        facts: list[tuple[str, ServerFacts | None]] = []
        for client, snap in zip(clients, snapshots, strict=True):
            try:
                facts.append((snap.endpoint, server_stats(client, self.scan_limit,
                                                                 self.memory_samples)))
            except ValkeyError as e:  # the scrape goes on; _server_up says 0
                log.debug("lmcache_valkey metrics: server facts of %s: %s", snap.endpoint, e)
                facts.append((snap.endpoint, None))
        yield from server_families(facts)


def client_families(snapshots: list[StatsSnapshot]) -> Iterator[Any]:
    """Metric families of client counters (summed per endpoint)."""
    core = _prometheus().core
    by_endpoint: dict[str, list[StatsSnapshot]] = {}
    cluster: dict[str, int] = {}
    for snap in snapshots:
        for ep, part in (snap.nodes or {snap.endpoint: snap}).items():
            by_endpoint.setdefault(ep, []).append(part)
        for k, v in snap.cluster.items():
            cluster[k] = cluster.get(k, 0) + v
    merged = [StatsSnapshot.combine(ep, parts) for ep, parts in sorted(by_endpoint.items())]

    def counter(name: str, doc: str, labels: list[str]) -> Any:
        return core.CounterMetricFamily(_NS + name, doc, labels=labels)

    batches = counter("batches_total", "Batches finished, by operation.", ["endpoint", "op"])
    keys = counter("keys_total", "Keys of finished batches, by operation and outcome "
                   "(get: hit/miss/error, set: stored/error, exists/touch: found/missing/error, "
                   "delete: deleted/missing/error).", ["endpoint", "op", "result"])
    key_errors = counter("key_errors_total", "Keys that failed, by error kind: the server's "
                         "error code, too_large, or a failed batch's kind.",
                         ["endpoint", "op", "kind"])
    batch_errors = counter("batch_errors_total", "Batches that raised, by kind "
                           "(connection, timeout, protocol, tls, auth, closed).",
                           ["endpoint", "op", "kind"])
    received = counter("received_bytes_total", "Value bytes received by GETs.", ["endpoint"])
    sent = counter("sent_bytes_total", "Value bytes of SETs the server stored.", ["endpoint"])
    connects = counter("connects_total", "Connections opened.", ["endpoint"])
    reconnects = counter("reconnects_total", "Connections opened to replace a lost one.",
                         ["endpoint"])
    connect_failures = counter("connect_failures_total", "Failed connect attempts.",
                               ["endpoint"])
    latency = core.HistogramMetricFamily(
        _NS + "batch_duration_seconds", "Batch latency, submit to result.",
        labels=["endpoint", "op"])
    bounds = [_prometheus().utils.floatToGoString(b) for b in LATENCY_BUCKETS_S] + ["+Inf"]
    for snap in merged:
        ep = snap.endpoint
        for name in OPS:
            op = snap.ops[name]
            if not op.batches:
                continue
            batches.add_metric([ep, name], op.batches)
            for result, n in op.keys.items():
                keys.add_metric([ep, name, result], n)
            for kind, n in op.key_errors.items():
                key_errors.add_metric([ep, name, kind], n)
            for kind, n in op.batch_errors.items():
                batch_errors.add_metric([ep, name, kind], n)
            cumulative, acc = [], 0
            for bound, n in zip(bounds, op.latency_counts, strict=True):
                acc += n
                cumulative.append((bound, acc))
            latency.add_metric([ep, name], cumulative, op.latency_sum_s)
        received.add_metric([ep], snap.bytes_in)
        sent.add_metric([ep], snap.bytes_out)
        connects.add_metric([ep], snap.connects)
        reconnects.add_metric([ep], snap.reconnects)
        connect_failures.add_metric([ep], snap.connect_failures)
    yield from (batches, keys, key_errors, batch_errors, received, sent, latency, connects,
                reconnects, connect_failures)
    if cluster:
        redirects = counter("cluster_redirects_total", "MOVED/ASK redirections followed.",
                            ["kind"])
        redirects.add_metric(["moved"], cluster.get("moved", 0))
        redirects.add_metric(["ask"], cluster.get("ask", 0))
        refreshes = counter("cluster_topology_refreshes_total", "Slot map reads.", [])
        refreshes.add_metric([], cluster.get("topology_refreshes", 0))
        yield from (redirects, refreshes)


def server_families(facts: list[tuple[str, ServerFacts | None]]) -> Iterator[Any]:
    """Metric families of server facts, per (client endpoint, facts or None
    when the server could not be asked)."""
    core = _prometheus().core
    up = core.GaugeMetricFamily(_NS + "server_up", "1 when the server answered INFO.",
                                labels=["endpoint"])
    prefix_keys = core.GaugeMetricFamily(
        _NS + "prefix_keys", "Keys under the client's key prefix (a lower bound when "
        "lmcache_valkey_prefix_keys_truncated is 1).", labels=["endpoint", "prefix"])
    truncated = core.GaugeMetricFamily(
        _NS + "prefix_keys_truncated", "1 when the SCAN bound stopped the key count.",
        labels=["endpoint", "prefix"])
    prefix_memory = core.GaugeMetricFamily(
        _NS + "prefix_memory_bytes_estimate", "Memory of the keys under the prefix: mean "
        "MEMORY USAGE of a sample of them times their count (an estimate).",
        labels=["endpoint", "prefix"])
    prefix_ttl = core.GaugeMetricFamily(
        _NS + "prefix_ttl_seconds", "Seconds left to live of the sampled keys under the "
        "prefix that expire (quantile 0, 0.5, 1).", labels=["endpoint", "prefix", "quantile"])
    node_labels = ["endpoint"]
    gauges = {f: core.GaugeMetricFamily(_NS + name, doc, labels=node_labels) for f, name, doc in (
        ("keys", "server_keys", "Keys in the client's database."),
        ("used_memory", "server_used_memory_bytes", "INFO used_memory."),
        ("maxmemory", "server_maxmemory_bytes", "INFO maxmemory (0: no limit)."),
        ("connected_clients", "server_connected_clients", "INFO connected_clients."))}
    # INFO's counters keep their INFO names: server_<field>_total.
    counters = {f: core.CounterMetricFamily(f"{_NS}server_{f}_total", f"INFO {f}.",
                                            labels=node_labels)
                for f in ("evicted_keys", "expired_keys", "keyspace_hits", "keyspace_misses")}
    info = core.GaugeMetricFamily(_NS + "server_info", "Server version, role and eviction "
                                  "policy (value 1).",
                                  labels=["endpoint", "version", "role", "maxmemory_policy"])
    seen_nodes: set[str] = set()
    seen_prefixes: set[tuple[str, str]] = set()
    for endpoint, f in facts:
        up.add_metric([endpoint], 0 if f is None else 1)
        if f is None:
            continue
        if (endpoint, f.key_prefix) not in seen_prefixes:
            seen_prefixes.add((endpoint, f.key_prefix))
            prefix_keys.add_metric([endpoint, f.key_prefix], f.keys_under_prefix)
            truncated.add_metric([endpoint, f.key_prefix], int(f.scan_truncated))
            usage = f.prefix_usage
            if usage is not None:
                prefix_memory.add_metric([endpoint, f.key_prefix], usage.memory_estimate)
                for q, v in (("0", usage.ttl_min_s), ("0.5", usage.ttl_median_s),
                             ("1", usage.ttl_max_s)):
                    if v is not None:
                        prefix_ttl.add_metric([endpoint, f.key_prefix, q], v)
        for node in f.nodes:
            if node.endpoint in seen_nodes:
                continue
            seen_nodes.add(node.endpoint)
            for field, fam in (*gauges.items(), *counters.items()):
                fam.add_metric([node.endpoint], getattr(node, field))
            info.add_metric([node.endpoint, node.version, node.role, node.maxmemory_policy], 1)
    yield from (up, prefix_keys, truncated, prefix_memory, prefix_ttl, *gauges.values(),
                *counters.values(), info)


def _registry(clients: tuple[Any, ...], **options: Any) -> tuple[Any, Any]:
    """prometheus_client and a registry of its own holding a ValkeyCollector."""
    prom = _prometheus()
    registry = prom.CollectorRegistry()
    registry.register(ValkeyCollector(*clients, **options))
    return prom, registry


def render(*clients: Any, client_stats: bool = True, server: bool = True,
           scan_limit: int = DEFAULT_SCAN_LIMIT, memory_samples: int = 0) -> str:
    """The Prometheus text exposition of `clients`' counters and their
    servers' facts (either can be left out)."""
    prom, registry = _registry(clients, client_stats=client_stats, server=server,
                               scan_limit=scan_limit, memory_samples=memory_samples)
    return prom.generate_latest(registry).decode()


def serve(port: int, *clients: Any, addr: str = "127.0.0.1", client_stats: bool = True,
          server: bool = True, scan_limit: int = DEFAULT_SCAN_LIMIT,
          memory_samples: int = 0) -> WSGIServer:
    """Serve the metrics of `clients` over HTTP (any path, e.g. ``/metrics``)
    from a daemon thread, with a registry of their own. ``port=0`` picks a
    free port (``.server_port``); ``.shutdown()`` stops it. Listens on
    loopback unless `addr` says otherwise (``"0.0.0.0"``: every interface)."""
    prom, registry = _registry(clients, client_stats=client_stats, server=server,
                               scan_limit=scan_limit, memory_samples=memory_samples)
    httpd, _ = prom.start_http_server(port, addr=addr, registry=registry)
    return httpd
