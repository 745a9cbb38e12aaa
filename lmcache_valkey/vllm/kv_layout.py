"""Where one vLLM KV block lives in memory, as a list of contiguous byte runs.

One stored value = one block of one request's prefix, all layers. vLLM 0.32
hands the connector one view per layer whose physical order follows the
resolved ``KVCacheLayout`` (``create_kv_cache_views``): LBHNC, LBNHC, BLHNC,
BLNHC, LHBNC, BHLNC, with the block dimension first and, when a vLLM block is
split into ``k`` kernel blocks, ``num_blocks * k`` entries along it. Older
GPU backends gave ``[2, num_blocks, ...]`` (K and V apart). Rather than
recognise shapes, the runs are derived from each tensor's strides, the way
vLLM's OffloadingConnector derives its ``(num_blocks, page_bytes)`` byte view
from the tensor's storage: whatever the layout, block ``b`` of a layer is a
fixed set of byte runs shifted by ``b`` times the block stride.

Byte order of a stored value (what another process must reproduce):
for each distinct KV tensor, in the order vLLM registered the layers (layers
sharing one tensor, i.e. cross-layer KV sharing, count once), the bytes of
that block, in ascending address order; the ``k`` kernel blocks of a vLLM
block come in order, and padding or other blocks' bytes between them are not
stored. In the four block-compact layouts (LBHNC, LBNHC, BLHNC, BLNHC) that
is each layer's page exactly as it lies in memory, one run per layer; with
K/V split first it is K then V; in LHBNC and BHLNC one run per KV head.
Runs that touch (a block-outermost layout keeps all layers of a block side
by side) merge into one, which does not change the bytes.

The layout is part of the key namespace, so a deployment with another
layout never reads these bytes. Each tensor is checked not to overlap
itself; distinct tensors are taken to be disjoint, as vLLM allocates them
for one KV cache group (overlays happen only between groups, i.e. with the
hybrid allocator, which vLLM turns off for a connector without HMA support).

On CPU the runs are handed to the client as numpy byte views made once at
registration: indexing a numpy array costs ~0.2 µs, where a torch slice
plus its conversion to a buffer costs ~15 µs — 5 ms of a 38-block prompt's
10 ms load on an 8-layer model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError

# More runs than this per (layer, block) would mean a layout where a block is
# shredded into tiny pieces (e.g. tokens outside the block dimension): moving
# it run by run would crawl, so it is refused rather than served slowly.
MAX_RUNS_PER_LAYER_BLOCK = 1024


@dataclass(frozen=True)
class _Run:
    """One contiguous byte run of block 0; block ``b``'s run starts
    ``b * block_stride`` bytes later in the same storage."""

    storage: int  # index into BlockLayout._storages
    offset: int  # bytes from the storage's start
    block_stride: int
    nbytes: int


class BlockLayout:
    """Maps a vLLM block id to its byte runs across all layers."""

    def __init__(self, kv_caches: Mapping[str, torch.Tensor], num_blocks: int) -> None:
        if not kv_caches:
            raise ConfigError("ValkeyConnector: vLLM registered no KV cache tensors")
        if num_blocks <= 0:
            raise ConfigError(f"ValkeyConnector: {num_blocks} KV cache blocks")
        self.layer_names = list(kv_caches)
        self.num_blocks = num_blocks
        first = next(iter(kv_caches.values()))
        self.device = first.device
        self._storages: list[torch.UntypedStorage] = []
        storage_index: dict[int, int] = {}
        seen: set[tuple[Any, ...]] = set()
        self._described: list[tuple[str, list[int]]] = []
        runs: list[_Run] = []
        for name, t in kv_caches.items():
            if t.device != self.device:
                raise ConfigError(f"ValkeyConnector: KV cache layer {name!r} is on {t.device}, "
                                  f"the first layer on {self.device}")
            storage = t.untyped_storage()
            # Layers sharing one KV tensor (cross-layer KV sharing) are stored once:
            # exactly the views with the same address, shape and strides.
            alias = (storage.data_ptr(), t.storage_offset() * t.element_size(),
                     tuple(t.shape), tuple(t.stride()), t.element_size())
            if alias in seen:
                continue
            seen.add(alias)
            idx = storage_index.setdefault(storage.data_ptr(), len(self._storages))
            if idx == len(self._storages):
                self._storages.append(storage)
            layer_runs, per_block_shape = _layer_runs(name, t, num_blocks)
            self._described.append((str(t.dtype), per_block_shape))
            runs.extend(_Run(idx, off, stride, n) for off, stride, n in layer_runs)
        self._runs = _merge_adjacent(runs)
        self.block_nbytes = sum(r.nbytes for r in self._runs)
        # Per run, a [num_blocks, nbytes] uint8 view of the storage: block b's run
        # is row b (no copy, no arithmetic per call).
        self._run_views = [
            torch.empty(0, dtype=torch.uint8, device=self.device).set_(
                self._storages[r.storage], r.offset, (num_blocks, r.nbytes), (r.block_stride, 1))
            for r in self._runs]
        self._run_ptrs = [(self._storages[r.storage].data_ptr() + r.offset, r.block_stride,
                           r.nbytes) for r in self._runs]
        # The same rows as numpy arrays over the tensors' own memory: CPU only.
        self._host_views = ([v.numpy() for v in self._run_views]
                            if self.device.type == "cpu" else [])

    def _out_of_range(self, block_id: int) -> IndexError:
        return IndexError(f"block id {block_id} outside 0..{self.num_blocks - 1}")

    def segments(self, block_id: int) -> list[torch.Tensor]:
        """The block's contiguous runs, in stored order, as 1-D uint8 views
        over the KV cache (no copy)."""
        if not 0 <= block_id < self.num_blocks:
            raise self._out_of_range(block_id)
        return [v[block_id] for v in self._run_views]

    def host_segments(self, block_id: int) -> list[Any]:
        """The same runs as :meth:`segments`, as numpy byte views over the
        CPU KV cache (no copy): what the client receives into and sends from."""
        if not self._host_views:
            raise RuntimeError(f"KV cache is on {self.device}: stage through host memory")
        if not 0 <= block_id < self.num_blocks:
            raise self._out_of_range(block_id)
        return [a[block_id] for a in self._host_views]

    def runs(self, block_id: int) -> list[tuple[int, int]]:
        """The block's runs as ``(address, nbytes)`` on :attr:`device`, in
        stored order: what a staging copy (e.g. one batched device-to-host
        copy) gathers from and scatters into."""
        if not 0 <= block_id < self.num_blocks:
            raise self._out_of_range(block_id)
        return [(ptr + block_id * stride, n) for ptr, stride, n in self._run_ptrs]

    def page_views(self) -> list[tuple[torch.Tensor, int]]:
        """Each run position as a ``[num_blocks, nbytes]`` uint8 view over the
        KV cache, with its byte offset in the stored value: what the staged
        copies gather from and scatter into, one kernel per view for a whole
        chunk of blocks."""
        out, off = [], 0
        for v in self._run_views:
            out.append((v, off))
            off += v.shape[1]
        return out

    def describe(self) -> list[tuple[str, list[int]]]:
        """Per stored KV tensor, its dtype and the shape of one block (the
        kernel-block count first when blocks are split)."""
        return list(self._described)


def _layer_runs(name: str, t: torch.Tensor, num_blocks: int
                ) -> tuple[list[tuple[int, int, int]], list[int]]:
    """``(offset, block_stride, nbytes)`` of each run of block 0 of layer
    ``t`` (offsets from its storage's start, ascending), and one block's shape."""
    el = t.element_size()
    shape, strides = list(t.shape), [s * el for s in t.stride()]
    dim = _block_dim(name, t, num_blocks)
    ratio = shape[dim] // num_blocks  # kernel blocks per vLLM block
    block_stride = strides[dim] * ratio
    # One vLLM block: the kernel-block axis, the other axes, and the bytes of an element.
    block_dims = [(ratio, strides[dim])] + [
        (n, s) for d, (n, s) in enumerate(zip(shape, strides, strict=True)) if d != dim] + [(el, 1)]
    block_dims = sorted(((n, s) for n, s in block_dims if n > 1), key=lambda d: d[1])
    if any(s < 0 for _, s in block_dims) or block_stride <= 0 or not _disjoint(
            block_dims + [(num_blocks, block_stride)]):
        raise _unsupported(name, t, num_blocks, "its blocks may overlap themselves or each other")
    # Innermost axes that continue each other form one run; the rest place the runs.
    run = 1
    while block_dims and block_dims[0][1] == run:
        run *= block_dims.pop(0)[0]
    offsets = [0]
    for n, s in block_dims:
        offsets = [o + i * s for o in offsets for i in range(n)]
        if len(offsets) > MAX_RUNS_PER_LAYER_BLOCK:
            raise _unsupported(name, t, num_blocks, f"a block is over {MAX_RUNS_PER_LAYER_BLOCK}"
                               f" separate runs of {run} bytes")
    base = int(t.storage_offset()) * el  # (typed int | SymInt; an int for a real tensor)
    per_block = ([ratio] if ratio > 1 else []) + [n for d, n in enumerate(shape) if d != dim]
    return [(base + o, block_stride, run) for o in sorted(offsets)], per_block


def _block_dim(name: str, t: torch.Tensor, num_blocks: int) -> int:
    """The axis that indexes blocks: 0 in every vLLM 0.32 view (``num_blocks``
    or ``num_blocks * kernel blocks`` long), 1 in the older ``[2, num_blocks,
    ...]`` K/V-split shape (read as such only when axis 0 cannot be blocks)."""
    if t.dim() >= 2 and t.shape[0] % num_blocks == 0:
        return 0
    if t.dim() >= 3 and t.shape[0] == 2 and t.shape[1] % num_blocks == 0:
        return 1
    raise _unsupported(name, t, num_blocks, f"expected {num_blocks} blocks (or a multiple: "
                       "kernel blocks) along dim 0, or along dim 1 after K/V")


def _disjoint(dims: list[tuple[int, int]]) -> bool:
    """Whether no two index tuples of a strided layout (sizes, byte strides)
    address the same byte: sorted by stride, each axis steps past everything
    the inner axes span."""
    span = 0
    for n, s in sorted(dims, key=lambda d: d[1]):
        if n <= 1:
            continue
        if s <= span:
            return False
        span += (n - 1) * s
    return True


def _merge_adjacent(runs: list[_Run]) -> list[_Run]:
    """Join runs where one ends where the next begins, for every block alike
    (same storage and block stride): fewer, longer runs, the same bytes."""
    out: list[_Run] = []
    for r in runs:
        p = out[-1] if out else None
        if (p is not None and p.storage == r.storage and p.block_stride == r.block_stride
                and p.offset + p.nbytes == r.offset):
            out[-1] = _Run(p.storage, p.offset, p.block_stride, p.nbytes + r.nbytes)
        else:
            out.append(r)
    return out


def _unsupported(name: str, t: torch.Tensor, num_blocks: int, why: str) -> ConfigError:
    return ConfigError(
        f"ValkeyConnector: KV cache layer {name!r} (shape {tuple(t.shape)}, strides "
        f"{t.stride()}, {t.dtype}, {num_blocks} blocks) has a layout it cannot store: {why}")
