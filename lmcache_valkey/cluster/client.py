"""ValkeyClusterClient: the same API as ValkeyClient, over a Valkey Cluster.

Routing: every key's slot is computed on the *prefixed* key (the prefix is
part of the key the server hashes); keys are grouped by the node serving
their slot, and each group runs as one ordinary batch on that node's own
:class:`~lmcache_valkey.ValkeyClient` (created lazily, ``num_connections``
connections each, same zero-copy native path). All nodes' groups are in
flight at once; their results are merged back into one BatchResult in the
caller's key order and delivered through a Future / CompletionQueue /
asyncio exactly as ValkeyClient delivers its own.

Redirections, per key:

* ``-MOVED slot host:port``: the slot now lives elsewhere. The slot map entry
  is updated from the reply at once, a full refresh is scheduled in the
  background, and the key is retried on the new node (at most
  ``MAX_REDIRECTS`` times; then the MOVED error stays in ``errors``).
* ``-ASK slot host:port``: the key is being migrated and already sits on the
  target. ``ASKING`` lets in only the one command after it, so ASK takes a
  slow path: on one connection of the target's client, each key runs as
  ``ASKING`` + a one-key batch of the native engine (values sealed and
  checked as on the fast path; see ``ValkeyClient.submit_asking``). ASK only
  happens during a slot migration, so this path stays cold.
* Any other error reply (``-CLUSTERDOWN``, ``-TRYAGAIN``, ``-OOM`` ...) is
  that key's result, as in ValkeyClient.

Node failures: a node whose connection fails (refused, reset, timeout) fails
only its keys. The merged future then raises ValkeyConnectionError whose
``partial`` is the whole merged BatchResult -- every other node's keys carry
their results, the failed node's keys read ``None``/``False``/``0`` -- just as
ValkeyClient reports a connection that broke mid-batch. A node failure or a
MOVED schedules a slot-map refresh; besides, the map is refreshed in the
background when it is older than ``topology_refresh_s`` at the next batch.

Replicas: with ``read_from_replicas``, GETs and plain EXISTS go to an online
replica of the slot (round robin; the primary when it has none) over
connections that sent ``READONLY``; EXISTS with ``refresh_ttl`` writes
(``PEXPIRE``), so it goes to the primary.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from ..client.batch_client import BatchClientBase, Key, key_bytes
from ..client.batch_result import BatchResult, merge_outcome
from ..client.completion import CompletionQueue
from ..client.jobs import Job
from ..client.valkey_client import ValkeyClient
from ..config import ClientConfig
from ..errors import (
    ClientClosedError,
    ConfigError,
    ServerReplyError,
    ValkeyConnectionError,
)
from ..observability.stats import StatsSnapshot
from ..protocol.operations import Operation
from .slots import key_slot
from .topology import Addr, SlotMap, addr_text, fetch_slot_map

log = logging.getLogger(__name__)

#: How many MOVED/ASK redirections one key may follow in one batch.
MAX_REDIRECTS = 5
#: Refreshes triggered by failures are at least this far apart.
_MIN_REFRESH_INTERVAL_S = 0.2


def _parse_redirect(err: ServerReplyError) -> tuple[int, Addr] | None:
    """``MOVED 3999 127.0.0.1:7001`` → (3999, ("127.0.0.1", 7001))."""
    parts = str(err).split()
    if len(parts) < 3:
        return None
    host, _, port = parts[2].rpartition(":")
    try:
        return int(parts[1]), (host.strip("[]"), int(port))
    except ValueError:
        return None


class _ClusterJob(Job):
    """One caller batch, spread over nodes; finishes when every part has."""

    __slots__ = ("client", "keys", "slots", "buffers", "redirects", "node_errors")

    def __init__(self, client: ValkeyClusterClient, op: Operation, keys: list[bytes],
                 slots: list[int], buffers: list[Any] | None,
                 completion: CompletionQueue | None, token: Any) -> None:
        super().__init__(op, len(keys), completion, token)
        self.client = client
        self.keys = keys  # without the prefix (node clients add it)
        self.slots = slots
        self.buffers = buffers
        self.redirects = [0] * len(keys)
        self.node_errors: dict[Addr, BaseException] = {}

    def failure(self) -> BaseException | None:
        exc = self.exc
        if exc is None and self.node_errors:
            failed = list(self.node_errors.items())
            if len(failed) == 1:
                exc = failed[0][1]
            else:
                exc = ValkeyConnectionError(
                    f"cluster nodes {', '.join(addr_text(a) for a, _ in failed)} failed: "
                    + "; ".join(str(e) for _, e in failed))
                exc.__cause__ = failed[0][1]
        return exc

    # -- sending ----------------------------------------------------------------

    def dispatch(self, idxs: Sequence[int]) -> None:
        """Send keys `idxs` to the nodes serving their slots, one batch per node."""
        self.hold()
        try:
            groups: dict[tuple[Addr, bool], list[int]] = {}
            unserved: list[int] = []
            route = self.client._route
            read = self.op.replica_safe
            for i in idxs:
                target = route(self.slots[i], read)
                if target is None:
                    unserved.append(i)
                else:
                    groups.setdefault(target, []).append(i)
            if unserved:
                with self.lock:
                    for i in unserved:
                        self.result.errors[i] = ServerReplyError(
                            f"CLUSTERDOWN Hash slot {self.slots[i]} not served")
                self.client._schedule_refresh()
            for (addr, readonly), gidx in groups.items():
                self._send(addr, readonly, gidx)
        finally:
            self.release()

    def _send(self, addr: Addr, readonly: bool, gidx: list[int], asking: bool = False) -> None:
        """Keys `gidx` as one batch on `addr`'s client (`asking`: each key
        after ``ASKING``, the ASK slow path)."""
        self.hold()
        try:
            node = self.client._node(addr, readonly)
            keys = [self.keys[i] for i in gidx]
            bufs = None if self.buffers is None else [self.buffers[i] for i in gidx]
            if asking:
                fut = node.submit_asking(self.op, keys, bufs)
            else:
                fut = node.submit_op(self.op, keys, bufs)
        except BaseException as e:
            self._part_done(addr, gidx, None, e)  # releases the hold
            return
        fut.add_done_callback(lambda f: self._on_part(addr, gidx, f))  # releases it later

    # -- receiving (on node client worker threads) ------------------------------

    def _on_part(self, addr: Addr, gidx: list[int], fut: Future[BatchResult]) -> None:
        exc = fut.exception()
        if exc is None:
            self._part_done(addr, gidx, fut.result(), None)
        else:
            partial = getattr(exc, "partial", None)
            self._part_done(addr, gidx, partial if isinstance(partial, BatchResult) else None,
                            exc)

    def _part_done(self, addr: Addr, gidx: list[int], res: BatchResult | None,
                   exc: BaseException | None) -> None:
        moved: list[int] = []
        asks: dict[Addr, list[int]] = {}
        try:
            with self.lock:
                if res is not None:
                    redirected = {j for j, err in res.errors.items()
                                  if j < len(gidx) and self._redirect(gidx[j], err, moved, asks)}
                    merge_outcome(self.result, gidx, (res, res.errors, res.too_large),
                                  redirected)
                if exc is not None:
                    if isinstance(exc, ValkeyConnectionError) and not self.client.closed:
                        self.node_errors.setdefault(addr, exc)
                    elif self.exc is None:
                        self.exc = exc
            if exc is not None and isinstance(exc, ValkeyConnectionError):
                self.client._schedule_refresh()
            if moved:
                self.client._schedule_refresh()
                self.dispatch(moved)
            for target, idxs in asks.items():
                self._send(target, False, idxs, asking=True)
        finally:
            self.release()

    def _redirect(self, i: int, err: ServerReplyError, moved: list[int],
                  asks: dict[Addr, list[int]]) -> bool:
        """Under the lock: queue a MOVED/ASK retry of key i; False to keep
        the error as the key's result."""
        code = err.code
        if code not in ("MOVED", "ASK") or self.redirects[i] >= MAX_REDIRECTS:
            return False
        target = _parse_redirect(err)
        if target is None:
            return False
        self.redirects[i] += 1
        slot, addr = target
        if code == "MOVED":
            self.client._moved(slot, addr)
            moved.append(i)
        else:
            self.client.asks += 1
            asks.setdefault(addr, []).append(i)
        return True


