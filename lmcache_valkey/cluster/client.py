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
  target. The native batch engine cannot put ``ASKING`` in front of one key
  of a pipeline, so ASK takes a slow path: ``ASKING`` + the one command via
  ``execute`` on a connection of the target's client (on that connection's
  worker thread, so nothing blocks), with the GET reply copied into the
  caller's buffer and a SET's value sent as bytes. ASK only happens during a
  slot migration, so this path stays cold.
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

from ..buffers import Buffer, as_native_buffer, byte_segments
from ..client import BatchClientBase, BatchResult, Key, ValkeyClient, resolve
from ..completion import CompletionQueue
from ..config import ClientConfig
from ..connection import Connection
from ..errors import (
    ClientClosedError,
    ConfigError,
    ServerReplyError,
    ValkeyConnectionError,
)
from ..integrity import checksum_for
from ..stats import StatsSnapshot
from .slots import key_slot
from .topology import Addr, SlotMap, _endpoint, fetch_slot_map

log = logging.getLogger(__name__)

#: How many MOVED/ASK redirections one key may follow in one batch.
MAX_REDIRECTS = 5
#: Refreshes triggered by failures are at least this far apart.
_MIN_REFRESH_INTERVAL_S = 0.2

_GET, _SET, _EXISTS, _TOUCH, _DELETE = "get", "set", "exists", "touch", "delete"
_FAILED_VALUE = {_GET: None, _SET: False, _EXISTS: False, _TOUCH: False, _DELETE: 0}
_READS = (_GET, _EXISTS)


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


