"""HiCache L3 GB/s: ValkeyHiCacheStorage vs the upstream proposal's approach.

    .venv-sglang/bin/python examples/sglang/bench_hicache.py             # embedded Valkey
    .venv-sglang/bin/python examples/sglang/bench_hicache.py --url valkey://host:6379 --rounds 9

Both sides move the same pages of a real SGLang host pool
(``MHATokenToKVPoolHost``, built on CPU) to and from the same server:

* ``valkey``   - ValkeyHiCacheStorage's zero-copy ``batch_set_v1`` /
  ``batch_get_v1``: each page sent from and received into the pool's own
  memory (a scatter list of its K and V runs), one pipelined batch, tiled
  over ``--num-connections`` connections with the GIL released.
* ``upstream`` - what SGLang PR #16823 did: valkey-py (hiredis parser when
  installed), one pipeline per batch, each page copied out of the pool into
  ``bytes`` for SET, and each GET reply (``bytes``) copied into the pool with
  ``set_from_flat_data_page``, as SGLang's generic interface does. The
  "(GETs only)" column is its load without that copy: valkey-py's pipeline
  alone, the floor of any bytes-based backend.

Pools: a Llama-3-8B-shaped one (32 layers, 8 KV heads of 128, bf16: 128 KiB
of KV per token, so 2 MiB pages of 16 tokens and 8 MiB pages of 64 tokens)
and a small one (16 layers, 8 heads of 64: 32 KiB per token, 512 KiB pages
of 16 tokens). Every round runs both sides (order alternating), store then
load of ``--batch-bytes`` worth of pages; the first round checks that every
loaded page equals the stored one byte for byte, and is not timed. Prints
medians and the ratio. Needs SGLang (``make sglang-venv``) and valkey-py; give
the upstream side valkey-py's C reply parser (``pip install libvalkey``, as
``.[bench]`` does), or it is slower than it would be in production.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from types import SimpleNamespace
from typing import Any

from lmcache_valkey.observability.stats import format_bytes, text_table
from lmcache_valkey.server.embedded import url_or_embedded
from lmcache_valkey.sglang.cpu_shim import declare_torchvision_nms
from lmcache_valkey.tools.bench import parse_size

declare_torchvision_nms()

import torch  # noqa: E402
import valkey  # noqa: E402
import valkey.utils  # noqa: E402
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool  # noqa: E402
from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost  # noqa: E402

from lmcache_valkey.sglang import ValkeyHiCacheStorage  # noqa: E402

# name, layers, kv heads, head dim, tokens per page
SHAPES = {
    "small-p16": (16, 8, 64, 16),
    "8b-p16": (32, 8, 128, 16),
    "8b-p64": (32, 8, 128, 64),
}


def host_pool(layers: int, heads: int, dim: int, page: int, n_pages: int,
              layout: str) -> Any:
    tokens = n_pages * page
    kv = MHATokenToKVPool(size=tokens, page_size=page, dtype=torch.bfloat16, head_num=heads,
                          head_dim=dim, layer_num=layers, device="cpu",
                          enable_memory_saver=False, start_layer=0, end_layer=layers)
    pool = MHATokenToKVPoolHost(kv.get_device_pool_infos()[0].buffer_info, 1.0, 0, page,
                                layout, pin_memory=False, device="cpu",
                                device_capacity_tokens=tokens, start_layer=0, end_layer=layers)
    del kv  # only its geometry was needed
    return pool


class Upstream:
    """The proposal's data path: valkey-py pipelines and a bytes copy per page."""

    def __init__(self, url: str, pool: Any, namespace: str) -> None:
        self.r = valkey.Valkey.from_url(url)
        self.pool, self.ns = pool, namespace
        self.wire_s = 0.0

    def batch_set(self, keys: list[str], host_indices: Any) -> list[bool]:
        pipe = self.r.pipeline(transaction=False)
        for i, k in enumerate(keys):
            page = self.pool.get_data_page(int(host_indices[i * self.pool.page_size]))
            pipe.set(self.ns + k, page.contiguous().view(torch.uint8).numpy().tobytes(),
                     ex=3600)
        return [bool(x) for x in pipe.execute()]

    def batch_get(self, keys: list[str], host_indices: Any) -> list[bool]:
        pipe = self.r.pipeline(transaction=False)
        for k in keys:
            pipe.get(self.ns + k)
        values = pipe.execute()
        self.wire_s = time.perf_counter()  # the replies are in; now into the pool
        out = []
        for i, value in enumerate(values):
            if value is None:
                out.append(False)
                continue
            page = torch.frombuffer(value, dtype=self.pool.dtype)
            self.pool.set_from_flat_data_page(int(host_indices[i * self.pool.page_size]), page)
            out.append(True)
        return out

    def close(self) -> None:
        self.r.close()


