"""LMCache's own objects around our two adapters, for the LMCache tests
(test_lmcache_l2_adapter.py, test_lmcache_remote_connector.py,
test_faults_lmcache.py, and the integration tests of test_checksum.py and
test_cluster.py). It imports LMCache and torch: import it after
``pytest.importorskip("lmcache")``. Their fixtures are in lmcache_fixtures.py.

* The L2 adapter (LMCache multiprocess mode): ``Runner`` reads results the
  way LMCache's controllers do (wait for the kind's eventfd, then
  pop/query); ``_keys`` makes ObjectKeys, ``_bytes`` reads a MemoryObj.
* The remote connector (LMCache inside vLLM): ``Lm`` is LMCache's storage
  backends for one config, with a spy on the CPU backend's allocations;
  ``key``, ``payload``, ``content`` and ``plugin_keys`` make its inputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import threading
import time
from typing import Any

import torch
from lmcache.utils import CacheEngineKey
from lmcache.v1.config import LMCacheEngineConfig
from lmcache.v1.distributed.api import ObjectKey
from lmcache.v1.metadata import LMCacheMetadata
from lmcache.v1.storage_backend import CreateStorageBackends

from lmcache_valkey.lmcache import ValkeyL2Adapter
from lmcache_valkey.lmcache.remote_connector import ValkeyRemoteConnector

# -- the L2 adapter -------------------------------------------------------------

WAIT_S = 15.0
SHAPE = torch.Size([2, 4, 16, 64])  # 16 KiB of bf16: a small KV chunk
BIG_SHAPE = torch.Size([2, 8, 64, 64])  # 128 KiB: batches tile across connections


def _wait_fd(fd: int, timeout_s: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if not poller.poll(timeout_s * 1000):
        return False
    with contextlib.suppress(BlockingIOError):
        os.eventfd_read(fd)
    return True


def _wait(fd: int, fetch, timeout_s: float = WAIT_S):
    """Wait on ``fd`` until ``fetch()`` returns a result (like LMCache's controllers)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = fetch()
        if result is not None:
            return result
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("task did not complete (no result after its eventfd)")
        _wait_fd(fd, min(left, 1.0))


class Runner:
    """Blocking helpers over one adapter's non-blocking interface."""

    def __init__(self, adapter: ValkeyL2Adapter) -> None:
        self.a = adapter
        self._stores: dict[int, Any] = {}

    def store_result(self, tid: int, timeout_s: float = WAIT_S):
        def fetch():
            self._stores.update(self.a.pop_completed_store_tasks())
            return self._stores.pop(tid, None)
        return _wait(self.a.get_store_event_fd(), fetch, timeout_s)

    def store(self, keys, objs):
        return self.store_result(self.a.submit_store_task(keys, objs))

    def lookup_result(self, tid: int, timeout_s: float = WAIT_S) -> list[bool]:
        bm = _wait(self.a.get_lookup_and_lock_event_fd(),
                   lambda: self.a.query_lookup_and_lock_result(tid), timeout_s)
        return [bm.test(i) for i in range(bm.size())]

    def lookup(self, keys) -> list[bool]:
        return self.lookup_result(self.a.submit_lookup_and_lock_task(keys, {}))

    def load_result(self, tid: int, timeout_s: float = WAIT_S) -> list[bool]:
        bm = _wait(self.a.get_load_event_fd(), lambda: self.a.query_load_result(tid), timeout_s)
        return [bm.test(i) for i in range(bm.size())]

    def load(self, keys, objs) -> list[bool]:
        return self.load_result(self.a.submit_load_task(keys, objs))


def _keys(n: int, model: str = "model-a", *, start: int = 0, salt: str = "",
          group: int = 0, rank: int = 0) -> list[ObjectKey]:
    return [ObjectKey(chunk_hash=(start + i).to_bytes(16, "big"), model_name=model,
                      kv_rank=rank, object_group_id=group, cache_salt=salt)
            for i in range(n)]


def store_new(run: Runner, alloc: Any, n: int, *shape: Any) -> tuple[list[Any], list[Any]]:
    """`n` new chunks (``_keys(n)``, objects from the `alloc` fixture, of
    `shape` if given) stored through `run`: (keys, objects)."""
    keys = _keys(n)
    objs = alloc(n, *shape)
    assert run.store(keys, objs).is_successful()
    return keys, objs


def _bytes(obj) -> bytes:
    return obj.raw_data[: obj.get_size()].numpy().tobytes()


# -- the remote connector ---------------------------------------------------------

PLUGIN = "lmcache_valkey"
MODULE = "lmcache_valkey.lmcache.remote_connector"

# A small model: 4 layers, 4 KV heads x 32, bf16, 16-token chunks
# -> [2, 4, 16, 128] bf16 = 32 KiB per chunk, 1 KiB per token.
CHUNK_TOKENS = 16
KV_SHAPE = (4, 2, CHUNK_TOKENS, 4, 32)
CHUNK_BYTES = 2 * 4 * CHUNK_TOKENS * 128 * 2
TOKEN_BYTES = CHUNK_BYTES // CHUNK_TOKENS


def plugin_keys(name: str = PLUGIN, module: str = MODULE, **options: Any) -> dict[str, Any]:
    keys = {f"remote_storage_plugin.{name}.module_path": module,
            f"remote_storage_plugin.{name}.class_name": "ValkeyRemoteConnector"}
    keys.update({f"remote_storage_plugin.{name}.{k}": v for k, v in options.items()})
    return keys


def metadata() -> LMCacheMetadata:
    return LMCacheMetadata(model_name="tiny", world_size=1, local_world_size=1, worker_id=0,
                           local_worker_id=0, kv_dtype=torch.bfloat16, kv_shape=KV_SHAPE,
                           chunk_size=CHUNK_TOKENS)


def key(i: int) -> CacheEngineKey:
    return CacheEngineKey(model_name="tiny", world_size=1, worker_id=0,
                          chunk_hash=0x5EED0000 + i, dtype=torch.bfloat16)


def payload(i: int, n: int = CHUNK_BYTES) -> bytes:
    g = torch.Generator().manual_seed(1000 + i)
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g).numpy().tobytes()


