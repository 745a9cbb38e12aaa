"""The worker half of the ValkeyConnector: move block bytes, never waiting on the network.

Every hook returns at once; transfers finish in the background and are
reported to vLLM when they are done:

- **Loads** are asynchronous (the scheduler answered ``load_async=True``):
  ``start_load_kv`` submits one pipelined GET batch per request and returns;
  ``get_finished`` reports the request in ``finished_recving`` once all its
  blocks are in the KV cache, and the blocks that could not be loaded
  (missing, short, failed) through ``get_block_ids_with_load_errors`` in the
  same pass, so vLLM recomputes them. vLLM keeps a request's blocks while
  its load runs, even if the request is aborted meanwhile. On CPU each value
  is received straight into its block (a scatter list over layers); with
  staging (GPU, or ``staging: "force"``) it is received into a staging chunk,
  then one host-to-device copy per chunk on a side stream scatters the rows
  into their blocks, and the request is reported when that copy's event is done.
- **Saves** copy the step's finished blocks into a staging chunk (on CPU a
  memcpy on a copier thread; on GPU a device-to-host copy on a side stream
  ordered after the compute stream) and send from the chunk in the
  background; ``wait_for_save`` only enqueues. A step whose scheduler freed
  blocks that a copy still reads orders its compute after that copy in
  ``handle_preemptions`` (GPU-side ``wait_event``; on CPU a wait for the
  memcpy). When the staging pool is full the save is
  dropped and counted: the backlog is bounded, never queued without limit.

Nothing raises into vLLM.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import time
from typing import Any

import torch

from ..errors import failed_future, partial_results
from ..observability.ratelimited_log import RateLimitedLog
from .kv_layout import BlockLayout
from .metadata import BlockTransfer
from .staging import CudaStreams, EmulatedStreams, StagingPool, _Event
from .stats import StatsRecorder

# Under "vllm." so that vLLM's own log handler and level apply to our lines.
log = logging.getLogger("vllm." + __name__)


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    staging: str = "auto"              # "auto": stage iff the KV cache is not on the CPU; "force"
    staging_bytes: int = 256 << 20     # the staging pool: bound on save backlog + staged loads
    chunk_bytes: int = 32 << 20        # one staged copy / one pipelined batch at most
    drain_timeout_s: float = 10.0      # shutdown waits this long for saves in flight
    emulated_stream_delay_s: float = 0.0  # tests: widen the emulated streams' race windows
    is_writer: bool = True             # False: replicated KV another rank writes


@dataclasses.dataclass
class _Piece:
    """Up to one staging chunk's worth of one transfer."""

    keys: list[str]
    block_ids: list[int]
    chunk: int | None = None
    future: concurrent.futures.Future[Any] | None = None
    event: Any = None                  # staged copy done (device <-> staging)
    done: bool = False


@dataclasses.dataclass
class _Load:
    req_id: str
    queued: list[_Piece]               # waiting for a staging chunk
    running: list[_Piece] = dataclasses.field(default_factory=list)
    failed: set[int] = dataclasses.field(default_factory=set)
    nblocks: int = 0