class Ours:
    def __init__(self, url: str, pool: Any, num_connections: int) -> None:
        config = SimpleNamespace(tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0,
                                 attn_cp_size=1, is_mla_model=False, model_name="bench",
                                 extra_config={"url": url, "num_connections": num_connections,
                                               "key_prefix": "bench-hicache:"})
        self.backend = ValkeyHiCacheStorage(config, {})
        self.backend.register_mem_pool_host(pool)

    def batch_set(self, keys: list[str], host_indices: Any) -> list[bool]:
        return self.backend.batch_set_v1(keys, host_indices)

    def batch_get(self, keys: list[str], host_indices: Any) -> list[bool]:
        return self.backend.batch_get_v1(keys, host_indices)

    def close(self) -> None:
        self.backend.clear()
        self.backend.close()


def run_shape(url: str, name: str, shape: tuple[int, int, int, int], layout: str,
              args: argparse.Namespace) -> list[str]:
    layers, heads, dim, page = shape
    page_bytes = 2 * layers * heads * dim * page * 2
    n = max(2, args.batch_bytes // page_bytes)
    pool = host_pool(layers, heads, dim, page, 2 * n + 1, layout)
    pool.kv_buffer.copy_(torch.randn(pool.kv_buffer.shape).to(pool.kv_buffer.dtype))
    src = torch.arange(0, n * page)                 # pages stored from here
    dst = torch.arange(n * page, 2 * n * page)      # and loaded into here
    keys = [f"{name}-{layout}-{i:060x}" for i in range(n)]
    sides = {"valkey": Ours(url, pool, args.num_connections),
             "upstream": Upstream(url, pool, "bench-upstream:")}
    gbps: dict[tuple[str, str], list[float]] = {(s, op): [] for s in sides for op in ("set", "get")}
    wire: list[float] = []
    try:
        for rnd in range(args.rounds + 1):
            order = list(sides) if rnd % 2 else list(sides)[::-1]
            for side in order:
                impl = sides[side]
                t0 = time.perf_counter()
                ok = impl.batch_set(keys, src)
                t1 = time.perf_counter()
                got = impl.batch_get(keys, dst)
                t2 = time.perf_counter()
                assert all(ok) and all(got), f"{side}: a page was not stored or loaded"
                if rnd == 0:  # warm-up round: check the bytes instead of timing
                    for i in range(n):
                        a = pool.get_data_page(int(src[i * page])).contiguous()
                        b = pool.get_data_page(int(dst[i * page])).contiguous()
                        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), side
                    _scramble(pool, dst, page)
                    continue
                gbps[(side, "set")].append(n * page_bytes / (t1 - t0) / 1e9)
                gbps[(side, "get")].append(n * page_bytes / (t2 - t1) / 1e9)
                if side == "upstream":  # the GET replies alone, before the copy into the pool
                    wire.append(n * page_bytes / (impl.wire_s - t1) / 1e9)
                _scramble(pool, dst, page)
    finally:
        for impl in sides.values():
            impl.close()
    label = f"{name} {layout} ({format_bytes(page_bytes)} pages x {n})"
    rows = []
    for op in ("set", "get"):
        ours = statistics.median(gbps[("valkey", op)])
        theirs = statistics.median(gbps[("upstream", op)])
        wire_only = f"{statistics.median(wire):.2f}" if op == "get" else ""
        rows.append([label, f"batch_{op}_v1", f"{ours:.2f}", f"{theirs:.2f}", wire_only,
                     f"{ours / theirs:.1f}x"])
    return rows


def _scramble(pool: Any, dst: Any, page: int) -> None:
    """Overwrite the load destination so a load that wrote nothing shows."""
    for i in range(0, len(dst), page):
        pool.get_data_page(int(dst[i]), flat=False).fill_(0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="server URL (default: an embedded valkey-server)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (plus one checked)")
    p.add_argument("--batch-bytes", type=parse_size, default=parse_size("64MiB"),
                   help="bytes of pages per store/load batch")
    p.add_argument("--num-connections", type=int, default=2)
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"of {list(SHAPES)}")
    p.add_argument("--layouts", default="page_first_direct,layer_first")
    args = p.parse_args()
    warnings.filterwarnings("ignore", message="The given buffer is not writable")

    rows = [["pool", "op", "valkey GB/s", "upstream GB/s", "(GETs only)", "ratio"]]
    with url_or_embedded(args.url) as url:
        for name in args.shapes.split(","):
            for layout in args.layouts.split(","):
                rows += run_shape(url, name, SHAPES[name], layout, args)
    parser = "libvalkey (C)" if valkey.utils.LIBVALKEY_AVAILABLE else "pure Python"
    print(f"medians of {args.rounds} interleaved rounds, {format_bytes(args.batch_bytes)} "
          f"per batch, {args.num_connections} connections (ours), server {url.split('@')[-1]}, "
          f"valkey-py {valkey.__version__} with the {parser} reply parser (upstream)")
    print("\n".join(text_table(rows)))


if __name__ == "__main__":
    main()