class _ClusterJob:
    """One caller batch, spread over nodes; finishes when every part has."""

    def __init__(self, client: ValkeyClusterClient, op: str, keys: list[bytes],
                 slots: list[int], buffers: list[Any] | None,
                 completion: CompletionQueue | None, token: Any) -> None:
        n = len(keys)
        self.client = client
        self.op = op
        self.keys = keys  # without the prefix (node clients add it)
        self.slots = slots
        self.buffers = buffers
        self.future: Future[BatchResult] = Future()
        self.future.set_running_or_notify_cancel()
        self.values: list[Any] = [_FAILED_VALUE[op]] * n
        self.errors: dict[int, ServerReplyError] = {}
        self.too_large: dict[int, int] = {}
        self.redirects = [0] * n
        self.node_errors: dict[Addr, BaseException] = {}
        self.exc: BaseException | None = None
        self.pending = 0
        self.lock = threading.Lock()
        self.completion = completion
        self.token = token

    # -- bookkeeping ----------------------------------------------------------

    def _hold(self) -> None:
        with self.lock:
            self.pending += 1

    def _release(self) -> None:
        with self.lock:
            self.pending -= 1
            if self.pending:
                return
        result = BatchResult(self.values, self.errors, self.too_large)
        exc = self.exc
        if exc is None and self.node_errors:
            failed = list(self.node_errors.items())
            if len(failed) == 1:
                exc = failed[0][1]
            else:
                exc = ValkeyConnectionError(
                    f"cluster nodes {', '.join(_endpoint(a) for a, _ in failed)} failed: "
                    + "; ".join(str(e) for _, e in failed))
                exc.__cause__ = failed[0][1]
        resolve(self.future, result, exc, self.completion, self.token)

    # -- sending ----------------------------------------------------------------

    def dispatch(self, idxs: Sequence[int]) -> None:
        """Send keys `idxs` to the nodes serving their slots, one batch per node."""
        self._hold()
        try:
            groups: dict[tuple[Addr, bool], list[int]] = {}
            unserved: list[int] = []
            route = self.client._route
            read = self.op in _READS
            for i in idxs:
                target = route(self.slots[i], read)
                if target is None:
                    unserved.append(i)
                else:
                    groups.setdefault(target, []).append(i)
            if unserved:
                with self.lock:
                    for i in unserved:
                        self.errors[i] = ServerReplyError(
                            f"CLUSTERDOWN Hash slot {self.slots[i]} not served")
                self.client._schedule_refresh()
            for (addr, readonly), gidx in groups.items():
                self._send(addr, readonly, gidx)
        finally:
            self._release()

    def _send(self, addr: Addr, readonly: bool, gidx: list[int]) -> None:
        self._hold()
        try:
            node = self.client._node(addr, readonly)
            keys = [self.keys[i] for i in gidx]
            bufs = None if self.buffers is None else [self.buffers[i] for i in gidx]
            if self.op == _GET:
                fut = node.submit_batch_get_into(keys, bufs)  # type: ignore[arg-type]
            elif self.op == _SET:
                fut = node.submit_batch_set(keys, bufs)  # type: ignore[arg-type]
            elif self.op in (_EXISTS, _TOUCH):
                fut = node.submit_batch_exists(keys, refresh_ttl=self.op == _TOUCH)
            else:
                fut = node.submit_batch_delete(keys)
        except BaseException as e:
            self._part_done(addr, gidx, None, e)
            return
        fut.add_done_callback(lambda f: self._on_part(addr, gidx, f))

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
                    for j, i in enumerate(gidx[:len(res)]):
                        err = res.errors.get(j)
                        if err is not None and self._redirect(i, err, moved, asks):
                            continue
                        if err is not None:
                            self.errors[i] = err
                        if j in res.too_large:
                            self.too_large[i] = res.too_large[j]
                        self.values[i] = res[j]
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
                self._ask(target, idxs)
        finally:
            self._release()

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

    # -- ASK: the slow path -----------------------------------------------------

    def _ask(self, addr: Addr, idxs: list[int]) -> None:
        """ASKING + command, key by key, on one connection of `addr`'s client
        (run on that connection's worker thread)."""
        self._hold()
        try:
            node = self.client._node(addr, False)
            prefix = self.client.config.key_prefix
            ttl_ms = self.client.config.ttl_ms
            op = self.op
            jobs: list[tuple[int, bytes, Any]]  # (index, key, its buffer or None)
            jobs = [(i, prefix + self.keys[i],
                     None if self.buffers is None else self.buffers[i]) for i in idxs]
            check = self.client._checksum
            if check is not None and op in (_GET, _SET):  # trailers, as on the fast path
                jobs = [(i, key, check.seal(key, buf, j) if op == _SET else check.open(buf, j))
                        for j, (i, key, buf) in enumerate(jobs)]

            def run(conn: Connection) -> BatchResult:
                values: list[Any] = []
                errors: dict[int, ServerReplyError] = {}
                too_large: dict[int, int] = {}
                for j, (_, key, buf) in enumerate(jobs):
                    try:
                        conn.native.execute("ASKING")
                        values.append(_ask_command(conn, op, key, buf, ttl_ms, too_large, j))
                    except ServerReplyError as e:
                        values.append(_FAILED_VALUE[op])
                        errors[j] = e
                if check is not None and op == _GET:
                    check.finish_get((values, errors, too_large), [k for _, k, _ in jobs],
                                     [b for _, _, b in jobs])
                return BatchResult(values, errors, too_large)

            fut = node.submit_call(run)
        except BaseException as e:
            self._part_done(addr, idxs, None, e)  # releases the hold
            return
        fut.add_done_callback(lambda f: self._on_part(addr, idxs, f))  # releases it later


def _ask_command(conn: Connection, op: str, key: bytes, buf: Any, ttl_ms: int,
                 too_large: dict[int, int], j: int) -> Any:
    native = conn.native
    if op == _GET:
        data = native.execute("GET", key)
        if data is None:
            return None
        return _copy_into(buf, bytes(data), too_large, j)
    if op == _SET:
        args: list[Any] = ["SET", key, b"".join(byte_segments(buf, False, j))]
        if ttl_ms:
            args += ["PX", ttl_ms]
        return native.execute(*args) == "OK"
    if op == _TOUCH:
        return native.execute("PEXPIRE", key, ttl_ms) == 1
    if op == _EXISTS:
        return native.execute("EXISTS", key) == 1
    return int(native.execute("DEL", key))