class ValkeyClusterClient(BatchClientBase):
    """Batched GET/SET/EXISTS/DEL of large values against a Valkey Cluster.

    ``url`` is ``valkey+cluster://[user:password@]host:port[,host:port...]``
    (also ``redis+cluster://``, ``valkeys+cluster://`` for TLS, or any URL
    with ``?cluster=true``); the hosts are seeds, from which the slot map is
    read. Options are ClientConfig's; ``db`` must be 0. The API is
    ValkeyClient's: ``batch_*``, ``submit_*``, ``abatch_*``, ``execute``,
    ``ping``, ``connect``, ``close`` and the context managers; plus
    :meth:`execute_on_all`, :meth:`node_of` and :meth:`refresh_topology`.
    """

    def __init__(self, url: str | None = None, **options: Any) -> None:
        config = ClientConfig.from_url_or_config(url, options)
        if not config.cluster:
            raise ConfigError("not a cluster configuration: use valkey+cluster://host:port"
                              "[,host:port...] or cluster=true (or ValkeyClient for one server)")
        if config.db != 0:
            raise ConfigError(f"a Valkey Cluster has only database 0, not db={config.db}")
        self.config = config
        self.closed = False
        self._prefix = config.key_prefix  # for slots: node clients put it on the keys
        seeds = list(config.cluster_nodes)
        if not seeds and config.host:
            seeds = [(config.host, config.port)]
        self._seeds: list[Addr] = seeds
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()  # one fetch at a time
        self._slot_map: SlotMap | None = None
        self._refreshed_at = 0.0
        self._refresh_thread: threading.Thread | None = None
        self._nodes: dict[tuple[Addr, bool], ValkeyClient] = {}
        self._rr = itertools.count()
        self._loop_queues = weakref.WeakKeyDictionary()
        # Counters (read by tests and benchmarks).
        self.refreshes = 0
        self.moves = 0
        self.asks = 0

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        nodes = len(self._slot_map.primary_nodes) if self._slot_map else "?"
        return (f"ValkeyClusterClient({self.config.redacted_url()}, primaries={nodes}, "
                f"key_prefix={self._prefix!r}, ttl_s={self.config.ttl_s}, "
                f"num_connections={self.config.num_connections} per node, {state})")

    @property
    def embedded_server(self) -> None:
        """Always None: a cluster client never starts a server."""
        return None

    def stats(self) -> StatsSnapshot:
        """The sum of the node clients' counters (each in ``.nodes``), plus
        MOVED/ASK redirections and slot-map refreshes in ``.cluster``. A
        redirected key counts as a MOVED/ASK error on the node that sent it
        on, and again where it was retried (ASK retries run outside the
        batch path and are not counted there)."""
        with self._lock:
            clients = list(self._nodes.items())
        nodes: dict[str, StatsSnapshot] = {}
        for (addr, _), node in clients:  # a node may have a READONLY client too
            ep = addr_text(addr)
            snap = node.stats()
            nodes[ep] = StatsSnapshot.combine(ep, [nodes[ep], snap]) if ep in nodes else snap
        seeds = ",".join(addr_text(a) for a in self._seeds)
        return StatsSnapshot.combine(
            f"cluster {seeds}", nodes.values(), nodes=dict(sorted(nodes.items())),
            cluster={"moved": self.moves, "ask": self.asks, "topology_refreshes": self.refreshes})

    # -- topology ---------------------------------------------------------------

    def _candidates(self) -> list[Addr]:
        smap = self._slot_map
        out: list[Addr] = []
        if smap is not None:
            if smap.source is not None:
                out.append(smap.source)
            out += smap.primary_nodes
            out += sorted(smap.nodes - set(out))
        return out + self._seeds

    def refresh_topology(self) -> SlotMap:
        """Read the slot map now (blocking). Raises ValkeyConnectionError
        when no known node answers."""
        with self._refresh_lock:
            smap = fetch_slot_map(self.config, self._candidates())
            with self._lock:
                self._slot_map = smap
                self._refreshed_at = time.monotonic()
                self.refreshes += 1
        return smap

    def _slot_map_now(self) -> SlotMap:
        smap = self._slot_map
        if smap is None:
            with self._refresh_lock:  # concurrent first batches fetch once
                smap = self._slot_map
            if smap is None:
                smap = self.refresh_topology()
        elif time.monotonic() - self._refreshed_at > self.config.topology_refresh_s:
            self._schedule_refresh(min_interval=0.0)
        return smap

    def _schedule_refresh(self, min_interval: float = _MIN_REFRESH_INTERVAL_S) -> None:
        """Refresh in a background thread, unless one runs or one just ran."""
        with self._lock:
            if self.closed or (self._refresh_thread is not None
                               and self._refresh_thread.is_alive()):
                return
            # Too soon after the last one: wait out the interval first.
            too_soon = time.monotonic() - self._refreshed_at < min_interval
            delay = min_interval if too_soon else 0.0
            t = threading.Thread(target=self._background_refresh, args=(delay,),
                                 name="lmcache-valkey-cluster-refresh", daemon=True)
            self._refresh_thread = t
        t.start()

    def _background_refresh(self, delay: float) -> None:
        if delay:
            time.sleep(delay)
        if self.closed:
            return
        try:
            self.refresh_topology()
        except Exception as e:
            log.warning("cluster: slot map refresh failed: %s", e)

    def _moved(self, slot: int, addr: Addr) -> None:
        """A MOVED reply names the slot's new primary: route there now."""
        smap = self._slot_map
        self.moves += 1
        if smap is not None:
            smap.primaries[slot] = addr
            smap.replicas[slot] = ()

    def _route(self, slot: int, read: bool) -> tuple[Addr, bool] | None:
        smap = self._slot_map
        if smap is None:
            return None
        if read and self.config.read_from_replicas:
            reps = smap.replicas[slot]
            if reps:
                return reps[next(self._rr) % len(reps)], True
        primary = smap.primaries[slot]
        return None if primary is None else (primary, False)

    def _node(self, addr: Addr, readonly: bool = False) -> ValkeyClient:
        key = (addr, readonly)
        node = self._nodes.get(key)
        if node is not None:
            return node
        with self._lock:
            if self.closed:
                raise ClientClosedError("client is closed")
            node = self._nodes.get(key)
            if node is None:
                node = ValkeyClient(config=self.config.for_node(*addr),
                                    on_connect=[("READONLY",)] if readonly else ())
                self._nodes[key] = node
        return node

    def node_of(self, key: Key) -> str:
        """``host:port`` of the primary serving `key` (prefix applied)."""
        slot = key_slot(key_bytes([key], self._prefix)[0])
        primary = self._slot_map_now().primaries[slot]
        return "unassigned" if primary is None else addr_text(primary)

    # -- batches ----------------------------------------------------------------

    def _start(self, op: Operation, bkeys: list[bytes], nbufs: list[Any] | None,
               completion: CompletionQueue | None, token: Any,
               caller_waits: bool = False) -> Future[BatchResult]:
        # caller_waits is ignored: the nodes' parts run on their clients'
        # workers, and redirections are followed from their completions.
        prefix = self._prefix
        slots = [key_slot(prefix + k) for k in bkeys]
        job = _ClusterJob(self, op, bkeys, slots, nbufs, completion, token)
        try:
            if bkeys:
                self._slot_map_now()
        except ValkeyConnectionError as e:
            job.exc = e
            job.hold()
            job.release()
            return job.future
        job.dispatch(range(len(bkeys)))
        return job.future

    # -- control ----------------------------------------------------------------

    def execute(self, *args: Any) -> Any:
        """Run one command (not prefixed, not routed) on a primary: the first
        (by address) that can be reached. For control commands (PING, INFO,
        CLUSTER ...); a keyed command gets the key's owner's MOVED error
        unless the first primary owns it. See :meth:`execute_on_all`."""
        if self.closed:
            raise ClientClosedError("client is closed")
        last: ValkeyConnectionError | None = None
        for addr in self._slot_map_now().primary_nodes:
            try:
                return self._node(addr).execute(*args)
            except ValkeyConnectionError as e:
                last = e
        self._schedule_refresh()
        raise last or ValkeyConnectionError("cluster: no primary known")

    def execute_on_all(self, *args: Any) -> dict[str, Any]:
        """Run one command on every primary (FLUSHALL, DBSIZE, INFO ...);
        returns ``{"host:port": reply}``. Raises the first failure."""
        if self.closed:
            raise ClientClosedError("client is closed")
        nodes = self._slot_map_now().primary_nodes
        futs = {a: self._node(a).submit_call(lambda conn: conn.native.execute(*args))
                for a in nodes}
        return {addr_text(a): f.result() for a, f in futs.items()}

    def execute_on_key(self, key: bytes, *args: Any) -> Any:
        """Run a command about `key` (a full, prefixed key name) on the
        primary that owns its slot (STRLEN, TTL ...)."""
        if self.closed:
            raise ClientClosedError("client is closed")
        route = self._route(key_slot(key), False)
        if route is None:
            raise ValkeyConnectionError(f"no node serves the slot of {key!r}")
        return self._node(route[0]).execute(*args)

    def scan(self, cursor: str = "0", match: bytes = b"*",
             count: int = 1000) -> tuple[str, list[bytes]]:
        """One ``SCAN`` step over the whole cluster: the primaries in turn,
        by address. The cursor is ``"<node index>:<node cursor>"``; start and
        end at ``"0"``. As with any cluster SCAN, keys that move between
        nodes while it runs may be missed or seen twice."""
        nodes = self._slot_map_now().primary_nodes
        index, _, node_cursor = cursor.rpartition(":")
        i = int(index) if index else 0
        if not (node_cursor.isdigit() and 0 <= i < len(nodes)):
            raise ConfigError(f"malformed cluster SCAN cursor {cursor!r}")
        nxt, names = self._node(nodes[i]).scan(node_cursor, match, count)
        if nxt != "0":
            return f"{i}:{nxt}", names
        return (f"{i + 1}:0" if i + 1 < len(nodes) else "0"), names

    def ping(self) -> bool:
        """True when every primary answers PONG."""
        return all(r == "PONG" for r in self.execute_on_all("PING").values())

    def connect(self) -> None:
        """Read the slot map and open every connection to every primary (and
        to the replicas, with ``read_from_replicas``) now. Raises what a
        failed connect raises."""
        if self.closed:
            raise ClientClosedError("client is closed")
        smap = self.refresh_topology()
        for addr in smap.primary_nodes:
            self._node(addr).connect()
        if self.config.read_from_replicas:
            for addr in sorted(smap.nodes - set(smap.primary_nodes)):
                self._node(addr, True).connect()

    def close(self) -> None:
        """Close every node's client; batches still running fail."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            nodes = list(self._nodes.values())
        for node in nodes:
            node.close()
        self._close_loop_queues()
