"""vLLM inside Ray Serve with its KV cache in a shared Valkey.

    pip install 'ray[serve]' vllm lmcache-valkey     # in the Ray cluster's environment
    MODEL=meta-llama/Llama-3.1-8B-Instruct VALKEY_URL=valkey://valkey.internal:6379 \\
        serve run ray_serve_app:app
    curl -s localhost:8000/ -d '{"prompt": "...", "max_tokens": 64}'

Each replica builds one ``AsyncLLMEngine`` (vLLM's ``AsyncLLM``) from
``AsyncEngineArgs`` with the ``ValkeyConnector``; every replica stores full
prompt blocks under ``vllm:kv:`` (TTL 3600 s, renewed on each hit) and loads
what any replica stored before, also after a replica restarts. The connector
is registered in each vLLM process by this package's ``vllm.general_plugins``
entry point: installing ``lmcache-valkey`` where the replicas run is enough.
The Valkey password, if any, travels as ``VALKEY_PASSWORD`` in the runtime
environment, never in the URL or the config (vLLM logs its config).

``MODEL``, ``VALKEY_URL``, ``NUM_GPUS`` (1; 0 on a CPU-only vLLM) and
``ENGINE_ARGS`` (JSON, more ``AsyncEngineArgs`` fields, e.g.
``{"block_size": 32, "dtype": "float32"}`` on CPU) are read from the
environment of ``serve run``.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

from ray import serve
from starlette.requests import Request
from vllm import SamplingParams
from vllm.config import KVTransferConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.engine.async_llm_engine import AsyncLLMEngine


@serve.deployment(ray_actor_options={"num_gpus": float(os.environ.get("NUM_GPUS", "1"))})
class VLLMWithValkey:
    def __init__(self, model: str, valkey_url: str, engine_args: dict[str, Any]) -> None:
        kv = KVTransferConfig(
            kv_connector="ValkeyConnector",
            kv_role="kv_both",
            kv_connector_extra_config={"url": valkey_url, "key_prefix": "vllm:kv:",
                                       "ttl_s": 3600},
        )
        args = AsyncEngineArgs(model=model, kv_transfer_config=kv, **engine_args)
        self.engine = AsyncLLMEngine.from_engine_args(args)

    async def __call__(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        params = SamplingParams(temperature=body.get("temperature", 0.0),
                                max_tokens=body.get("max_tokens", 64))
        prompt = ({"prompt_token_ids": body["prompt_token_ids"]}
                  if "prompt_token_ids" in body else body["prompt"])
        final = None
        async for out in self.engine.generate(prompt, params, uuid.uuid4().hex):
            final = out
        assert final is not None
        return {"text": final.outputs[0].text,
                "token_ids": list(final.outputs[0].token_ids),
                # prompt tokens not computed: vLLM's prefix cache + loaded from Valkey
                "cached_tokens": final.num_cached_tokens}


app = VLLMWithValkey.bind(
    model=os.environ.get("MODEL", "meta-llama/Llama-3.1-8B-Instruct"),
    valkey_url=os.environ.get("VALKEY_URL", "valkey://127.0.0.1:6379"),
    engine_args=json.loads(os.environ.get("ENGINE_ARGS", "{}")),
)