def _copy_into(buf: Any, data: bytes, too_large: dict[int, int], j: int) -> int | None:
    """A GET reply into a destination buffer or scatter list, as the native
    engine would fill it (segments in order); a value that does not fit is a
    miss recorded in `too_large`."""
    views = byte_segments(buf, True, j)
    if len(data) > sum(v.nbytes for v in views):
        too_large[j] = len(data)
        return None
    pos = 0
    for v in views:
        take = min(v.nbytes, len(data) - pos)
        v[:take] = data[pos:pos + take]
        pos += take
        if pos == len(data):
            break
    return len(data)


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
        self._prefix = config.key_prefix
        self._checksum = checksum_for(config.checksum)  # for the ASK slow path
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
            ep = _endpoint(addr)
            snap = node.stats()
            nodes[ep] = StatsSnapshot.combine(ep, [nodes[ep], snap]) if ep in nodes else snap
        seeds = ",".join(_endpoint(a) for a in self._seeds)
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
        slot = key_slot(self._prefix + _as_bytes(key, 0))
        primary = self._slot_map_now().primaries[slot]
        return "unassigned" if primary is None else _endpoint(primary)

    # -- batches ----------------------------------------------------------------

    def _submit(self, op: str, keys: Sequence[Key], buffers: Sequence[Buffer] | None,
                completion: CompletionQueue | None, token: Any) -> Future[BatchResult]:
        if self.closed:
            raise ClientClosedError("client is closed")
        bkeys = [_as_bytes(k, i) for i, k in enumerate(keys)]
        nbufs: list[Any] | None = None
        if buffers is not None:
            if len(buffers) != len(bkeys):
                raise ConfigError(f"{len(bkeys)} keys but {len(buffers)} buffers")
            nbufs = [as_native_buffer(b) for b in buffers]
        prefix = self._prefix
        slots = [key_slot(prefix + k) for k in bkeys]
        job = _ClusterJob(self, op, bkeys, slots, nbufs, completion, token)
        try:
            if bkeys:
                self._slot_map_now()
        except ValkeyConnectionError as e:
            job.exc = e
            job._hold()
            job._release()
            return job.future
        job.dispatch(range(len(bkeys)))
        return job.future

    def submit_batch_get_into(self, keys: Sequence[Key], buffers: Sequence[Buffer], *,
                              completion: CompletionQueue | None = None,
                              token: Any = None) -> Future[BatchResult]:
        """See :meth:`ValkeyClient.submit_batch_get_into`."""
        return self._submit(_GET, keys, buffers, completion, token)

    def submit_batch_set(self, keys: Sequence[Key], buffers: Sequence[Buffer], *,
                         completion: CompletionQueue | None = None,
                         token: Any = None) -> Future[BatchResult]:
        return self._submit(_SET, keys, buffers, completion, token)

    def submit_batch_exists(self, keys: Sequence[Key], *, refresh_ttl: bool = False,
                            completion: CompletionQueue | None = None,
                            token: Any = None) -> Future[BatchResult]:
        op = _TOUCH if refresh_ttl and self.config.ttl_ms > 0 else _EXISTS
        return self._submit(op, keys, None, completion, token)

    def submit_batch_delete(self, keys: Sequence[Key], *,
                            completion: CompletionQueue | None = None,
                            token: Any = None) -> Future[BatchResult]:
        return self._submit(_DELETE, keys, None, completion, token)

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
        return {_endpoint(a): f.result() for a, f in futs.items()}

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


def _as_bytes(k: Key, i: int) -> bytes:
    if isinstance(k, str):
        return k.encode()
    if isinstance(k, bytes):
        return k
    if isinstance(k, (bytearray, memoryview)):
        return bytes(k)
    raise TypeError(f"key #{i} must be str or bytes, not {type(k).__name__}")
