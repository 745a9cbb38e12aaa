"""End to end: ``python -m vllm.entrypoints.openai.api_server --kv-transfer-config
'{"kv_connector":"ValkeyConnector",...}'`` serving a tiny local Llama.

The model (a locally trained BPE tokenizer and *random* weights with
std 0.1, so attention is far from uniform) is built by the test. Every answer
is compared with a server without the connector: the same token ids, and
logprobs within 1e-5. That tolerance is 200x tighter than what a wrong KV
block does (one stored block of 18 replaced by its neighbour moves the
logprobs by 2e-3), and 20x looser than the float32 noise between otherwise
identical runs on this CPU (~5e-7: the same server, with or without a
connector, loaded or computed, differs in the 7th digit from run to run).

Loads are proven by vLLM's own counter ``vllm:external_prefix_cache_hits_total``
(tokens loaded through the connector).

Each server start costs ~45 s on 2 cores, so the scenarios share a reference
run and a Valkey server.
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("vllm")

from vllm_server import HITS, VllmServer, random_prompt  # noqa: E402

from lmcache_valkey import EmbeddedValkey  # noqa: E402
from lmcache_valkey.testkit.tiny_llama import TEST_TINY, build_tiny_llama  # noqa: E402

pytestmark = pytest.mark.timeout(900)

BLOCK = 32


# Lengths with and without a partial last block.
PROMPTS = {f"p{i}": random_prompt(i, n) for i, n in enumerate([600, 417, 256, 333])}


def loadable_tokens(prompt: list[int]) -> int:
    """Tokens a warm request can load: full blocks, never the last prompt token."""
    return (len(prompt) - 1) // BLOCK * BLOCK


def connector(url: str, key_prefix: str, **extra) -> dict:
    return {"kv_connector": "ValkeyConnector", "kv_role": "kv_both",
            "kv_connector_extra_config": {"url": url, "key_prefix": key_prefix, **extra}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), **{**TEST_TINY, "init_std": 0.1})


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("vllm-logs")


@pytest.fixture(scope="module")
def reference(model_dir, logs):
    """Answers of a server without any connector."""
    with VllmServer(model_dir, logs / "reference.log") as srv:
        return {name: srv.complete(p) for name, p in PROMPTS.items()}


def assert_same_answer(out, ref, name: str) -> None:
    assert out[0] == ref[0], name
    assert out[1] == pytest.approx(ref[1], abs=1e-5), name


def test_restart_loads_kv_from_valkey_with_identical_outputs(model_dir, logs, reference, valkey):
    kv = connector(valkey.url, "e2e-restart:")
    with VllmServer(model_dir, logs / "warmup.log", kv_transfer=kv) as srv:
        cold = {name: srv.complete(p) for name, p in PROMPTS.items()}
        assert srv.metric(HITS) == 0
    for name in PROMPTS:
        assert_same_answer(cold[name], reference[name], name)
    # A new process: vLLM's own prefix cache is empty, Valkey is not.
    with VllmServer(model_dir, logs / "after-restart.log", kv_transfer=kv) as srv:
        for name, p in PROMPTS.items():
            assert_same_answer(srv.complete(p), cold[name], name)
        assert srv.metric(HITS) == sum(loadable_tokens(p) for p in PROMPTS.values())


def test_two_servers_share_one_valkey(model_dir, logs, reference, valkey):
    kv = connector(valkey.url, "e2e-shared:")
    with VllmServer(model_dir, logs / "replica-a.log", kv_transfer=kv) as a, \
            VllmServer(model_dir, logs / "replica-b.log", kv_transfer=kv,
                       prefix_caching=False) as b:
        cold = {name: a.complete(PROMPTS[name]) for name in ("p0", "p1")}
        for name in ("p0", "p1"):
            assert_same_answer(cold[name], reference[name], name)
            assert_same_answer(b.complete(PROMPTS[name]), cold[name], name)
        assert b.metric(HITS) == loadable_tokens(PROMPTS["p0"]) + loadable_tokens(PROMPTS["p1"])
        assert a.metric(HITS) == 0


def test_valkey_killed_mid_run_answers_stay_correct_and_it_recovers(model_dir, logs, reference):
    with EmbeddedValkey() as vk:
        port = vk.port
        kv = connector(vk.url, "e2e-kill:", connect_timeout_s=1)
        srv = VllmServer(model_dir, logs / "valkey-killed.log", kv_transfer=kv,
                         prefix_caching=False)
        with srv:
            assert_same_answer(srv.complete(PROMPTS["p0"]), reference["p0"], "p0")
            vk.stop()                                             # Valkey gone
            for name in ("p0", "p1", "p2"):                       # cold, still right
                assert_same_answer(srv.complete(PROMPTS[name]), reference[name], name)
            assert srv.metric(HITS) == 0
            with EmbeddedValkey(port=port):                       # back, empty
                deadline = time.monotonic() + 30
                while srv.metric(HITS) == 0 and time.monotonic() < deadline:
                    for name in ("p2", "p3"):                     # stored, then loaded
                        assert_same_answer(srv.complete(PROMPTS[name]), reference[name], name)
                    time.sleep(0.5)
                assert srv.metric(HITS) > 0
            assert srv.alive()
            log = srv.log_tail(1_000_000)                         # before shutdown
        assert "Traceback" not in log
        assert log.count("ValkeyConnector: lookup failed") <= 4   # rate-limited
