"""Fixtures of the LMCache tests: objects from LMCache's own allocator, L2
adapters, and LMCache's storage backends on an event-loop thread.

conftest.py registers this module for every test; LMCache, torch and PyYAML
are imported only when a fixture is used, so that venvs without them (ASan,
SGLang) load it too. The helpers they build on are in lmcache_helpers.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from closing import closing_factory


@pytest.fixture
def alloc() -> Iterator[Callable[..., list[Any]]]:
    """LMCache's TensorMemoryAllocator over a CPU tensor; objects fill/zero."""
    import torch
    from lmcache.v1.memory_allocators.tensor_memory_allocator import TensorMemoryAllocator
    from lmcache_helpers import SHAPE

    allocator = TensorMemoryAllocator(torch.zeros(32 << 20, dtype=torch.uint8))
    gen = torch.Generator().manual_seed(1234)

    def build(n: int, shape: torch.Size = SHAPE, *, fill: str = "random",
              dtype: torch.dtype = torch.bfloat16) -> list[Any]:
        objs = []
        for _ in range(n):
            obj = allocator.allocate(shape, dtype)
            assert obj is not None
            flat = obj.raw_data[: obj.get_size()]
            if fill == "random":
                flat.copy_(torch.randint(0, 256, (flat.numel(),), dtype=torch.uint8,
                                         generator=gen))
            else:
                flat.fill_(0xEE)  # sentinel: a load must overwrite every byte
            objs.append(obj)
        return objs

    def release(objs: list[Any]) -> None:
        for obj in objs:
            obj.ref_count_down()

    yield from closing_factory(build, release)


@pytest.fixture
def make_adapter() -> Iterator[Callable[..., Any]]:
    """Build ValkeyL2Adapters from a URL and config keys (closed at teardown)."""
    from lmcache_valkey.lmcache import ValkeyL2Adapter, ValkeyL2AdapterConfig

    def build(url: str, **params: Any) -> ValkeyL2Adapter:
        params.setdefault("op_timeout_s", 5.0)
        params.setdefault("connect_timeout_s", 2.0)
        return ValkeyL2Adapter(ValkeyL2AdapterConfig.from_dict({"url": url, **params}))

    yield from closing_factory(build)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """LMCache's storage manager runs its connectors on a loop in a thread."""
    lp = asyncio.new_event_loop()
    thread = threading.Thread(target=lp.run_forever, name="lmcache-loop", daemon=True)
    thread.start()
    yield lp
    lp.call_soon_threadsafe(lp.stop)
    thread.join(10)
    lp.close()


@pytest.fixture
def make_lm(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> Iterator[Callable[..., Any]]:
    """Build LMCache's storage backends (an ``Lm``) from a YAML config that
    LMCache itself reads, with our connector as a remote storage plugin."""
    yaml = pytest.importorskip("yaml")
    from lmcache.v1.config import LMCacheEngineConfig
    from lmcache_helpers import CHUNK_TOKENS, PLUGIN, Lm

    made: list[Lm] = []

    def make(extra: dict[str, Any], name: str = PLUGIN, plugins: list[str] | None = None,
             **top: Any) -> Lm:
        doc = {"chunk_size": CHUNK_TOKENS, "local_cpu": False, "max_local_cpu_size": 0.02,
               "remote_serde": "naive", "remote_storage_plugins": plugins or [name],
               "extra_config": extra, **top}
        path = tmp_path / f"lmcache-{len(made)}.yaml"
        path.write_text(yaml.safe_dump(doc))
        lm = Lm(LMCacheEngineConfig.from_file(str(path)), loop, name)
        made.append(lm)
        return lm

    yield make
    for lm in made:
        lm.close()
