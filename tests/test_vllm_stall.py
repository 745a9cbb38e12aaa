"""End to end: a frozen Valkey must not freeze vLLM (issue 13, "never on vLLM's critical path").

``valkey-server`` is stopped with SIGSTOP (a failover, a fork for a snapshot,
a network hiccup: the server is there but silent) under a serving vLLM with
the ValkeyConnector. What users must see — behaviour, not timings:

* a new request sent during the freeze is answered in full before the
  freeze ends (computed cold);
* a request that was already streaming keeps streaming during the freeze;
* after SIGCONT, a document stored before the freeze is loaded from Valkey
  again (vLLM's ``external_prefix_cache_hits_total`` grows) with the same answer.

The freeze lasts 15 s: longer than any "normal" wait of the connector (its
lookup deadline and backlog are sub-second), shorter than its ``op_timeout_s``
so that only an asynchronous connector can pass. The timings are measured by
``examples/long_doc_qa/stall.py``, not here.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

pytest.importorskip("vllm")

from vllm_server import HITS, VllmServer, random_prompt  # noqa: E402

from lmcache_valkey import EmbeddedValkey  # noqa: E402
from lmcache_valkey.testkit.tiny_llama import TEST_TINY, build_tiny_llama  # noqa: E402

pytestmark = pytest.mark.timeout(300)

FREEZE_S = 15.0
CONTEXT = 32768


@pytest.fixture(scope="module")
def long_context_model(tmp_path_factory):
    """The tiny Llama with a context long enough for a stream that outlasts the freeze
    (it decodes a few hundred tokens a second here)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-long"),
                            **{**TEST_TINY, "max_position_embeddings": CONTEXT})


def test_valkey_frozen_vllm_keeps_serving_and_hits_again_after(long_context_model, tmp_path):
    warm, cold = random_prompt(101, 600), random_prompt(102, 600)
    with EmbeddedValkey() as valkey:
        kv = {"kv_connector": "ValkeyConnector", "kv_role": "kv_both",
              "kv_connector_extra_config": {"url": valkey.url, "key_prefix": "e2e-stall:"}}
        with VllmServer(long_context_model, tmp_path / "vllm.log", kv_transfer=kv,
                        prefix_caching=False, max_model_len=CONTEXT) as srv:
            warm_answer = srv.complete(warm)              # computed, stored in Valkey
            arrivals: list[float] = []
            stop = threading.Event()
            streamer = threading.Thread(
                target=srv.stream, args=([1, 2, 3, 4], CONTEXT - 8, arrivals, stop), daemon=True)
            streamer.start()
            deadline = time.monotonic() + 60
            while len(arrivals) < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(arrivals) >= 5, "the streaming request did not start"

            answered: dict[str, object] = {}

            def new_request() -> None:
                answered["answer"] = srv.complete(cold)
                answered["at"] = time.monotonic()

            os.kill(valkey.pid, signal.SIGSTOP)
            freeze_start = time.monotonic()
            try:
                time.sleep(1.0)
                asker = threading.Thread(target=new_request, daemon=True)
                asker.start()
                asker.join(FREEZE_S - 1.0)
                time.sleep(max(0.0, freeze_start + FREEZE_S - time.monotonic()))
            finally:
                freeze_end = time.monotonic()
                os.kill(valkey.pid, signal.SIGCONT)
            streamed_in_second_half = [t for t in arrivals
                                       if freeze_start + FREEZE_S / 2 <= t <= freeze_end]
            stop.set()
            asker.join(120)
            streamer.join(120)

            # The new request was answered in full while Valkey was still stopped.
            assert "at" in answered, "the request sent during the freeze never completed"
            assert answered["at"] < freeze_end, (
                f"the request sent during the freeze was answered "
                f"{answered['at'] - freeze_end:.1f} s after SIGCONT: vLLM waited on Valkey")
            tokens, _ = answered["answer"]
            assert len(tokens) == 8
            # The streaming request kept streaming through the freeze.
            assert streamed_in_second_half, (
                "the streaming request got no token in the second half of the freeze")

            # After SIGCONT the stored document is loaded again, same answer.
            hits_before = srv.metric(HITS)
            deadline = time.monotonic() + 30
            while srv.metric(HITS) == hits_before and time.monotonic() < deadline:
                again = srv.complete(warm)
                assert again[0] == warm_answer[0]
                assert again[1] == pytest.approx(warm_answer[1], abs=1e-5)
                time.sleep(0.5)
            assert srv.metric(HITS) > hits_before, "nothing was loaded from Valkey after SIGCONT"
            assert srv.alive()