def content(obj: Any) -> bytes:
    return bytes(obj.byte_array)


class Lm:
    """LMCache's storage backends for one config, plus the allocation spy."""

    def __init__(self, config: LMCacheEngineConfig, loop: asyncio.AbstractEventLoop,
                 name: str = PLUGIN) -> None:
        self.loop = loop
        self.backends = CreateStorageBackends(config, metadata(), loop)
        self.cpu = self.backends["LocalCPUBackend"]
        self.remote = self.backends[f"RemoteBackend-{name}"]
        assert self.remote.connection is not None, "LMCache did not create the connector"
        self.conn = self.remote.connection.getWrappedConnector()
        assert isinstance(self.conn, ValkeyRemoteConnector)
        self.taken: list[Any] = []  # every MemoryObj the connector allocated
        allocate = self.cpu.allocate

        def spy(*args: Any, **kwargs: Any) -> Any:
            obj = allocate(*args, **kwargs)
            if obj is not None:
                self.taken.append(obj)
            return obj

        self.cpu.allocate = spy

    def chunk(self, i: int, tokens: int = CHUNK_TOKENS) -> Any:
        """A MemoryObj as LMCache's store path hands it over, filled with payload(i)."""
        md = metadata()
        obj = self.cpu.memory_allocator.allocate(md.get_shapes(tokens), md.get_dtypes(),
                                                 self.conn.meta_fmt)
        data = payload(i, tokens * TOKEN_BYTES)
        obj.raw_data.view(torch.uint8).reshape(-1)[:len(data)].copy_(
            torch.frombuffer(bytearray(data), dtype=torch.uint8))
        assert content(obj) == data
        return obj

    def put(self, items: dict[int, Any]) -> None:
        """Store chunks in one batched_put and wait for it (LMCache does not wait)."""
        keys = [key(i) for i in items]
        objs = list(items.values())
        done = threading.Event()
        self.remote.batched_submit_put_task(keys, objs, on_complete_callback=lambda k: done.set())
        assert done.wait(10)
        for obj in objs:
            obj.ref_count_down()

    def assert_loads(self, i: int) -> None:
        """Chunk i loads back through the connector, its bytes exact."""
        got = self.remote.get_blocking(key(i))
        assert got is not None and content(got) == payload(i)
        got.ref_count_down()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def released(self) -> bool:
        return all(obj.get_ref_count() == 0 for obj in self.taken)

    def close(self) -> None:
        for backend in reversed(self.backends.values()):
            backend.close()
