"""HiCache's L3 operations on our client, without importing SGLang.

:class:`ValkeyPageStore` does all the work of the SGLang backend
(:mod:`lmcache_valkey.sglang.storage` only adds SGLang's base class and its
metrics type), so it can be tested against a fake host pool where SGLang is
not installed.

- Zero-copy (``batch_set_v1``/``batch_get_v1``): one value per page, sent
  from and received into the host pool's own memory as a scatter list
  (:mod:`~lmcache_valkey.sglang.page_memory`); one pipelined batch per call,
  tiled across the client's connections with the GIL released. A stored
  value of another length than the page is a miss (never half a page).
- Generic (``get``/``set``/``batch_get``/``batch_set``/``exists``): the
  flat page tensors SGLang passes are sent from and received into directly.
- ``batch_exists``: one pipelined ``EXISTS``/``PEXPIRE`` batch; the count of
  leading pages present, each of which gets its TTL renewed so it cannot
  expire between this lookup and the prefetch that follows.

SGLang's threads (prefetch, backup, the scheduler) call in concurrently; the
client is thread-safe. Nothing raises into SGLang: a failure is a miss or an
unstored page (``False``/``0``/``None``), logged at most once per topic every
10 s; the client reconnects by itself once the server is back.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from ..client.prefix_delete import delete_prefix
from ..errors import partial_results
from ..observability.ratelimited_log import RateLimitedLog
from ..observability.server_stats import ServerFacts, server_stats
from ..protocol.buffers import as_native_buffer, buffer_nbytes
from .config import HiCacheValkeyConfig
from .keys import page_namespace
from .page_memory import PoolMemory, value_nbytes

log = logging.getLogger(__name__)

#: Per-operation samples kept for get_stats between two reads (SGLang reads
#: them every few seconds when --enable-metrics is on; the bound keeps memory
#: flat when it does not).
_MAX_SAMPLES = 4096
_UNLINK_BATCH = 1000

F = TypeVar("F", bound=Callable[..., Any])


def _never_raises(failed: Callable[..., Any]) -> Callable[[F], F]:
    """Turn any exception of the wrapped call into ``failed(*args)``, logged."""
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def call(self: ValkeyPageStore, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(self, *args, **kwargs)
            except Exception as e:
                self._log.warning(fn.__name__, "ValkeyHiCacheStorage.%s failed: %s: %s",
                                  fn.__name__, type(e).__name__, e)
                return failed(*args)
        return call  # type: ignore[return-value]
    return wrap


def _all_false(keys: Sequence[Any], *_: Any) -> list[bool]:
    return [False] * len(keys)


def _all_none(keys: Sequence[Any], *_: Any) -> list[None]:
    return [None] * len(keys)


class OpSamples:
    """Pages and GB/s per operation, taken (and cleared) by ``take``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.prefetch_pgs: collections.deque[int] = collections.deque(maxlen=_MAX_SAMPLES)
        self.prefetch_bandwidth: collections.deque[float] = collections.deque(maxlen=_MAX_SAMPLES)
        self.backup_pgs: collections.deque[int] = collections.deque(maxlen=_MAX_SAMPLES)
        self.backup_bandwidth: collections.deque[float] = collections.deque(maxlen=_MAX_SAMPLES)
        # Since start: what tests, logs and `totals` read.
        self.totals = collections.Counter[str]()

    def record(self, kind: str, pages: int, nbytes: int, seconds: float, failed: int) -> None:
        gbps = nbytes / seconds / 1e9 if seconds > 0 else 0.0
        with self._lock:
            if kind == "prefetch":
                self.prefetch_pgs.append(pages)
                self.prefetch_bandwidth.append(gbps)
            else:
                self.backup_pgs.append(pages)
                self.backup_bandwidth.append(gbps)
            self.totals[f"{kind}_pages"] += pages
            self.totals[f"{kind}_bytes"] += nbytes
            self.totals[f"{kind}_failed_pages"] += failed

    def take(self) -> dict[str, list[Any]]:
        with self._lock:
            out = {name: list(getattr(self, name)) for name in
                   ("prefetch_pgs", "backup_pgs", "prefetch_bandwidth", "backup_bandwidth")}
            for name in out:
                getattr(self, name).clear()
        return out


