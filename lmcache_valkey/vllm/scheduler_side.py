"""The scheduler half of the ValkeyConnector: lookups and the per-step plan.

The scheduler asks, for each new (or preempted and resumed) request, how many
prompt tokens beyond its local prefix cache can be loaded. We answer from
one pipelined batch of ``PEXPIRE`` (with a TTL; ``EXISTS`` without) over the
prompt's full blocks, for the keys of **every** rank (a block counts as
present only if all ranks have it, and every rank's TTL is renewed by the
same round trip, so no rank's keys expire while the prefix is in use). The
last prompt token is never loaded: vLLM must compute at least one token.

The lookup never holds up the scheduler. It is submitted when the request
arrives (``on_new_request``); when the scheduler asks and the answer is not
in yet, it answers ``None`` — vLLM asks again next step — until
``lookup_timeout_ms`` have passed, when the request is served cold.
``lookup_wait_ms`` (default 0) lets the scheduler wait inline that long per
step in all instead: it saves a step for answers a moment away, but a hook
that sleeps also waits to get its core and the GIL back (measured on 2 vCPU
with 2 ms: p99 8-11 ms of wall time for 0.2 ms of CPU; with 0: p99 0.08 ms
and the same long-doc QA round time). While a
lookup abandoned that way is still outstanding (a stalled server), new
requests are served cold at once instead of queueing behind it.

A hit is loaded asynchronously (``load_async=True``): the request waits in
vLLM's ``WAITING_FOR_REMOTE_KVS`` while the workers receive, and each step's
metadata carries the loads decided since the last step. Saves: every full
prompt block that a step finishes computing and that the lookup did not find.
A block that failed to load is no longer believed present, so it is saved
again once recomputed.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

from ..errors import failed_future, partial_results
from ..observability.ratelimited_log import RateLimitedLog
from .metadata import BlockTransfer, ValkeyConnectorMetadata
from .stats import StatsRecorder

if TYPE_CHECKING:
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.outputs import KVConnectorOutput
    from vllm.v1.request import Request

# Under "vllm." so that vLLM's own log handler and level apply to our lines.
log = logging.getLogger("vllm." + __name__)

#: Lookup latencies kept for the periodic summary (and for tests/benchmarks).
_LATENCY_WINDOW = 1024
_SUMMARY_EVERY_S = 60.0


@dataclasses.dataclass(frozen=True)
class LookupOptions:
    wait_ms: float = 0.0       # per step, all lookups together: wait inline this long at most
    timeout_ms: float = 100.0  # no answer by then: a miss, served cold


@dataclasses.dataclass
class _Lookup:
    future: concurrent.futures.Future[Any]
    n_check: int
    started: float
    deadline: float


@dataclasses.dataclass
class _Request:
    request: Request
    present: set[int] = dataclasses.field(default_factory=set)  # block indices found in Valkey
    block_ids: list[int] = dataclasses.field(default_factory=list)
    saved_upto: int = 0               # blocks below this are stored, found, or queued to save
    lookup: _Lookup | None = None
    pending_load: tuple[int, int] | None = None   # (first block, count) offered to vLLM
    loading: dict[int, int] = dataclasses.field(default_factory=dict)  # block id -> index


class SchedulerSide:
    def __init__(self, client: Any, rank_key_bases: list[str], block_size: int,
                 options: LookupOptions | None = None) -> None:
        self._client = client
        self._bases = rank_key_bases   # one key base per rank whose keys a block needs
        self._block_size = block_size
        self.options = options or LookupOptions()
        self._reqs: dict[str, _Request] = {}
        self._loads: list[BlockTransfer] = []      # decided, not yet handed to the workers
        self._freed: set[int] = set()              # blocks freed since the last step
        self._abandoned: list[concurrent.futures.Future[Any]] = []
        self._wait_left_s = self.options.wait_ms / 1e3
        self._log = RateLimitedLog(log)
        self.lookup_latencies_s: list[float] = []
        self.lookups = 0
        self.hit_tokens = 0
        self.stats = StatsRecorder()  # what vLLM takes each step
        self._last_summary = time.monotonic()

    # -- lookup ------------------------------------------------------------

    def on_new_request(self, request: Request) -> None:
        """A request has arrived: start its lookup now, so that the answer is
        in by the time the scheduler asks (never waits here)."""
        st = self._reqs.get(request.request_id)
        if st is None:
            st = self._reqs[request.request_id] = _Request(request)
        n_check = self._blocks_to_check(request)
        if st.lookup is None and n_check > 0 and not self._server_stalled():
            st.lookup = self._submit_lookup(request, n_check)

    def _blocks_to_check(self, request: Request) -> int:
        """The prompt's full blocks that could be loaded (never the last token's)."""
        return min((request.num_prompt_tokens - 1) // self._block_size,
                   len(request.block_hashes))

    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int
                                   ) -> tuple[int | None, bool]:
        st = self._reqs.get(request.request_id)
        if st is None:
            st = self._reqs[request.request_id] = _Request(request)
        st.pending_load = None
        bs = self._block_size
        first = num_computed_tokens // bs
        n_check = self._blocks_to_check(request)
        if n_check <= first:      # vLLM's own prefix cache has it all (by now)
            st.lookup = None
            return 0, False
        if st.lookup is None:
            if self._server_stalled():
                self.stats.add(lookup_skipped=1)
                return 0, False
            st.lookup = self._submit_lookup(request, n_check)
        lk = st.lookup
        if not lk.future.done() and self._wait_left_s > 0:
            t0 = time.perf_counter()
            concurrent.futures.wait([lk.future], timeout=min(
                self._wait_left_s, max(0.0, lk.deadline - time.monotonic())))
            self._wait_left_s -= time.perf_counter() - t0
        if not lk.future.done():
            if time.monotonic() < lk.deadline:
                return None, False                     # ask again next step
            st.lookup = None
            self._abandoned.append(lk.future)
            self.stats.add(lookup_timeouts=1)
            self._log.warning("lookup-timeout", "ValkeyConnector: no lookup answer within "
                              "%.0f ms: serving without external KV until the server answers",
                              self.options.timeout_ms)
            return 0, False
        st.lookup = None
        return self._answer(st, lk, first)

    def _submit_lookup(self, request: Request, n_check: int) -> _Lookup:
        hashes = [h.hex() for h in request.block_hashes[:n_check]]
        keys = [base + h for base in self._bases for h in hashes]
        now = time.monotonic()
        try:
            fut = self._client.submit_batch_exists(keys, refresh_ttl=True)
        except Exception as e:  # closed client: a failed lookup
            fut = failed_future(e)
        return _Lookup(fut, n_check, time.perf_counter(), now + self.options.timeout_ms / 1e3)

    def _server_stalled(self) -> bool:
        self._abandoned = [f for f in self._abandoned if not f.done()]
        return bool(self._abandoned)

    def _answer(self, st: _Request, lk: _Lookup, first: int) -> tuple[int, bool]:
        n_keys = lk.n_check * len(self._bases)
        try:
            found = list(lk.future.result())
        except Exception as e:  # unreachable server: serve cold
            # With a cluster, the keys on the nodes that answered still count
            # (`partial`); a single server that is down has none.
            found = partial_results(e, n_keys)
            self._log.warning("lookup", "ValkeyConnector: lookup failed (%d of %d keys "
                              "found on the nodes that answered), serving the rest "
                              "without external KV: %s",
                              sum(hit is True for hit in found), n_keys, e)
            self.stats.add(lookup_failures=1)
        self._record_latency(time.perf_counter() - lk.started)
        per_rank = [found[r * lk.n_check:(r + 1) * lk.n_check] for r in range(len(self._bases))]
        st.present = {i for i in range(lk.n_check) if all(hits[i] is True for hits in per_rank)}
        bs = self._block_size
        n = 0
        while first + n < lk.n_check and (first + n) in st.present:
            n += 1
        if n:
            st.pending_load = (first, n)
            self.hit_tokens += n * bs
        self.stats.add(lookups=1, lookup_blocks=max(0, lk.n_check - first), hit_blocks=n,
                       hit_tokens=n * bs)
        return n * bs, n > 0

    def _record_latency(self, dt: float) -> None:
        self.lookups += 1
        lat = self.lookup_latencies_s
        lat.append(dt)
        if len(lat) > _LATENCY_WINDOW:
            del lat[: len(lat) - _LATENCY_WINDOW]
        now = time.monotonic()
        if now - self._last_summary >= _SUMMARY_EVERY_S:
            self._last_summary = now
            s = sorted(lat)
            log.info("ValkeyConnector: %d lookups, latency p50 %.2f ms p99 %.2f ms, "
                     "%d tokens found", self.lookups, 1e3 * s[len(s) // 2],
                     1e3 * s[min(len(s) - 1, int(len(s) * 0.99))], self.hit_tokens)

    # -- allocation and the step plan --------------------------------------

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks,
                                 num_external_tokens: int) -> None:
        st = self._reqs.get(request.request_id)
        if st is None or st.pending_load is None or num_external_tokens <= 0:
            return
        first, n = st.pending_load
        st.pending_load = None
        n = min(n, num_external_tokens // self._block_size)
        ids = list(blocks.get_block_ids()[0][first:first + n])
        hashes = [h.hex() for h in st.request.block_hashes[first:first + n]]
        self._loads.append(BlockTransfer(request.request_id, hashes, ids))
        st.loading = {b: first + i for i, b in enumerate(ids)}
        # Loaded blocks are in Valkey already: never save them back.
        st.saved_upto = max(st.saved_upto, first + n)

    def build_connector_meta(self, so: SchedulerOutput) -> ValkeyConnectorMetadata:
        self._wait_left_s = self.options.wait_ms / 1e3  # the next step's inline budget
        meta = ValkeyConnectorMetadata(loads=self._loads)
        self._loads = []
        # Blocks freed since the last step may be reused by this step's
        # compute: save copies still reading them must finish first.
        for req_id in so.preempted_req_ids or ():
            st = self._reqs.get(req_id)
            if st is not None:
                self._freed.update(st.block_ids)
        meta.freed_blocks, self._freed = self._freed, set()
        for new in so.scheduled_new_reqs:
            st = self._reqs.get(new.req_id)
            if st is None:
                continue
            st.block_ids = list(new.block_ids[0])
            self._plan(st, meta, new.num_computed_tokens + so.num_scheduled_tokens[new.req_id])
        cached = so.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            st = self._reqs.get(req_id)
            if st is None:
                continue
            new_ids = cached.new_block_ids[i]
            if req_id in cached.resumed_req_ids:
                st.block_ids = list(new_ids[0]) if new_ids else []
            elif new_ids:
                st.block_ids.extend(new_ids[0])
            self._plan(st, meta, cached.num_computed_tokens[i] + so.num_scheduled_tokens[req_id])
        return meta

    def _plan(self, st: _Request, meta: ValkeyConnectorMetadata, done_tokens: int) -> None:
        st.loading = {}
        req = st.request
        n_full = min(done_tokens, req.num_prompt_tokens) // self._block_size
        n_full = min(n_full, len(req.block_hashes), len(st.block_ids))
        todo = [i for i in range(st.saved_upto, n_full) if i not in st.present]
        if todo:
            meta.saves.append(BlockTransfer(req.request_id,
                                            [req.block_hashes[i].hex() for i in todo],
                                            [st.block_ids[i] for i in todo]))
        st.saved_upto = max(st.saved_upto, n_full)

    def update_connector_output(self, output: KVConnectorOutput) -> None:
        """Blocks the workers could not load are not in Valkey after all:
        forget them, so they are saved again once vLLM has recomputed them."""
        bad = output.invalid_block_ids
        if not bad:
            return
        for st in self._reqs.values():
            for block_id, idx in st.loading.items():
                if block_id in bad:
                    st.present.discard(idx)
                    st.saved_upto = min(st.saved_upto, idx)

    def request_finished(self, request: Request, block_ids: list[int]) -> None:
        self._reqs.pop(request.request_id, None)
        self._freed.update(block_ids)