class WorkerSide:
    def __init__(self, client: Any, key_of: Any, options: WorkerOptions | None = None) -> None:
        self._client = client
        self._key_of = key_of
        self.options = options or WorkerOptions()
        self._layout: BlockLayout | None = None
        self._pool: StagingPool | None = None
        self._streams: CudaStreams | EmulatedStreams | None = None
        self._pages: list[tuple[torch.Tensor, int]] = []   # [num_blocks, page] views, value offset
        self._seg_offsets: list[int] = []
        self._load_scratch: torch.Tensor | None = None
        self._save_scratch: torch.Tensor | None = None
        self._loads: dict[str, _Load] = {}
        self._saves: list[_Piece] = []
        self._copier: EmulatedStreams | None = None
        self._load_errors: set[int] = set()
        self.asleep = False
        self._log = RateLimitedLog(log)
        # Counters for logs, stats and tests.
        self.blocks_loaded = 0
        self.blocks_saved = 0
        self.blocks_failed = 0
        self.blocks_dropped = 0
        self.stats = StatsRecorder()  # what vLLM takes each step

    # -- registration ------------------------------------------------------

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor], num_blocks: int) -> None:
        layout = self._layout = BlockLayout(kv_caches, num_blocks)
        opts = self.options
        staged = layout.device.type != "cpu" or opts.staging == "force"
        self._pool = StagingPool(layout.block_nbytes, opts.staging_bytes, opts.chunk_bytes,
                                 pin=layout.device.type == "cuda")
        self._seg_offsets = [off for _, off in layout.page_views()] + [layout.block_nbytes]
        # CPU KV: the save memcpy runs on a copier thread (off the step; on the
        # core vLLM reserves for its own threads), then that thread sends.
        self._copier = None if staged else EmulatedStreams(opts.emulated_stream_delay_s)
        if staged:
            self._streams = (CudaStreams(layout.device) if layout.device.type == "cuda"
                             else EmulatedStreams(opts.emulated_stream_delay_s))
            self._pages = layout.page_views()
            shape = (self._pool.chunk_blocks, layout.block_nbytes)
            self._load_scratch = torch.empty(shape, dtype=torch.uint8, device=layout.device)
            self._save_scratch = torch.empty(shape, dtype=torch.uint8, device=layout.device)
        log.info("ValkeyConnector: %d KV layers, %d blocks of %d bytes per stored value (%s, "
                 "%s); staging pool %d x %d blocks (%d MiB)%s",
                 len(layout.layer_names), num_blocks, layout.block_nbytes, layout.device,
                 "staged" + (" (emulated streams)" if self._streams and self._streams.emulated
                             else "") if staged else "direct",
                 self._pool.n_chunks, self._pool.chunk_blocks, self._pool.nbytes >> 20,
                 "" if opts.is_writer else "; replicated KV: another rank writes")

    def suspend(self) -> None:
        """Sleep mode: the KV cache's memory is about to be unmapped. Let every
        transfer that touches it end; until :meth:`resume` none starts (a load
        fails its blocks, a save is dropped). The tensors keep their addresses
        across sleep (vLLM's cumem allocator), so the layout stays valid."""
        self.drain(self.options.drain_timeout_s)
        self.asleep = True

    def resume(self) -> None:
        self.asleep = False

    @property
    def layout(self) -> BlockLayout:
        if self._layout is None:
            raise RuntimeError("ValkeyConnector: KV caches not registered yet")
        return self._layout

    @property
    def staged(self) -> bool:
        return self._streams is not None

    def _staging(self, piece: _Piece) -> tuple[StagingPool, int]:
        """The staging pool and the chunk a staged piece holds."""
        if self._pool is None or piece.chunk is None:
            raise RuntimeError("ValkeyConnector: a staged piece without a staging chunk")
        return self._pool, piece.chunk

    # -- loads -------------------------------------------------------------

    def start_loads(self, transfers: list[BlockTransfer]) -> None:
        """Submit each request's load; returns at once."""
        layout = self.layout
        for t in transfers:
            keys = [self._key_of(h) for h in t.hashes]
            job = _Load(t.req_id, [], nblocks=len(keys))
            if self.asleep:  # the KV memory is unmapped: nothing may land there
                job.failed.update(t.block_ids)
            elif self.staged:
                step = self._pool.chunk_blocks  # type: ignore[union-attr]
                job.queued = [_Piece(keys[i:i + step], t.block_ids[i:i + step])
                              for i in range(0, len(keys), step)]
            else:
                piece = _Piece(keys, list(t.block_ids))
                piece.future = self._client.submit_batch_get_into(
                    keys, [layout.host_segments(b) for b in t.block_ids])
                job.running.append(piece)
            self._loads[t.req_id] = job
        self._start_queued_loads()

    def _start_queued_loads(self) -> None:
        pool = self._pool
        for job in self._loads.values():
            while job.queued:
                chunk = pool.take()  # type: ignore[union-attr]
                if chunk is None:
                    return
                piece = job.queued.pop(0)
                piece.chunk = chunk
                piece.future = self._client.submit_batch_get_into(
                    piece.keys, pool.host_rows(chunk, len(piece.keys)))  # type: ignore[union-attr]
                job.running.append(piece)

    def _advance_load(self, job: _Load, piece: _Piece) -> None:
        """Move one piece on: received -> (staged) copy to the device -> done."""
        layout = self.layout
        if piece.event is None:
            if not piece.future.done():  # type: ignore[union-attr]
                return
            try:
                sizes = list(piece.future.result())  # type: ignore[union-attr]
            except Exception as e:
                sizes = partial_results(e, len(piece.keys))
                self.stats.add(load_failures=1)
                self._log.warning("load", "ValkeyConnector: load of %d blocks failed; vLLM "
                                  "recomputes them: %s", len(piece.keys), e)
            ok = [s == layout.block_nbytes for s in sizes]
            job.failed.update(b for b, good in zip(piece.block_ids, ok, strict=True) if not good)
            if not self.staged:
                piece.done = True
                return
            rows = [i for i, good in enumerate(ok) if good]
            piece.event = self._streams.run(  # type: ignore[union-attr]
                self._streams.load_stream,  # type: ignore[union-attr]
                lambda: self._scatter_rows(piece, rows), after_compute=False)
        if self._streams.done(piece.event):  # type: ignore[union-attr]
            pool, chunk = self._staging(piece)
            pool.give_back(chunk)
            piece.done = True

    def _scatter_rows(self, piece: _Piece, rows: list[int]) -> None:
        """On the load stream: staging rows -> device scratch -> their blocks."""
        if not rows:
            return
        n = len(piece.keys)
        scratch = self._load_scratch[:n]  # type: ignore[index]
        pool, chunk = self._staging(piece)
        scratch.copy_(pool.rows(chunk, n), non_blocking=True)
        if len(rows) < n:
            scratch = scratch.index_select(0, _index(rows, scratch.device))
        blocks = _index([piece.block_ids[i] for i in rows], scratch.device)
        for view, off in self._pages:
            view.index_copy_(0, blocks, scratch[:, off:off + view.shape[1]])

    def poll_loads(self) -> set[str]:
        """Requests whose loads ended since the last call (their failed blocks
        are then in :meth:`take_load_errors`)."""
        finished: set[str] = set()
        if not self._loads:
            return finished
        for req_id, job in list(self._loads.items()):
            for piece in job.running:
                if not piece.done:
                    self._advance_load(job, piece)
            if job.queued or not all(p.done for p in job.running):
                continue
            del self._loads[req_id]
            finished.add(req_id)
            loaded = job.nblocks - len(job.failed)
            self.blocks_loaded += loaded
            if job.failed:
                self._load_errors.update(job.failed)
                self.blocks_failed += len(job.failed)
                self._log.warning("load-miss", "ValkeyConnector: %d of %d blocks could not be "
                                  "loaded (evicted, expired, short or failed); vLLM recomputes "
                                  "them", len(job.failed), job.nblocks)
            self.stats.add(loaded_blocks=loaded, load_error_blocks=len(job.failed),
                           loaded_bytes=loaded * self.layout.block_nbytes)
        if self.staged:
            self._start_queued_loads()
        return finished

    def take_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

    # -- saves -------------------------------------------------------------

    def start_saves(self, transfers: list[BlockTransfer]) -> None:
        """Copy the blocks into staging chunks and send in the background; a
        block that finds no free chunk is dropped and counted."""
        if not transfers or not self.options.is_writer:
            return
        if self.asleep:
            self._count_dropped(sum(len(t.hashes) for t in transfers), "sleeping")
            return
        pool = self._pool
        assert pool is not None
        dropped = 0
        for t in transfers:
            step = pool.chunk_blocks
            for i in range(0, len(t.hashes), step):
                block_ids = t.block_ids[i:i + step]
                chunk = pool.take()
                if chunk is None:
                    dropped += len(t.hashes) - i
                    break
                piece = _Piece([self._key_of(h) for h in t.hashes[i:i + step]], block_ids,
                               chunk=chunk)
                if self.staged:
                    piece.event = self._streams.run(  # type: ignore[union-attr]
                        self._streams.save_stream,  # type: ignore[union-attr]
                        functools.partial(self._gather_rows, piece), after_compute=True)
                else:
                    piece.event = self._copier.run(  # type: ignore[union-attr]
                        self._copier.save_stream,  # type: ignore[union-attr]
                        functools.partial(self._copy_and_send, piece), after_compute=True)
                self._saves.append(piece)
        if dropped:
            self._count_dropped(
                dropped, f"staging pool full: {pool.nbytes >> 20} MiB of saves in flight")

    def _count_dropped(self, dropped: int, why: str) -> None:
        self.blocks_dropped += dropped
        self.stats.add(save_dropped_blocks=dropped)
        self._log.warning("save-dropped", "ValkeyConnector: %d blocks not saved (%s)", dropped, why)

    def _copy_and_send(self, piece: _Piece) -> None:
        """On the copier thread (CPU KV): blocks -> staging rows, then send."""
        try:
            pool, chunk = self._staging(piece)
            rows = pool.host_rows(chunk, len(piece.keys))
            offs = self._seg_offsets
            for row, b in zip(rows, piece.block_ids, strict=True):
                for seg, a, z in zip(self.layout.host_segments(b), offs, offs[1:], strict=False):
                    row[a:z] = seg.reshape(-1)
            piece.future = self._client.submit_batch_set(piece.keys, rows)
        except Exception as e:  # a closed client: a failed save, counted by poll_saves
            piece.future = failed_future(e)

    def _gather_rows(self, piece: _Piece) -> None:
        """On the save stream: blocks -> device scratch -> staging rows."""
        n = len(piece.keys)
        scratch = self._save_scratch[:n]  # type: ignore[index]
        blocks = _index(piece.block_ids, scratch.device)
        for view, off in self._pages:
            scratch[:, off:off + view.shape[1]] = view.index_select(0, blocks)
        pool, chunk = self._staging(piece)
        pool.rows(chunk, n).copy_(scratch, non_blocking=True)

    def _send(self, piece: _Piece) -> None:
        pool, chunk = self._staging(piece)
        piece.future = self._client.submit_batch_set(piece.keys,
                                                     pool.host_rows(chunk, len(piece.keys)))

    def poll_saves(self) -> None:
        """Send what the staged copies have finished; count what was stored."""
        still: list[_Piece] = []
        for piece in self._saves:
            if piece.event is not None:
                if not self._copied(piece.event):
                    still.append(piece)
                    continue
                piece.event = None
                if piece.future is None:   # staged: the copy is done, send now
                    self._send(piece)
            if not piece.future.done():  # type: ignore[union-attr]
                still.append(piece)
                continue
            self._count_saved(piece)
        self._saves = still

    def _count_saved(self, piece: _Piece) -> None:
        n = len(piece.keys)
        try:
            results = piece.future.result()  # type: ignore[union-attr]
            failures = 0
        except Exception as e:
            # A cluster node down fails only its blocks: count the others.
            results = partial_results(e, n)
            failures = 1
            self._log.warning("save", "ValkeyConnector: saving %d blocks failed: %s", n, e)
        finally:
            pool, chunk = self._staging(piece)
            pool.give_back(chunk)
        stored = sum(r is True for r in results)
        self.blocks_saved += stored
        self.stats.add(saved_blocks=stored, save_error_blocks=n - stored,
                       saved_bytes=stored * self.layout.block_nbytes, save_failures=failures)
        errs = getattr(results, "errors", {}) or {}
        if stored < n and not failures:
            self._log.warning("save-partial", "ValkeyConnector: %d of %d blocks not stored%s",
                              n - stored, n,
                              f" (e.g. {next(iter(errs.values()))})" if errs else "")

    def order_before_reuse(self, freed: set[int]) -> None:
        """Blocks ``freed`` since the last step may be reused by this step's
        compute: it must not overwrite them before the copies still reading
        them are done (GPU: a GPU-side ``wait_event``; CPU: a host wait on a
        memcpy). Copies of other blocks are left to run."""
        for piece in self._saves:
            if piece.event is None or freed.isdisjoint(piece.block_ids):
                continue
            if isinstance(piece.event, _Event):           # CPU copier, emulated streams
                EmulatedStreams.wait(piece.event)
            elif not self._streams.done(piece.event):      # type: ignore[union-attr]
                self._streams.order_compute_after(piece.event)  # type: ignore[union-attr]

    def _copied(self, event: Any) -> bool:
        if isinstance(event, _Event):
            return EmulatedStreams.done(event)
        return self._streams.done(event)  # type: ignore[union-attr]

    # -- the end -----------------------------------------------------------

    def busy(self) -> bool:
        return bool(self._loads or self._saves)

    def drain(self, timeout_s: float) -> bool:
        """Wait (shutdown, sleep) until loads and saves in flight end; ``True`` if they did."""
        deadline = time.monotonic() + timeout_s
        while self.busy() and time.monotonic() < deadline:
            self.poll_loads()
            self.poll_saves()
            time.sleep(0.002)
        if self.busy():
            log.warning("ValkeyConnector: %d loads and %d saves still in flight after %.1f s",
                        len(self._loads), len(self._saves), timeout_s)
            return False
        return True


def _index(values: list[int], device: torch.device) -> torch.Tensor:
    t = torch.tensor(values, dtype=torch.int64)
    if device.type == "cuda":  # pinned, so the copy is asynchronous (no sync)
        return t.pin_memory().to(device, non_blocking=True)
    return t