class ValkeyPageStore:
    """The backend's state and operations (see the module docstring).

    ``storage_config`` is SGLang's ``HiCacheStorageConfig`` (or anything with
    its fields); its ``extra_config`` holds our options.
    """

    def __init__(self, storage_config: Any, env: Mapping[str, str] | None = None) -> None:
        self._log = RateLimitedLog(log)
        self.storage_config = storage_config
        self.config = HiCacheValkeyConfig.from_extra_config(
            getattr(storage_config, "extra_config", None), env=env)
        self.client = self.config.create_client()
        self.samples = OpSamples()
        self._namespace: str | None = None
        self._memory: PoolMemory | None = None
        self._page_nbytes = 0
        self.mem_pool_host: Any = None
        log.info("ValkeyHiCacheStorage: %r", self.config)

    # -- set-up --------------------------------------------------------------

    def register_pool(self, pool: Any) -> None:
        """Name the keys after the pool's format and map its memory."""
        is_mla = bool(getattr(self.storage_config, "is_mla_model", False))
        self.mem_pool_host = pool
        self._namespace = page_namespace(self.storage_config, pool)
        try:
            self._memory = PoolMemory(pool, is_mla)
        except Exception as e:  # no zero-copy on this pool; the generic path still works
            self._memory = None
            log.warning("ValkeyHiCacheStorage: cannot map the host pool's memory for "
                        "zero-copy I/O (%s); use interface_v1=0", e)
        log.info("ValkeyHiCacheStorage: keys %s<page hash> (prefix %r)", self._namespace,
                 self.config.client_config.key_prefix.decode(errors="replace"))

    @property
    def namespace(self) -> str:
        if self._namespace is None:
            raise RuntimeError("no host pool registered yet (register_mem_pool_host)")
        return self._namespace

    def _keys(self, keys: Sequence[str]) -> list[str]:
        ns = self.namespace
        return [ns + k for k in keys]

    def _page_runs(self, keys: Sequence[str], host_indices: Any) -> list[list[memoryview]]:
        if self._memory is None:
            raise RuntimeError("zero-copy I/O is not available for this host pool "
                               "(see the warning at registration); use interface_v1=0")
        return self._memory.page_values(host_indices, len(keys))

    # -- zero-copy -------------------------------------------------------------

    @_never_raises(_all_false)
    def batch_set_v1(self, keys: Sequence[str], host_indices: Any,
                     extra_info: Any = None) -> list[bool]:
        if not keys:
            return []
        return self._set(keys, self._page_runs(keys, host_indices))

    @_never_raises(_all_false)
    def batch_get_v1(self, keys: Sequence[str], host_indices: Any,
                     extra_info: Any = None) -> list[bool]:
        if not keys:
            return []
        runs = self._page_runs(keys, host_indices)
        return self._get(keys, runs, [value_nbytes(r) for r in runs])

    # -- generic (flat page tensors) ------------------------------------------

    @_never_raises(_all_none)
    def batch_get(self, keys: Sequence[str], target_locations: Any = None,
                  target_sizes: Any = None) -> list[Any]:
        if not keys:
            return []
        dests = self._generic_targets(keys, target_locations, target_sizes)
        ok = self._get(keys, dests, [buffer_nbytes(as_native_buffer(d)) for d in dests])
        return [d if good else None for d, good in zip(dests, ok, strict=True)]

    def get(self, key: str, target_location: Any = None, target_sizes: Any = None) -> Any:
        return self.batch_get([key], None if target_location is None else [target_location],
                              None if target_sizes is None else [target_sizes])[0]

    @_never_raises(lambda keys, *_: False)
    def batch_set(self, keys: Sequence[str], values: Any = None, target_locations: Any = None,
                  target_sizes: Any = None) -> bool:
        if not keys:
            return True
        sources = values if values is not None else \
            self._generic_targets(keys, target_locations, target_sizes)
        if len(sources) != len(keys):
            raise ValueError(f"{len(keys)} keys but {len(sources)} values")
        return all(self._set(keys, list(sources)))

    def set(self, key: str, value: Any = None, target_location: Any = None,
            target_sizes: Any = None) -> bool:
        return self.batch_set([key], None if value is None else [value],
                              None if target_location is None else [target_location],
                              None if target_sizes is None else [target_sizes])

    def _generic_targets(self, keys: Sequence[str], locations: Any, sizes: Any) -> list[Any]:
        """Where generic values live: tensors/buffers as given, raw host-pool
        addresses (with sizes) as views, or fresh flat pages of the pool."""
        if locations is None:
            if self.mem_pool_host is None:
                raise RuntimeError("no host pool registered yet (register_mem_pool_host)")
            return [self.mem_pool_host.get_dummy_flat_data_page() for _ in keys]
        if len(locations) != len(keys):
            raise ValueError(f"{len(keys)} keys but {len(locations)} target locations")
        out = []
        for i, loc in enumerate(locations):
            if isinstance(loc, int):
                if self._memory is None or sizes is None:
                    raise ValueError("a raw address needs target_sizes and a mapped host pool")
                out.append(self._memory.view(loc, int(sizes[i])))
            else:
                out.append(loc)
        return out

    # -- lookups ---------------------------------------------------------------

    @_never_raises(lambda keys, *_: 0)
    def batch_exists(self, keys: Sequence[str], extra_info: Any = None) -> int:
        if not keys:
            return 0
        try:
            found = list(self.client.batch_exists(self._keys(keys), refresh_ttl=True))
        except Exception as e:
            found = partial_results(e, len(keys))  # a cluster's healthy nodes still count
            self._log.warning("batch_exists", "ValkeyHiCacheStorage: lookup of %d pages "
                              "failed: %s", len(keys), e)
        for i, here in enumerate(found):
            if here is not True:
                return i
        return len(keys)

    def exists(self, key: str) -> bool:
        return self.batch_exists([key]) == 1

    # -- the two transfers ---------------------------------------------------------

    def _set(self, keys: Sequence[str], values: list[Any]) -> list[bool]:
        start = time.perf_counter()
        try:
            result = self.client.batch_set(self._keys(keys), values)
            results, errors = list(result), result.errors
        except Exception as e:
            results = partial_results(e, len(keys))
            errors = None
            self._log.warning("set", "ValkeyHiCacheStorage: storing %d pages failed: %s",
                              len(keys), e)
        ok = [r is True for r in results]
        stored = sum(ok)
        if stored < len(keys) and errors:
            self._log.warning("set-refused", "ValkeyHiCacheStorage: %d of %d pages not "
                              "stored (e.g. %s)", len(keys) - stored, len(keys),
                              next(iter(errors.values())))
        nbytes = sum(buffer_nbytes(as_native_buffer(v))
                     for v, good in zip(values, ok, strict=True) if good)
        self.samples.record("backup", stored, nbytes, time.perf_counter() - start,
                            len(keys) - stored)
        return ok

    def _get(self, keys: Sequence[str], dests: list[Any], expected: list[int]) -> list[bool]:
        start = time.perf_counter()
        try:
            sizes = list(self.client.batch_get_into(self._keys(keys), dests))
        except Exception as e:
            sizes = partial_results(e, len(keys))
            self._log.warning("get", "ValkeyHiCacheStorage: loading %d pages failed: %s",
                              len(keys), e)
        ok = [s == n for s, n in zip(sizes, expected, strict=True)]
        loaded = sum(ok)
        nbytes = sum(n for n, good in zip(expected, ok, strict=True) if good)
        self.samples.record("prefetch", loaded, nbytes, time.perf_counter() - start,
                            len(keys) - loaded)
        return ok

    # -- housekeeping --------------------------------------------------------------

    def totals(self) -> dict[str, int]:
        """Pages and bytes stored/loaded (and pages that failed) since start."""
        return dict(self.samples.totals)

    def server_stats(self) -> ServerFacts:
        """The server(s)' figures: keys under the key prefix (bounded SCAN),
        used memory, hits/misses, connected clients, evictions."""
        return server_stats(self.client, self.config.scan_limit)

    def clear(self) -> int:
        """Remove this rank's pages (``SCAN`` + ``UNLINK`` of its key
        namespace only; never ``KEYS``/``FLUSHALL``). Returns how many."""
        try:
            prefix = self.config.client_config.key_prefix + self.namespace.encode()
            return delete_prefix(self.client, prefix, batch=_UNLINK_BATCH, recount=False).deleted
        except Exception as e:
            self._log.warning("clear", "ValkeyHiCacheStorage.clear failed: %s", e)
            return 0

    def close(self) -> None:
        self.client.close()
