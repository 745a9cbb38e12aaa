"""The worker half of the ValkeyConnector: move block bytes.

Loads run up front in ``start_load_kv``, before the forward pass reads the
KV cache: one pipelined batch for all requests of the step, each value
received straight into its block's memory (a scatter list over layers; GIL
released, tiled across connections). Saves run in ``wait_for_save``, after
the forward pass wrote the blocks and before the step ends, sent straight
from the same memory. Waiting there is what keeps a block from being freed
and reused while it is being sent; at the GB/s the client moves, a block of
an 89M model (256 KiB) costs ~0.1 ms.

On a GPU the bytes go through pinned host staging (receive, then one
asynchronous host-to-device copy per segment; device-to-host, then send).

Any failed block (miss, short value, server error, connection loss) is
reported through ``get_block_ids_with_load_errors`` so vLLM recomputes it;
nothing raises into vLLM.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..errors import partial_results
from ..ratelimited_log import RateLimitedLog
from .kv_layout import BlockLayout
from .metadata import BlockTransfer
from .stats import StatsRecorder

# Under "vllm." so that vLLM's own log handler and level apply to our lines.
log = logging.getLogger("vllm." + __name__)


class WorkerSide:
    def __init__(self, client: Any, key_of: Any) -> None:
        self._client = client
        self._key_of = key_of
        self._layout: BlockLayout | None = None
        self._load_errors: set[int] = set()
        self._log = RateLimitedLog(log)
        # Counters for logs, stats and tests.
        self.blocks_loaded = 0
        self.blocks_saved = 0
        self.blocks_failed = 0
        self.stats = StatsRecorder()  # what vLLM takes each step

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor], num_blocks: int) -> None:
        self._layout = BlockLayout(kv_caches, num_blocks)
        log.info("ValkeyConnector: %d KV layers, %d blocks of %d bytes per stored value (%s)",
                 len(self._layout.layer_names), num_blocks, self._layout.block_nbytes,
                 self._layout.device)

    @property
    def layout(self) -> BlockLayout:
        if self._layout is None:
            raise RuntimeError("ValkeyConnector: KV caches not registered yet")
        return self._layout

    # -- loads -------------------------------------------------------------

    def load(self, transfers: list[BlockTransfer]) -> None:
        keys, block_ids = _flatten(transfers, self._key_of)
        if not keys:
            return
        layout = self.layout
        staged = layout.device.type != "cpu"
        dests = ([_staging(layout) for _ in block_ids] if staged
                 else [layout.host_segments(b) for b in block_ids])
        try:
            sizes = list(self._client.batch_get_into(keys, dests))
        except Exception as e:
            sizes = partial_results(e, len(keys))
            self.stats.add(load_failures=1)
            self._log.warning("load", "ValkeyConnector: load of %d blocks failed (%d done); "
                              "vLLM recomputes the rest: %s", len(keys),
                              sum(s == layout.block_nbytes for s in sizes), e)
        ok = [s == layout.block_nbytes for s in sizes]
        failed = [b for b, good in zip(block_ids, ok) if not good]
        if staged:
            for b, buf, good in zip(block_ids, dests, ok):
                if good:
                    _copy_into_segments(buf, layout.segments(b))
            torch.accelerator.synchronize()
        if failed:
            self._load_errors.update(failed)
            self.blocks_failed += len(failed)
            self._log.warning("load-miss", "ValkeyConnector: %d of %d blocks could not be "
                              "loaded (evicted, expired or short); vLLM recomputes them",
                              len(failed), len(block_ids))
        loaded = len(block_ids) - len(failed)
        self.blocks_loaded += loaded
        self.stats.add(loaded_blocks=loaded, load_error_blocks=len(failed),
                       loaded_bytes=loaded * layout.block_nbytes)

    def take_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

    # -- saves -------------------------------------------------------------

    def save(self, transfers: list[BlockTransfer]) -> None:
        keys, block_ids = _flatten(transfers, self._key_of)
        if not keys:
            return
        layout = self.layout
        if layout.device.type != "cpu":
            values = [_gather_to_host(layout.segments(b)) for b in block_ids]
        else:
            values = [layout.host_segments(b) for b in block_ids]
        try:
            results = self._client.batch_set(keys, values)
        except Exception as e:
            # A cluster node down fails only its blocks: count the others.
            stored = sum(r is True for r in partial_results(e, len(keys)))
            self.blocks_saved += stored
            self._count_saved(stored, len(keys), failures=1)
            self._log.warning("save", "ValkeyConnector: saving %d blocks failed: %s",
                              len(keys), e)
            return
        stored = sum(r is True for r in results)
        self.blocks_saved += stored
        self._count_saved(stored, len(keys))
        if stored < len(keys):
            errs = getattr(results, "errors", {}) or {}
            self._log.warning("save-partial", "ValkeyConnector: %d of %d blocks not stored%s",
                              len(keys) - stored, len(keys),
                              f" (e.g. {next(iter(errs.values()))})" if errs else "")

    def _count_saved(self, stored: int, sent: int, failures: int = 0) -> None:
        self.stats.add(saved_blocks=stored, save_error_blocks=sent - stored,
                       saved_bytes=stored * self.layout.block_nbytes, save_failures=failures)


def _flatten(transfers: list[BlockTransfer], key_of: Any) -> tuple[list[str], list[int]]:
    keys: list[str] = []
    block_ids: list[int] = []
    for t in transfers:
        keys.extend(key_of(h) for h in t.hashes)
        block_ids.extend(t.block_ids)
    return keys, block_ids


# -- GPU staging (pinned host memory) ------------------------------------------


def _staging(layout: BlockLayout) -> torch.Tensor:
    return torch.empty(layout.block_nbytes, dtype=torch.uint8, pin_memory=True)


def _copy_into_segments(buf: torch.Tensor, segments: list[torch.Tensor]) -> None:
    off = 0
    for seg in segments:
        n = seg.numel() * seg.element_size()
        seg.view(-1).view(torch.uint8).copy_(buf[off:off + n], non_blocking=True)
        off += n


def _gather_to_host(segments: list[torch.Tensor]) -> torch.Tensor:
    total = sum(s.numel() * s.element_size() for s in segments)
    buf = torch.empty(total, dtype=torch.uint8, pin_memory=True)
    off = 0
    for seg in segments:
        n = seg.numel() * seg.element_size()
        buf[off:off + n].copy_(seg.reshape(-1).view(torch.uint8), non_blocking=True)
        off += n
    torch.accelerator.synchronize()
    return buf
