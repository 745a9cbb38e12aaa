"""LMCache multiprocess mode: :class:`ValkeyL2Adapter`, an L2 adapter on our client.

Load it with LMCache's stock plugin route (no registration needed)::

    lmcache server ... --l2-adapter '{"type": "plugin",
        "module_path": "lmcache_valkey.lmcache",
        "class_name": "ValkeyL2Adapter",
        "config_class_name": "ValkeyL2AdapterConfig",
        "adapter_params": {"url": "valkey://10.0.0.5:6379", "key_prefix": "lmcache:",
                           "ttl_s": 86400, "num_connections": 4}}'

``config_class_name`` may be left out: LMCache then finds ``ValkeyL2AdapterConfig``
by its naming convention (class name + ``Config``). Where the short form
``{"type": "lmcache_valkey", "url": ...}`` works, see
:mod:`lmcache_valkey.lmcache.registration`.

Data path: one pipelined batch per task (``SET ... PX``, ``GET`` into the
MemoryObj's own bytes, ``EXISTS``/``PEXPIRE`` for lookups), tiled across the
client's connections; completion comes back on a client worker thread, which
publishes the result and signals the task kind's eventfd.

Keys are ``<key_prefix><model>@<kv_rank:08x>@<object_group_id:x>@<chunk_hash hex>``
plus ``@<cache_salt>`` for salted keys -- the wire format of LMCache's own
native connectors (``resp``), so with an empty prefix both adapters address
the same keys.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import torch
from lmcache.lmcache_native import Bitmap
from lmcache.v1.distributed.api import EncodedObjectKey, KeyEntry, KeyListPage, ObjectKey
from lmcache.v1.distributed.internal_api import L2StoreResult
from lmcache.v1.distributed.l2_adapters.base import L2AdapterInterface, L2TaskId
from lmcache.v1.distributed.l2_adapters.config import L2AdapterConfigBase
from lmcache.v1.platform import create_event_notifier

from ..client.factory import AnyClient, open_client
from ..client.prefix_scan import PrefixScan
from ..errors import ClientClosedError, ConfigError, partial_results
from ..integration_options import IntegrationOptions
from ..observability.ratelimited_log import RateLimitedLog

if TYPE_CHECKING:
    from lmcache.v1.distributed.api import MemoryLayoutDesc
    from lmcache.v1.memory_management import MemoryObj

log = logging.getLogger(__name__)

#: Type name used by :func:`lmcache_valkey.lmcache.register` and in status reports.
TYPE_NAME = "lmcache_valkey"
DEFAULT_KEY_PREFIX = "lmcache:"

#: Keys of an ``--l2-adapter`` JSON object that LMCache itself reads (the short
#: ``{"type": "lmcache_valkey", ...}`` form hands them to ``from_dict`` too).
_LMCACHE_KEYS = frozenset({"type", "affinity_tag", "shared", "eviction",
                           "persist_enabled", "serde"})
OPTIONS = IntegrationOptions(
    owner="ValkeyL2Adapter", own=frozenset({"url", "max_capacity_gb"}),
    key_prefix=DEFAULT_KEY_PREFIX, ttl_s=None,
    missing_server=("url is required (e.g. valkey://127.0.0.1:6379), or host / unix_path, "
                    "or VALKEY_HOST in the environment"))

_KEY_SEP = "@"


# -- keys ---------------------------------------------------------------------


def encode_object_key(key: ObjectKey) -> bytes:
    """The stable wire name of an ObjectKey (without the prefix).

    Every field that tells data apart is in it: model, KV rank, object group,
    chunk hash and (when set) cache salt. ``@`` cannot occur in a model name
    or a salt (ObjectKey rejects it), so the encoding is unambiguous, and it
    uses no per-process hashing, so every process computes the same name.
    """
    name = (f"{key.model_name}{_KEY_SEP}{key.kv_rank:08x}{_KEY_SEP}"
            f"{key.object_group_id:x}{_KEY_SEP}{key.chunk_hash.hex()}")
    if key.cache_salt:
        name = f"{name}{_KEY_SEP}{key.cache_salt}"
    return name.encode()


def decode_object_key(name: bytes) -> EncodedObjectKey | None:
    """Inverse of :func:`encode_object_key`; ``None`` for foreign names."""
    try:
        parts = name.decode().split(_KEY_SEP)
        if len(parts) not in (4, 5):
            return None
        model, rank, group, chunk = parts[:4]
        bytes.fromhex(chunk)  # validates
        return EncodedObjectKey(chunk_hash_hex=chunk, model_name=model,
                                kv_rank=int(rank, 16), object_group_id=int(group, 16),
                                cache_salt=parts[4] if len(parts) == 5 else "")
    except (UnicodeDecodeError, ValueError):
        return None


# -- buffers ------------------------------------------------------------------


def _byte_view(obj: MemoryObj) -> Any:
    """A zero-copy, writable, flat uint8 view of the object's logical bytes.

    For a ``TensorMemoryObj`` it is a numpy view of ``raw_data``: it keeps the
    tensor's storage alive by itself. Other objects expose ``byte_array``.
    Raises ValueError for memory the client cannot address (GPU, strided).
    """
    nbytes = obj.get_size()
    raw = getattr(obj, "raw_data", None)
    if isinstance(raw, torch.Tensor):
        if not raw.is_cpu:
            raise ValueError(f"MemoryObj lives on {raw.device}; L2 needs CPU memory")
        if not raw.is_contiguous():
            raise ValueError("MemoryObj tensor is not contiguous")
        if raw.dtype is not torch.uint8:  # L1 hands out flat uint8; others are views
            raw = raw.detach().reshape(-1).view(torch.uint8)
        arr = raw.numpy()  # shares the tensor's memory and keeps it alive
        if arr.ndim != 1:
            arr = arr.reshape(-1)
        if arr.size < nbytes:
            raise ValueError(f"MemoryObj has {arr.size} bytes, claims {nbytes}")
        return arr[:nbytes]
    view = memoryview(obj.byte_array)
    if view.nbytes != nbytes:
        raise ValueError(f"MemoryObj byte_array has {view.nbytes} bytes, claims {nbytes}")
    return view


# -- config -------------------------------------------------------------------


class ValkeyL2AdapterConfig(L2AdapterConfigBase):
    """Configuration of :class:`ValkeyL2Adapter`.

    ``url`` (``valkey://[user:password@]host:port[/db]``, ``redis://``, or
    ``unix:///path.sock``) is required unless ``host``/``unix_path`` or
    ``VALKEY_HOST`` give the server. ``key_prefix`` defaults to ``"lmcache:"``
    (``""`` for none). ``ttl_s`` defaults to ``None`` (as does ``0``): keys
    never expire, so the server's ``maxmemory-policy`` (e.g. ``allkeys-lru``) or LMCache's own
    eviction (``max_capacity_gb`` > 0 plus an ``eviction`` block) must bound
    memory; with a TTL every store sets ``PX`` and every lookup hit renews it.
    ``max_capacity_gb`` (default 0 = no LMCache-driven global eviction) is the
    capacity the adapter declares to LMCache. Every other
    :class:`~lmcache_valkey.ClientConfig` option passes through to the
    client (``num_connections``, ``connect_timeout_s``, ``op_timeout_s``,
    ``username``, ``password``, ``db``, ``max_inflight_bytes`` ...).

    Secrets: this class never shows the password (reprs, logs, errors, status
    and LMCache's ``GET /config`` dump of it). But with the plugin route
    LMCache keeps ``adapter_params`` verbatim and serves them at ``GET
    /config``, and ``lmcache bench l2`` prints its JSON: give the password in
    ``VALKEY_PASSWORD`` (and the user in ``VALKEY_USERNAME``), not in the URL.
    """

    def __init__(self, url: str | None = None, *, max_capacity_gb: float = 0.0,
                 **options: Any) -> None:
        OPTIONS.check_names(options)  # url and max_capacity_gb are taken out already
        if (isinstance(max_capacity_gb, bool) or not isinstance(max_capacity_gb, (int, float))
                or not max_capacity_gb >= 0):
            raise ConfigError(f"{OPTIONS.owner}: max_capacity_gb must be a number >= 0, "
                              f"not {max_capacity_gb!r}")
        self.client_config = OPTIONS.client_config(url, options)
        self.max_capacity_gb = float(max_capacity_gb)

    # -- LMCache config protocol ------------------------------------------

    @classmethod
    def from_dict(cls, d: dict) -> ValkeyL2AdapterConfig:
        if not isinstance(d, Mapping):
            raise ConfigError(f"adapter params must be a JSON object, not {type(d).__name__}")
        params = {k: v for k, v in d.items() if k not in _LMCACHE_KEYS}
        url = params.pop("url", None)
        max_capacity_gb = params.pop("max_capacity_gb", 0.0)
        return cls(url, max_capacity_gb=max_capacity_gb, **params)

    @classmethod
    def help(cls) -> str:
        return (
            "lmcache_valkey L2 adapter (Valkey/Redis through lmcache_valkey's "
            "zero-copy client) fields:\n"
            "- url (str): valkey://[user:pass@]host:port[/db], redis://..., "
            "unix:///path.sock, or valkey+cluster://host:port[,host:port...] for a "
            "Valkey Cluster (required unless host/unix_path/VALKEY_HOST)\n"
            f"- key_prefix (str, default {DEFAULT_KEY_PREFIX!r}): prepended to every key\n"
            "- ttl_s (float, default none = keys never expire; 0 too): expiry of stored "
            "chunks; a lookup hit renews it\n"
            "- num_connections (int, default 2): connections/threads a batch is "
            "tiled across\n"
            "- connect_timeout_s (float, default 5), op_timeout_s (float, default 30)\n"
            "- username, password, db: also from the URL or VALKEY_USERNAME / "
            "VALKEY_PASSWORD / VALKEY_DB (prefer the environment for secrets)\n"
            "- max_capacity_gb (float, default 0 = LMCache does no global "
            "eviction; let the server's maxmemory-policy evict)\n"
            "- also: max_inflight_bytes, max_bulk_len, socket_buffer_bytes, "
            "reconnect_backoff_s, reconnect_backoff_max_s, host, port, unix_path\n"
            'Example: {"type": "plugin", "module_path": "lmcache_valkey.lmcache", '
            '"class_name": "ValkeyL2Adapter", "config_class_name": '
            '"ValkeyL2AdapterConfig", "adapter_params": {"url": '
            '"valkey://127.0.0.1:6379", "ttl_s": 86400}}'
        )

    # -- derived ----------------------------------------------------------

    @property
    def key_prefix(self) -> bytes:
        return self.client_config.key_prefix

    @property
    def ttl_s(self) -> float | None:
        return self.client_config.ttl_s

    @property
    def num_connections(self) -> int:
        return self.client_config.num_connections

    def create_client(self) -> AnyClient:
        """A ValkeyClient, or a ValkeyClusterClient for a cluster URL / cluster=true."""
        return open_client(config=self.client_config)

    def __repr__(self) -> str:
        c = self.client_config
        return (f"ValkeyL2AdapterConfig(url={c.redacted_url()!r}, key_prefix={c.key_prefix!r}, "
                f"ttl_s={c.ttl_s}, num_connections={c.num_connections}, "
                f"max_capacity_gb={self.max_capacity_gb})")

    __str__ = __repr__


# -- adapter ------------------------------------------------------------------

_STORE, _LOOKUP, _LOAD = "store", "lookup", "load"


@dataclasses.dataclass(slots=True, eq=False)
class _Task:
    """One submitted task. Holds the MemoryObjs and their byte views until the
    client's future is done, so no buffer is released while a worker may
    still write into it, even if LMCache never asks for the result."""

    kind: str
    task_id: int
    keys: list[ObjectKey]
    objects: list[MemoryObj] | None
    views: list[Any] | None = None
    sizes: list[int] | None = None
    future: Future[Any] | None = None


class ValkeyL2Adapter(L2AdapterInterface):
    """L2 adapter storing LMCache chunks in Valkey (or Redis) with lmcache_valkey.

    * **Store**: one pipelined ``SET key value [PX ttl]`` batch, sent straight
      from each MemoryObj's memory. Coarse result (LMCache's contract): the
      task succeeds only if every key was stored.
    * **Lookup and lock**: Valkey has no lock to take. "Lock" here means
      *renew the TTL*: each key found gets its full ``ttl_s`` again
      (``PEXPIRE``, same round trip as the existence check), so it cannot
      expire between the lookup and the load that follows. Nothing stops the
      server's ``maxmemory`` eviction, another client or :meth:`delete` from
      removing a looked-up key; the load then reports that key as failed,
      which LMCache handles. :meth:`submit_unlock` is therefore a no-op.
    * **Load**: ``GET`` received in place into each MemoryObj. A key counts as
      loaded only if its stored value has exactly the object's byte size.
    * Failures (server down, timeouts, closed adapter, bad buffers) complete
      the task as failed -- zero bits, unsuccessful store -- and are logged at
      most every few seconds; nothing raises into LMCache. The client
      reconnects by itself.
    * Thread safety: the submit/query/pop methods may be called from any
      thread; results are published under one lock and each task kind signals
      its own eventfd.
    * Byte accounting goes through ``_notify_keys_stored`` /
      ``_notify_keys_deleted`` (first store of a key counts its size; keys
      whose TTL ran out are reported deleted). Keys removed by the server's
      own eviction are not seen.
    """

    def __init__(self, config: ValkeyL2AdapterConfig | Mapping[str, Any],
                 l1_memory_desc: Any = None, **_unused: Any) -> None:
        # LMCache's plugin loader passes a config instance, or the raw
        # adapter_params dict when it finds no config class.
        if isinstance(config, Mapping):
            config = ValkeyL2AdapterConfig.from_dict(dict(config))
        elif not isinstance(config, ValkeyL2AdapterConfig):
            raise TypeError(f"ValkeyL2Adapter needs a ValkeyL2AdapterConfig or a dict, "
                            f"not {type(config).__name__}")
        super().__init__(max_capacity_bytes=int(config.max_capacity_gb * (1024 ** 3)))
        self._config = config
        self._ttl_s = config.ttl_s
        self._wait_s = config.client_config.connect_timeout_s + config.client_config.op_timeout_s
        self._log = RateLimitedLog(log)

        self._lock = threading.Lock()
        self._next_task_id = 0
        self._closed = False
        self._fds_closed = False
        self._completed_stores: dict[L2TaskId, L2StoreResult] = {}
        self._completed_lookups: dict[L2TaskId, Bitmap] = {}
        self._completed_loads: dict[L2TaskId, Bitmap] = {}
        self._inflight: dict[L2TaskId, _Task] = {}
        # key -> [size, expiry deadline]; ordered by deadline (every update
        # moves the key to the end with now + ttl), so expired keys sit first.
        self._stored: collections.OrderedDict[ObjectKey, list[float]] = collections.OrderedDict()
        self._counts = collections.Counter[str]()
        self._last_error = ""
        self._last_error_at = 0.0
        self._last_ok_at = 0.0

        self._client = config.create_client()  # connects lazily: never fails on a down server
        self._store_efd = create_event_notifier()
        self._lookup_efd = create_event_notifier()
        self._load_efd = create_event_notifier()
        self._notifiers = {_STORE: self._store_efd, _LOOKUP: self._lookup_efd,
                           _LOAD: self._load_efd}
        log.info("ValkeyL2Adapter: %r", config)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"ValkeyL2Adapter({self._config!r}, {state})"

    # -- event fds ----------------------------------------------------------

    def get_store_event_fd(self) -> int:
        return self._store_efd.fileno()

    def get_lookup_and_lock_event_fd(self) -> int:
        return self._lookup_efd.fileno()

    def get_load_event_fd(self) -> int:
        return self._load_efd.fileno()

    # -- submit / query -----------------------------------------------------

    def submit_store_task(self, keys: list[ObjectKey], objects: list[MemoryObj]) -> L2TaskId:
        return self._submit(_STORE, keys, objects,
                            lambda wire, views: self._client.submit_batch_set(wire, views))

    def pop_completed_store_tasks(self) -> dict[L2TaskId, L2StoreResult]:
        with self._lock:
            done, self._completed_stores = self._completed_stores, {}
        return done

    def submit_lookup_and_lock_task(self, keys: list[ObjectKey],
                                    group_layout_descs: dict[int, MemoryLayoutDesc] | None = None
                                    ) -> L2TaskId:
        return self._submit(
            _LOOKUP, keys, None,
            lambda wire, _: self._client.submit_batch_exists(wire, refresh_ttl=True))

    def query_lookup_and_lock_result(self, task_id: L2TaskId) -> Bitmap | None:
        with self._lock:
            return self._completed_lookups.pop(task_id, None)

    def submit_unlock(self, keys: list[ObjectKey]) -> None:
        """No-op: the "lock" is the TTL renewal done by the lookup."""
        return None

    def submit_load_task(self, keys: list[ObjectKey], objects: list[MemoryObj]) -> L2TaskId:
        return self._submit(_LOAD, keys, objects,
                            lambda wire, views: self._client.submit_batch_get_into(wire, views))

    def query_load_result(self, task_id: L2TaskId) -> Bitmap | None:
        with self._lock:
            return self._completed_loads.pop(task_id, None)

    def _submit(self, kind: str, keys: Sequence[ObjectKey], objects: Sequence[MemoryObj] | None,
                start: Callable[[list[bytes], list[Any]], Future[Any]]) -> L2TaskId:
        with self._lock:
            task_id = self._next_task_id
            self._next_task_id += 1
            self._counts[f"{kind}_tasks"] += 1
        task = _Task(kind, task_id, list(keys), None if objects is None else list(objects))
        try:
            if self._closed:
                raise ClientClosedError("adapter is closed")
            wire = [encode_object_key(k) for k in task.keys]
            if task.objects is not None:
                if len(task.objects) != len(wire):
                    raise ValueError(f"{len(wire)} keys but {len(task.objects)} objects")
                task.views = [_byte_view(o) for o in task.objects]
                task.sizes = [int(v.nbytes) for v in task.views]
            with self._lock:
                self._inflight[task_id] = task
            task.future = start(wire, task.views or [])  # (a lookup has no views)
        except Exception as e:  # never into LMCache: the task fails instead
            self._finish(task, None, e)
            return task_id
        task.future.add_done_callback(functools.partial(self._on_done, task))
        return task_id

    # -- completion (client worker threads) ---------------------------------

    def _on_done(self, task: _Task, fut: Future[Any]) -> None:
        try:
            exc = fut.exception()
            values = fut.result() if exc is None else getattr(exc, "partial", None)
        except BaseException as e:  # cancelled: not expected, still a failure
            values, exc = None, e
        self._finish(task, values, exc)

    def _finish(self, task: _Task, values: Sequence[Any] | None, exc: BaseException | None) -> None:
        """Publish a task's result, tell the listeners, then signal the kind's
        eventfd. Never raises."""
        n = len(task.keys)
        if values is None or len(values) != n:
            values = [None] * n
        stored: list[ObjectKey] = []
        stored_sizes: list[int] = []
        accessed: list[ObjectKey] = []
        expired: tuple[list[ObjectKey], list[int]] = ([], [])
        try:
            if exc is not None:
                self._record_error(task.kind, exc)
            now = time.monotonic()
            if task.kind == _STORE:
                sizes = task.sizes or [0] * n
                ok = [v is True for v in values]
                written = sum(s for s, k in zip(sizes, ok, strict=True) if k)
                success = exc is None and all(ok)
                with self._lock:
                    for key, size, k in zip(task.keys, sizes, ok, strict=True):
                        if k:
                            stored_sizes.append(self._track(key, size, now))
                            stored.append(key)
                    expired = self._expire(now)
                    self._completed_stores[task.task_id] = L2StoreResult(success, written)
                    self._settle(task, exc)
            else:
                bitmap = Bitmap(n)
                if task.kind == _LOOKUP:
                    hits = [i for i, v in enumerate(values) if v is True]
                else:
                    sizes = task.sizes or [-1] * n
                    hits = [i for i, v in enumerate(values)
                            if type(v) is int and v == sizes[i]]
                for i in hits:
                    bitmap.set(i)
                with self._lock:
                    if task.kind == _LOOKUP:
                        if self._ttl_s is not None:
                            for i in hits:
                                self._renew(task.keys[i], now)
                        self._completed_lookups[task.task_id] = bitmap
                    else:
                        accessed = [task.keys[i] for i in hits]
                        self._completed_loads[task.task_id] = bitmap
                    self._settle(task, exc)
        except Exception:  # a bug here must not leave LMCache waiting forever
            log.exception("ValkeyL2Adapter: publishing %s task %d failed", task.kind, task.task_id)
            with self._lock:
                if task.kind == _STORE:
                    self._completed_stores[task.task_id] = L2StoreResult(False, 0)
                elif task.kind == _LOOKUP:
                    self._completed_lookups[task.task_id] = Bitmap(n)
                else:
                    self._completed_loads[task.task_id] = Bitmap(n)
                self._settle(task, exc)
        # Listeners run outside the lock, and before the eventfd fires, so the
        # byte accounting is current when LMCache sees the task done.
        try:
            if stored:
                self._notify_keys_stored(stored, stored_sizes)
            if expired[0]:
                self._notify_keys_deleted(*expired)
            if accessed:
                self._notify_keys_accessed(accessed)
        except Exception:
            log.exception("ValkeyL2Adapter: an L2 listener failed")
        with self._lock:
            if not self._fds_closed:  # a closed fd number may belong to someone else now
                with contextlib.suppress(OSError):
                    self._notifiers[task.kind].notify()

    def _settle(self, task: _Task, exc: BaseException | None) -> None:
        """Under the lock, with the result published: drop the task's buffers."""
        self._inflight.pop(task.task_id, None)
        # The transfer is over: release the MemoryObjs (the finished future
        # still references this task through its done-callback).
        task.objects = task.views = None
        if exc is None:
            self._last_ok_at = time.monotonic()
        else:
            self._counts[f"{task.kind}_failed"] += 1

    def _record_error(self, kind: str, exc: BaseException) -> None:
        text = f"{type(exc).__name__}: {exc}"  # our errors never carry secrets
        with self._lock:
            self._last_error = text
            self._last_error_at = time.monotonic()
        self._log.warning(kind, "ValkeyL2Adapter: %s task failed on %s: %s", kind,
                          self._config.client_config.endpoint, text)

    # -- byte accounting (under self._lock) ---------------------------------

    def _deadline(self, now: float) -> float:
        return math.inf if self._ttl_s is None else now + self._ttl_s

    def _track(self, key: ObjectKey, size: int, now: float) -> int:
        """Record a stored key; returns the bytes it adds to the usage."""
        entry = self._stored.get(key)
        if entry is not None:  # re-store: LMCache counts a key once
            entry[1] = self._deadline(now)
            self._stored.move_to_end(key)
            return 0
        self._stored[key] = [size, self._deadline(now)]
        return size

    def _renew(self, key: ObjectKey, now: float) -> None:
        entry = self._stored.get(key)
        if entry is not None:
            entry[1] = self._deadline(now)
            self._stored.move_to_end(key)

    def _expire(self, now: float) -> tuple[list[ObjectKey], list[int]]:
        keys: list[ObjectKey] = []
        sizes: list[int] = []
        if self._ttl_s is None:
            return keys, sizes
        while self._stored:
            key, entry = next(iter(self._stored.items()))
            if entry[1] > now:
                break
            self._stored.popitem(last=False)
            keys.append(key)
            sizes.append(int(entry[0]))
        return keys, sizes

    # -- optional interface ---------------------------------------------------

    def delete(self, keys: list[ObjectKey]) -> None:
        """Delete keys (synchronously, bounded by the client's timeouts)."""
        if not keys or self._closed:
            return
        keys = list(keys)
        removed: list[Any]
        try:
            fut = self._client.submit_batch_delete([encode_object_key(k) for k in keys])
            removed = fut.result(timeout=self._wait_s)
        except Exception as e:
            removed = partial_results(e, len(keys))
            self._record_error("delete", e)
        deleted: list[ObjectKey] = []
        sizes: list[int] = []
        with self._lock:
            for key, r in zip(keys, removed, strict=True):
                entry = self._stored.pop(key, None) if r else None
                if entry is not None:
                    deleted.append(key)
                    sizes.append(int(entry[0]))
        if deleted:
            try:
                self._notify_keys_deleted(deleted, sizes)
            except Exception:
                log.exception("ValkeyL2Adapter: an L2 listener failed")

    def get_usage(self) -> Any:
        with self._lock:
            expired = self._expire(time.monotonic())
        if expired[0]:
            self._notify_keys_deleted(*expired)
        return super().get_usage()

    def list_l2_keys(self, model_name: str | None = None, page_size: int = 500,
                     cursor: str | None = None) -> KeyListPage:
        """One page of this adapter's keys, from a bounded ``SCAN``.

        ``cursor`` is the SCAN cursor from the previous page. A page holds
        about ``page_size`` entries (SCAN may return a few more); sizes come
        from ``STRLEN``.
        """
        if page_size <= 0:
            raise ValueError(f"page_size must be positive (got {page_size})")
        start = "0" if cursor is None else str(cursor)
        if not start.replace(":", "").isdigit():  # "N" (one server) or "node:N" (cluster)
            raise ValueError(f"malformed cursor {cursor!r}")
        prefix = self._config.key_prefix
        under = prefix if model_name is None else prefix + model_name.encode() + _KEY_SEP.encode()
        # Bounded (64 steps): SCAN may return empty batches for a long while.
        scan = PrefixScan(self._client, under, limit=64 * page_size, count=page_size,
                          cursor=start)
        names: list[bytes] = []
        for found in scan:
            names.extend(found)
            if len(names) >= page_size:
                break
        entries = []
        for name in names:
            ekey = decode_object_key(name[len(prefix):])
            if ekey is None:
                continue
            size = self._client.execute_on_key(name, "STRLEN", name)
            entries.append(KeyEntry(key=ekey, size_bytes=int(size)))
        token = None if scan.cursor == "0" else scan.cursor
        return KeyListPage(entries=tuple(entries), next_page_token=token)

    def report_status(self) -> dict[str, Any]:
        usage = self.get_usage()
        with self._lock:
            failing = self._last_error_at > self._last_ok_at
            status: dict[str, Any] = {
                "is_healthy": not self._closed and not failing,
                "type": TYPE_NAME,
                "server": self._config.client_config.redacted_url(),
                "key_prefix": self._config.key_prefix.decode(errors="replace"),
                "ttl_s": self._ttl_s,
                "num_connections": self._config.num_connections,
                "inflight_tasks": len(self._inflight),
                "tracked_keys": len(self._stored),
                "last_error": self._last_error,
                "current_size_bytes": usage.total_bytes_used,
                "max_capacity_bytes": usage.total_capacity_bytes,
                "usage_fraction": usage.usage_fraction,
                "closed": self._closed,
            }
            status.update(self._counts)
        status["client"] = self._client.stats().summary()
        return status

    def close(self) -> None:
        """Stop the client (tasks still running complete as failed and are
        signalled), then close the eventfds. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._client.close()  # joins the workers: every future is done after this
        except Exception:
            log.exception("ValkeyL2Adapter: closing the client failed")
        with self._lock:
            self._fds_closed = True
            for notifier in self._notifiers.values():
                notifier.close()
        log.info("ValkeyL2Adapter closed (%s)", self._config.client_config.endpoint)


def create_adapter(config: L2AdapterConfigBase, l1_memory_desc: Any = None) -> ValkeyL2Adapter:
    """LMCache factory (``(config, l1_memory_desc) -> adapter``)."""
    if not isinstance(config, ValkeyL2AdapterConfig):
        raise TypeError(f"expected ValkeyL2AdapterConfig, got {type(config).__name__}")
    return ValkeyL2Adapter(config, l1_memory_desc=l1_memory_desc)
