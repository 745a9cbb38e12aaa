"""LMCache non-multiprocess mode: :class:`ValkeyRemoteConnector`.

LMCache loads it as a remote storage plugin; every setting lives in
``extra_config`` under ``remote_storage_plugin.<name>.``, next to the two keys
that tell LMCache what to import::

    chunk_size: 256
    local_cpu: true
    max_local_cpu_size: 5
    remote_serde: naive
    remote_storage_plugins: ["lmcache_valkey"]
    extra_config:
      remote_storage_plugin.lmcache_valkey.module_path: lmcache_valkey.lmcache.remote_connector
      remote_storage_plugin.lmcache_valkey.class_name: ValkeyRemoteConnector
      remote_storage_plugin.lmcache_valkey.url: valkey://127.0.0.1:6379
      remote_storage_plugin.lmcache_valkey.key_prefix: "lmcache:"
      remote_storage_plugin.lmcache_valkey.ttl_s: 86400

Why there and not in ``remote_url``: for a plugin, LMCache 0.5.6 builds the
connector with ``(loop, local_cpu_backend, config)`` only and uses the URL
``plugin://<name>`` internally; a ``remote_url`` set as well makes LMCache
create a *second*, legacy remote backend with its own built-in connector for
that URL. The connector's options are exactly :class:`ClientConfig`'s
(``key_prefix``, ``ttl_s``, ``num_connections``, ``connect_timeout_s``,
``op_timeout_s``, ``username``, ``password``, ``db`` ...) plus ``url`` and
``list_limit``; an unknown one is an error that lists the valid ones.
``op_timeout_s`` defaults to LMCache's ``blocking_timeout_secs``. Passwords
belong in ``VALKEY_PASSWORD`` (LMCache prints ``extra_config`` at start-up).

Plugin names: pick one that LMCache's built-in adapters do not claim first
(``redis*``, ``bigtable*``, ``fs``, ``hf3fs``, ``mooncakestore``, ``hfbucket``);
``lmcache_valkey`` is safe. Several instances (``lmcache_valkey.a``,
``lmcache_valkey.b``) work, each with its own keys.

Data path: one pipelined batch per LMCache call. GETs are received straight
into MemoryObjs allocated from ``local_cpu_backend`` with the chunk's
shape/dtype/format -- no scratch copy. A value is a hit only if it fills the
chunk exactly, or, with ``save_unfull_chunk``, if it is a whole number of
tokens (LMCache's shorter last chunk). Anything else is a miss and the
MemoryObj goes back to the allocator. Lookups and loads never raise into
LMCache (misses instead, logged at most every few seconds); failed stores are
logged. A cancelled load (LMCache's ``blocking_timeout_secs``) keeps its
MemoryObjs until the transfer has really ended, so recycled memory is never
written behind LMCache's back.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import inspect
import logging
from collections.abc import Sequence
from typing import Any

from lmcache.utils import CacheEngineKey
from lmcache.v1.config import LMCacheEngineConfig
from lmcache.v1.memory_management import MemoryObj
from lmcache.v1.storage_backend.connector.base_connector import RemoteConnector

from ..client.factory import AnyClient, open_client
from ..client.prefix_scan import PrefixScan
from ..client.valkey_client import BatchResult
from ..errors import ConfigError, ValkeyError, ValkeyTimeoutError, partial_results
from ..integration_options import CLIENT_OPTIONS, IntegrationOptions
from ..observability.ratelimited_log import RateLimitedLog

log = logging.getLogger(__name__)

#: What the plugin's ``module_path`` may say (the package re-exports the class).
_MODULE_PATHS = frozenset({__name__, __name__.rpartition(".")[0]})
#: Keys LMCache itself reads under ``remote_storage_plugin.<name>.``.
_LOADER_KEYS = frozenset({"module_path", "class_name"})
#: The connector's own options (the loader's keys are valid there too); the
#: rest are ClientConfig's, except the address, which only ``url`` gives.
_CONNECTOR_OPTIONS = frozenset({"url", "list_limit"}) | _LOADER_KEYS
_CLIENT_OPTIONS = CLIENT_OPTIONS - {"host", "port", "unix_path"}

DEFAULT_LIST_LIMIT = 10_000

# lmcache.v1.health_monitor.constants (not imported: keep the import surface small)
_PING_OK = 0
_PING_TIMEOUT = -1
_PING_ERROR = -2


def plugin_option(plugin_name: str, option: str) -> str:
    """The ``extra_config`` key of one option: ``remote_storage_plugin.<name>.<option>``."""
    return f"remote_storage_plugin.{plugin_name}.{option}"


def _caller_connector_context() -> Any:
    """LMCache's ``ConnectorContext`` from the frame that is constructing us.

    LMCache 0.5.6 does not pass ``plugin_name``/``metadata`` to a
    RemoteConnector plugin (``DynamicConnectorAdapter.create_connector``),
    but its ``context`` local holds both. Best effort: None if not found.
    """
    frame = inspect.currentframe()
    try:
        for _ in range(8):
            if frame is None:
                return None
            ctx = frame.f_locals.get("context")
            if type(ctx).__name__ == "ConnectorContext":
                return ctx
            frame = frame.f_back
        return None
    finally:
        del frame


def _release(objs: Sequence[MemoryObj | None]) -> None:
    for obj in objs:
        if obj is not None:
            obj.ref_count_down()


def _release_when_done(objs: list[MemoryObj], task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" noise
    _release(objs)


def _prefix_hits(results: Sequence[Any]) -> int:
    for i, hit in enumerate(results):
        if not hit:
            return i
    return len(results)


class ValkeyRemoteConnector(RemoteConnector):
    """An LMCache ``RemoteConnector`` over :class:`~lmcache_valkey.ValkeyClient`.

    LMCache constructs it (``DynamicConnectorAdapter``) as
    ``ValkeyRemoteConnector(loop=..., local_cpu_backend=..., config=...)``;
    ``plugin_name`` and ``metadata`` may be passed explicitly, otherwise they
    come from LMCache's connector context / the CPU backend.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        local_cpu_backend: Any,
        config: LMCacheEngineConfig,
        *,
        plugin_name: str | None = None,
        metadata: Any = None,
    ) -> None:
        ctx = None
        if plugin_name is None or metadata is None:
            ctx = _caller_connector_context()
        if metadata is None:
            metadata = getattr(local_cpu_backend, "metadata", None)
        if metadata is None and ctx is not None:
            metadata = ctx.metadata
        if metadata is None:
            raise ConfigError(
                "ValkeyRemoteConnector needs LMCache's engine metadata (chunk shape); "
                "it runs in a worker with a local CPU backend, not in the scheduler")
        if plugin_name is None:
            plugin_name = self._plugin_name(config, getattr(ctx, "plugin_name", None))
        self._check_lmcache_config(config, plugin_name)
        super().__init__(config, metadata)

        self.plugin_name = plugin_name
        self.loop = loop
        self.local_cpu_backend = local_cpu_backend
        self._save_unfull_chunk = bool(config.save_unfull_chunk)
        self._log = RateLimitedLog(log)

        spec = self._options_spec(plugin_name)
        options = self._options(config, spec, plugin_name)
        url = options.pop("url", None)
        try:
            self._list_limit = int(options.pop("list_limit", DEFAULT_LIST_LIMIT))
        except (TypeError, ValueError):
            raise ConfigError(f"{plugin_option(plugin_name, 'list_limit')} must be an "
                              "integer") from None
        if (config.blocking_timeout_secs or 0) > 0:
            options.setdefault("op_timeout_s", config.blocking_timeout_secs)
        client_config = spec.client_config(url, options)
        self._client = open_client(config=client_config)  # a cluster URL: a cluster client
        self._ttl_set = client_config.ttl_s is not None
        log.info("lmcache_valkey connector %r: %s, key_prefix=%r, ttl_s=%s, "
                 "num_connections=%d, chunk=%d bytes", plugin_name,
                 client_config.redacted_url(), client_config.key_prefix,
                 client_config.ttl_s, client_config.num_connections,
                 self.full_chunk_size_bytes)

    # -- configuration -----------------------------------------------------

    @classmethod
    def _plugin_name(cls, config: LMCacheEngineConfig, from_context: str | None) -> str:
        if from_context:
            return from_context
        extra = config.extra_config or {}
        ours = [
            name for name in (config.remote_storage_plugins or [])
            if extra.get(plugin_option(name, "module_path")) in _MODULE_PATHS
            and extra.get(plugin_option(name, "class_name")) == cls.__name__
        ]
        if len(ours) == 1:
            return ours[0]
        if not ours:
            raise ConfigError(
                "no entry of remote_storage_plugins is configured with "
                f"remote_storage_plugin.<name>.class_name: {cls.__name__}")
        raise ConfigError(f"several plugins use {cls.__name__} ({ours}); pass plugin_name")

    @staticmethod
    def _check_lmcache_config(config: LMCacheEngineConfig, plugin_name: str) -> None:
        if config.use_layerwise:
            raise ConfigError("lmcache_valkey connector does not support use_layerwise")
        if (config.remote_serde or "naive") != "naive":
            raise ConfigError(
                f"lmcache_valkey connector stores raw KV chunks: remote_serde must be "
                f"'naive', not {config.remote_serde!r}")
        if config.remote_url:
            log.warning(
                "remote_url is set as well as remote_storage_plugins: LMCache creates a "
                "second remote backend for it with its own connector; the lmcache_valkey "
                "connector %r takes its address from %s", plugin_name,
                plugin_option(plugin_name, "url"))

    @staticmethod
    def _options_spec(plugin_name: str) -> IntegrationOptions:
        return IntegrationOptions(
            owner=f"lmcache_valkey connector {plugin_name!r}", own=_CONNECTOR_OPTIONS,
            client=_CLIENT_OPTIONS, key_prefix="", ttl_s=None, where="extra_config",
            missing_server=(f"set {plugin_option(plugin_name, 'url')} (valkey://host:port, "
                            "redis://host:port or unix:///path.sock) or VALKEY_HOST: the "
                            "connector does not start a server of its own"))

    @staticmethod
    def _options(config: LMCacheEngineConfig, spec: IntegrationOptions,
                 plugin_name: str) -> dict[str, Any]:
        """The options under ``remote_storage_plugin.<name>.``, checked, less
        the loader's keys."""
        head = plugin_option(plugin_name, "")
        options = {k[len(head):]: v for k, v in (config.extra_config or {}).items()
                   if isinstance(k, str) and k.startswith(head)}
        spec.check_names(options, shown_under=head)
        for key in _LOADER_KEYS:
            options.pop(key, None)
        if "password" in options:
            log.warning("%s is printed by LMCache's configuration log; prefer the "
                        "VALKEY_PASSWORD environment variable", head + "password")
        return options

    @property
    def client(self) -> AnyClient:
        return self._client

    def __repr__(self) -> str:
        return (f"<ValkeyRemoteConnector {self.plugin_name} "
                f"{self._client.config.redacted_url()} prefix={self._client.config.key_prefix!r}>")

    # -- keys and destinations ---------------------------------------------

    @staticmethod
    def _keys(keys: Sequence[CacheEngineKey]) -> list[str]:
        return [k.to_string() for k in keys]

    def _allocate(self, n: int) -> list[MemoryObj]:
        """Up to ``n`` chunk-sized MemoryObjs; fewer if the CPU backend runs
        dry. Only the first may wait for eviction: waiting while holding our
        own earlier allocations could wait forever."""
        objs: list[MemoryObj] = []
        for i in range(n):
            try:
                if i == 0:
                    obj = self.local_cpu_backend.allocate(
                        self.meta_shapes, self.meta_dtypes, self.meta_fmt)
                else:
                    obj = self.local_cpu_backend.allocate(
                        self.meta_shapes, self.meta_dtypes, self.meta_fmt, busy_loop=False)
            except Exception as e:  # e.g. the scheduler's stand-in backend
                self._log.warning("alloc", "lmcache_valkey: allocation failed: %s", e)
                break
            if obj is None:
                break
            objs.append(obj)
        if len(objs) < n:
            self._log.warning("alloc-short",
                      "lmcache_valkey: CPU buffer full: %d of %d chunks not loaded",
                      n - len(objs), n)
        return objs

    def _accept(self, obj: MemoryObj, nbytes: Any, key: CacheEngineKey,
                stored_len: int | None) -> MemoryObj | None:
        """The loaded MemoryObj if ``nbytes`` is a whole chunk, else release it."""
        size = obj.get_size()
        if nbytes == size:
            return obj
        if (isinstance(nbytes, int) and 0 < nbytes < size and self._save_unfull_chunk
                and nbytes % self.single_token_size == 0):
            try:
                return self.reshape_partial_chunk(obj, nbytes)
            except Exception as e:  # pragma: no cover - guarded by the checks above
                self._log.warning("reshape", "lmcache_valkey: reshape failed: %s", e)
        elif nbytes is not None or stored_len is not None:
            self._log.warning("size",
                      "lmcache_valkey: stored value for %s is %s bytes, a chunk is %d: "
                      "treated as a miss (another model or chunk size under this prefix?)",
                      key.to_string(), nbytes if stored_len is None else stored_len, size)
        obj.ref_count_down()
        return None

    async def _load(self, keys: Sequence[CacheEngineKey]) -> list[MemoryObj | None]:
        """One pipelined GET batch straight into freshly allocated MemoryObjs."""
        if not keys:
            return []
        objs = self._allocate(len(keys))
        out: list[MemoryObj | None] = [None] * len(keys)
        if not objs:
            return out
        bufs = [obj.byte_array for obj in objs]
        task = asyncio.ensure_future(
            self._client.abatch_get_into(self._keys(keys[:len(objs)]), bufs))
        try:
            result: Sequence[Any] = await asyncio.shield(task)
        except asyncio.CancelledError:
            # LMCache gave up waiting; the transfer goes on into these buffers,
            # so they go back to the allocator only when it has ended.
            task.add_done_callback(functools.partial(_release_when_done, objs))
            raise
        except Exception as e:
            self._log.warning("get", "lmcache_valkey: load of %d chunks failed: %s",
                      len(objs), e)
            result = partial_results(e, len(objs))
        too_large = result.too_large if isinstance(result, BatchResult) else {}
        for i, obj in enumerate(objs):
            out[i] = self._accept(obj, result[i], keys[i], too_large.get(i))
        return out

    # -- lookups -----------------------------------------------------------

    async def exists(self, key: CacheEngineKey) -> bool:
        return await self.batched_async_contains("", [key]) == 1

    def exists_sync(self, key: CacheEngineKey) -> bool:
        return self.batched_contains([key]) == 1

    def support_batched_contains(self) -> bool:
        return True

    def batched_contains(self, keys: list[CacheEngineKey]) -> int:
        """How many keys, from the first, are stored (one EXISTS batch)."""
        if not keys:
            return 0
        try:
            return _prefix_hits(self._client.batch_exists(self._keys(keys),
                                                          refresh_ttl=self._ttl_set))
        except Exception as e:
            return self._lookup_failed(e, len(keys))

    def support_batched_async_contains(self) -> bool:
        return True

    async def batched_async_contains(self, lookup_id: str, keys: list[CacheEngineKey],
                                     pin: bool = False) -> int:
        """How many keys, from the first, are stored. With a TTL, each hit
        gets its full TTL again so it cannot expire before the load."""
        if not keys:
            return 0
        try:
            return _prefix_hits(await self._client.abatch_exists(self._keys(keys),
                                                                 refresh_ttl=self._ttl_set))
        except Exception as e:
            return self._lookup_failed(e, len(keys))

    def _lookup_failed(self, e: Exception, n: int) -> int:
        self._log.warning("exists", "lmcache_valkey: lookup failed: %s", e)
        # A cluster node down: the keys before its first one still count.
        return _prefix_hits(partial_results(e, n))

    # -- loads -------------------------------------------------------------

    async def get(self, key: CacheEngineKey) -> MemoryObj | None:
        return (await self._load([key]))[0]

    def support_batched_get(self) -> bool:
        return True

    async def batched_get(self, keys: list[CacheEngineKey]) -> list[MemoryObj | None]:
        return await self._load(keys)

    def support_batched_get_non_blocking(self) -> bool:
        return True

    async def batched_get_non_blocking(self, lookup_id: str,
                                       keys: list[CacheEngineKey]) -> list[MemoryObj]:
        """The loaded prefix: everything after the first miss is released."""
        loaded = await self._load(keys)
        n = next((i for i, obj in enumerate(loaded) if obj is None), len(loaded))
        _release(loaded[n:])
        return [obj for obj in loaded[:n] if obj is not None]

    # -- stores ------------------------------------------------------------

    async def put(self, key: CacheEngineKey, memory_obj: MemoryObj) -> None:
        await self.batched_put([key], [memory_obj])

    def support_batched_put(self) -> bool:
        return True

    async def batched_put(self, keys: list[CacheEngineKey],
                          memory_objs: list[MemoryObj]) -> None:
        """One pipelined SET batch from the MemoryObjs' bytes (with the TTL).
        The caller (LMCache's RemoteBackend) owns the references."""
        if not keys:
            return
        try:
            res = await self._client.abatch_set(
                self._keys(keys), [obj.byte_array for obj in memory_objs])
        except Exception as e:
            self._log.warning("put", "lmcache_valkey: store of %d chunks failed: %s",
                      len(keys), e)
            return
        failed = [i for i, ok in enumerate(res) if not ok]
        if failed:
            reasons = sorted({str(res.errors[i]) for i in failed if i in res.errors})
            self._log.warning("put-keys",
                      "lmcache_valkey: %d of %d chunks not stored: %s", len(failed), len(keys),
                      "; ".join(reasons) or "unknown")

    # -- housekeeping ------------------------------------------------------

    def remove_sync(self, key: CacheEngineKey) -> bool:
        try:
            return bool(self._client.batch_delete(self._keys([key]))[0])
        except Exception as e:
            self._log.warning("delete", "lmcache_valkey: delete failed: %s", e)
            return False

    async def list(self) -> list[str]:
        """LMCache key strings stored under the prefix (at most ``list_limit``;
        a SCAN, so it never blocks the server). ``[]`` if the server is down."""
        try:
            return await asyncio.to_thread(self._scan, self._list_limit)
        except Exception as e:
            self._log.warning("list", "lmcache_valkey: list failed: %s", e)
            return []

    def _scan(self, limit: int) -> builtins.list[str]:
        prefix = self._client.config.key_prefix
        keys: builtins.list[str] = []
        for batch in PrefixScan(self._client, prefix):
            keys.extend(bytes(k)[len(prefix):].decode("utf-8", "replace") for k in batch)
            if len(keys) >= limit:
                break
        return keys[:limit]

    def support_ping(self) -> bool:
        return True

    async def ping(self) -> int:
        """0 if the server answers PING; LMCache's error codes otherwise."""
        try:
            ok = await asyncio.to_thread(self._client.ping)
        except ValkeyTimeoutError:
            return _PING_TIMEOUT
        except (ValkeyError, OSError) as e:
            self._log.warning("ping", "lmcache_valkey: ping failed: %s", e)
            return _PING_ERROR
        return _PING_OK if ok else _PING_ERROR

    async def close(self) -> None:
        self._client.close()
        log.info("lmcache_valkey connector %r closed", self.plugin_name)

