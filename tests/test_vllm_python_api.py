"""vLLM driven from Python (not ``vllm serve``), as a platform embeds it: the
offline ``LLM(..., kv_transfer_config=KVTransferConfig(kv_connector=
"ValkeyConnector", ...))`` and the async engine
(``AsyncLLMEngine.from_engine_args(AsyncEngineArgs(...))``), each in a
process of its own running ``examples/python_api/generate.py`` -- the example
the README shows is the code under test.

Two scenarios, three engine starts (each costs ~45-90 s on 2 cores).

Restart (two engines):

1. the offline LLM answers four prompts cold and stores their KV in a Valkey
   that keeps its data (``--data-dir``, RDB snapshots: the default);
2. Valkey is stopped (SIGTERM: it writes its snapshot) and started again
   from its files; the vLLM process is gone too;
3. the async engine, in a new process, answers the same prompts: every full
   prompt block is loaded (vLLM's ``num_cached_tokens``, in a fresh process
   with vLLM's own prefix cache empty) and the answers are the same tokens,
   logprobs within 1e-5 (float32 noise here is ~5e-6, a wrong block moves
   them by ~1e-3: see test_vllm_e2e.py).

Shared server (one engine): a Valkey with ``maxmemory`` and ``allkeys-lru``
that holds other consumers' keys (``emb:``, ``session:``, ``ray:``) and has
room for fewer blocks than the prompts make (their keys, idle longer, are
evicted first: the README's case for ``volatile-lru``). vLLM's own prefix cache is off,
so every hit comes from Valkey; the prompts are asked twice. The second
round's answers equal the first's (all computed: the prompts share no
block), whatever LRU evicted; the hit rate is reported (``-s``; the
README's figure).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")


from server_pressure import ALLKEYS_LRU, admin  # noqa: E402
from shared_keyspace import other_consumers, snapshot  # noqa: E402

from lmcache_valkey import EmbeddedValkey, open_client  # noqa: E402
from lmcache_valkey.observability.server_stats import count_keys  # noqa: E402
from lmcache_valkey.server.persistence import persistence_config  # noqa: E402
from lmcache_valkey.testkit.tiny_llama import TEST_TINY, build_tiny_llama  # noqa: E402

pytestmark = pytest.mark.timeout(900)

GENERATE = Path(__file__).resolve().parents[1] / "examples" / "python_api" / "generate.py"
BLOCK = 32
KV_PREFIX = "vllm:kv:"


def run_generate(model: Path, url: str, workdir: Path, name: str, *args: str) -> list[list]:
    """examples/python_api/generate.py in a process of its own; its answers."""
    out = workdir / f"{name}.json"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # set by in-process vLLM tests
    with open(workdir / f"{name}.log", "wb") as log:
        proc = subprocess.run(
            # Exact hit counts are asserted: a lookup must not time out on a
            # loaded machine (the timeout itself: test_vllm_async.py).
            [sys.executable, str(GENERATE), "--model", str(model), "--url", url,
             "--lookup-timeout-ms", "10000",
             "--key-prefix", KV_PREFIX, "--block-size", str(BLOCK), "--dtype", "float32",
             "--enforce-eager", "--out", str(out), *args],
            stdout=log, stderr=subprocess.STDOUT, env=env, timeout=600,
            cwd=workdir)  # outside the checkout: the installed package is imported
    log_text = (workdir / f"{name}.log").read_text(errors="replace")
    assert proc.returncode == 0, log_text[-6000:]
    assert "Traceback" not in log_text
    return json.loads(out.read_text())


def loadable(prompt_tokens: int) -> int:
    """Full blocks, never the last prompt token."""
    return (prompt_tokens - 1) // BLOCK * BLOCK


def assert_same_answers(got: list[dict], want: list[dict]) -> None:
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g["token_ids"] == w["token_ids"], i
        assert g["text"] == w["text"], i
        assert g["logprobs"] == pytest.approx(w["logprobs"], abs=1e-5), i


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    # std 0.1: attention far from uniform, so a wrong KV block changes answers.
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"),
                            **{**TEST_TINY, "init_std": 0.1})


def test_offline_llm_stores_valkey_restarts_from_its_files_async_engine_loads(
        model, tmp_path) -> None:
    rng = random.Random(17)
    prompts = [[rng.randrange(10, 2000) for _ in range(n)] for n in (300, 337, 374, 411)]
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    data = tmp_path / "valkey-data"
    server = EmbeddedValkey(data_dir=data, config=persistence_config("rdb"))
    with server:
        [cold] = run_generate(model, server.url, tmp_path, "offline-cold",
                              "--prompts", str(tmp_path / "prompts.json"))
        assert [a["cached"] for a in cold] == [0, 0, 0, 0]
        with open_client(server.url) as c:
            stored, _ = count_keys(c, KV_PREFIX.encode())
        assert stored == sum(loadable(len(p)) // BLOCK for p in prompts)

        server.stop()                                    # SIGTERM: the snapshot is written
        assert (data / "dump.rdb").is_file()
        server.start()                                   # from its files
        with open_client(server.url) as c:
            assert count_keys(c, KV_PREFIX.encode())[0] == stored

        [warm] = run_generate(model, server.url, tmp_path, "async-after-restart",
                              "--engine", "async", "--prompts", str(tmp_path / "prompts.json"))
    assert [a["cached"] for a in warm] == [loadable(len(p)) for p in prompts]
    assert_same_answers(warm, cold)


def test_shared_lru_valkey_smaller_than_the_kv_answers_stay_right(model, tmp_path,
                                                                  make_server) -> None:
    # ~1.2 MB of the server's own + ~60 of the 78 blocks (66.7 kB each in memory):
    # LRU must evict blocks (which ones is its choice: its clock ticks once a
    # second, and the blocks of a round are written within one).
    config = {**ALLKEYS_LRU, "maxmemory": "5mb"}
    s = make_server(config=config)
    r = admin(s)
    other_consumers(r)
    theirs = snapshot(r, KV_PREFIX)
    rng = random.Random(29)
    prompts = [[rng.randrange(10, 2000) for _ in range(n)] for n in (161, 193, 225, 257) * 3]
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    blocks = sum(loadable(len(p)) // BLOCK for p in prompts)
    assert blocks == 78                       # more than fits

    first, second = run_generate(model, s.url, tmp_path, "shared-lru", "--rounds", "2",
                                 "--no-prefix-caching", "--max-tokens", "4",
                                 "--prompts", str(tmp_path / "prompts.json"))
    assert [a["cached"] for a in first] == [0] * len(prompts)
    assert_same_answers(second, first)
    hit = sum(a["cached"] for a in second)
    evicted = int(r.info("stats")["evicted_keys"])
    gone = sum(1 for k in theirs if not r.exists(k))
    print(f"\nshared allkeys-lru Valkey (maxmemory {config['maxmemory']}): "
          f"{blocks} blocks asked twice; round 2 loaded {hit} of "
          f"{blocks * BLOCK} loadable tokens ({100 * hit / (blocks * BLOCK):.0f}% hit rate); "
          f"{evicted} keys evicted, {gone} of them other consumers' ({len(theirs)} there)")
    assert 0 < hit < blocks * BLOCK and evicted > gone
