"""The scheduler half of the ValkeyConnector: lookups and the per-step plan.

The scheduler asks, for each new (or preempted and resumed) request, how many
prompt tokens beyond its local prefix cache can be loaded. We answer with one
pipelined batch of ``PEXPIRE`` (with a TTL; ``EXISTS`` without) over the
prompt's full blocks — a hit's TTL is renewed so it cannot expire before the
load — and count the consecutive hits after the local prefix. The last
prompt token is never loaded: vLLM must compute at least one token.

Each step's metadata then lists the loads decided since the last step and
the saves due: every full prompt block that this step finishes computing and
that the lookup did not find in Valkey. Saves are done by the workers before
the step ends (``wait_for_save``), so no block can be freed and reused while
its bytes are being sent.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

from ..errors import partial_results
from ..ratelimited_log import RateLimitedLog
from .metadata import BlockTransfer, ValkeyConnectorMetadata
from .stats import StatsRecorder

if TYPE_CHECKING:
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.request import Request

# Under "vllm." so that vLLM's own log handler and level apply to our lines.
log = logging.getLogger("vllm." + __name__)

#: Lookup latencies kept for the periodic summary (and for tests/benchmarks).
_LATENCY_WINDOW = 1024
_SUMMARY_EVERY_S = 60.0


@dataclasses.dataclass
class _Request:
    request: Request
    present: set[int] = dataclasses.field(default_factory=set)  # block indices found in Valkey
    block_ids: list[int] = dataclasses.field(default_factory=list)
    saved_upto: int = 0               # blocks below this are stored, found, or queued to save
    pending_load: tuple[int, int] | None = None   # (first block, count) offered to vLLM
    load: BlockTransfer | None = None  # decided, not yet handed to the workers


class SchedulerSide:
    def __init__(self, client: Any, key_of: Any, block_size: int) -> None:
        self._client = client
        self._key_of = key_of          # hash hex -> key (without the client's prefix)
        self._block_size = block_size
        self._reqs: dict[str, _Request] = {}
        self._log = RateLimitedLog(log)
        self.lookup_latencies_s: list[float] = []
        self.lookups = 0
        self.hit_tokens = 0
        self.stats = StatsRecorder()  # what vLLM takes each step
        self._last_summary = time.monotonic()

    # -- lookup ------------------------------------------------------------

    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int
                                   ) -> tuple[int, bool]:
        st = self._reqs.get(request.request_id)
        if st is None:
            st = self._reqs[request.request_id] = _Request(request)
        st.pending_load = None
        bs = self._block_size
        n_check = min((request.num_prompt_tokens - 1) // bs, len(request.block_hashes))
        first = num_computed_tokens // bs
        if n_check <= first:
            return 0, False
        hashes = [h.hex() for h in request.block_hashes[:n_check]]
        t0 = time.perf_counter()
        try:
            found = self._client.batch_exists([self._key_of(h) for h in hashes], refresh_ttl=True)
        except Exception as e:  # unreachable server: serve cold
            # With a cluster, the keys on the nodes that answered still count
            # (`partial`); a single server that is down has none.
            found = partial_results(e, len(hashes))
            self._log.warning("lookup", "ValkeyConnector: lookup failed (%d of %d blocks "
                              "found on the nodes that answered), serving the rest "
                              "without external KV: %s",
                              sum(hit is True for hit in found), len(hashes), e)
            self.stats.add(lookup_failures=1)
            if not any(hit is True for hit in found):
                return 0, False
        self._record_latency(time.perf_counter() - t0)
        st.present = {i for i, hit in enumerate(found) if hit is True}
        n = 0
        while first + n < n_check and (first + n) in st.present:
            n += 1
        if n:
            st.pending_load = (first, n)
            self.hit_tokens += n * bs
        self.stats.add(lookups=1, lookup_blocks=n_check - first, hit_blocks=n, hit_tokens=n * bs)
        return n * bs, False

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
        ids = blocks.get_block_ids()[0]
        hashes = [h.hex() for h in st.request.block_hashes[first:first + n]]
        st.load = BlockTransfer(request.request_id, hashes, list(ids[first:first + n]))
        # Loaded blocks are in Valkey already: never save them back.
        st.saved_upto = max(st.saved_upto, first + n)

    def build_connector_meta(self, so: SchedulerOutput) -> ValkeyConnectorMetadata:
        meta = ValkeyConnectorMetadata()
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
        if st.load is not None:
            meta.loads.append(st.load)
            st.load = None
        req = st.request
        n_full = min(done_tokens, req.num_prompt_tokens) // self._block_size
        n_full = min(n_full, len(req.block_hashes), len(st.block_ids))
        todo = [i for i in range(st.saved_upto, n_full) if i not in st.present]
        if todo:
            meta.saves.append(BlockTransfer(req.request_id,
                                            [req.block_hashes[i].hex() for i in todo],
                                            [st.block_ids[i] for i in todo]))
        st.saved_upto = max(st.saved_upto, n_full)

    def request_finished(self, request: Request) -> None:
        self._reqs.pop(request.request_id, None)
