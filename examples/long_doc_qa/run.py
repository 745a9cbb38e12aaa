#!/usr/bin/env python3
"""Long-document QA across a vLLM restart: does the KV cache survive?

For each configuration (``none``: no KV connector; ``valkey``: the
ValkeyConnector on an embedded Valkey; ``example``: vLLM's in-tree
ExampleConnector on a local folder) this script

1. starts a vLLM OpenAI server (CPU build, float32, block size 32; vLLM's own
   prefix cache OFF unless ``--prefix-caching``),
2. runs the warm-up round: N distinct documents of about L tokens, each followed
   by a short question, as streamed ``/v1/completions`` requests (greedy,
   ``logprobs=1``),
3. **restarts the vLLM server** (new processes, empty GPU/CPU KV cache),
4. runs the query round: the same N prompts again (``--query-rounds K``: K
   query rounds, each after its own restart, taken in turns across the
   configurations so that machine noise spreads over all of them),

measuring time to first token (TTFT, by streaming) and the wall time of each
round. ``--max-inflight-requests N`` keeps N requests in flight;
``--hit-miss-ratio H:M`` mixes M fresh, never-seen documents after every H
repeated ones into each query round (as LMCache's benchmark does). It then
prints a table in the style of LMCache's ``benchmarks/long_doc_qa``: TTFT per
round (repeated and fresh documents apart), the query round time against
``none``'s and ``example``'s, vLLM's ``external_prefix_cache_hits_total`` after
the query round and whether the query round's generated tokens and logprobs
equal ``none``'s. ``--hook-timings`` adds the wall time of each connector hook
(``lmcache_valkey.vllm.hook_timing``).

    .venv/bin/python examples/long_doc_qa/run.py                 # 8 docs x 1200 tokens
    .venv/bin/python examples/long_doc_qa/run.py --num-docs 4    # faster
    .venv/bin/python examples/long_doc_qa/run.py --configs none,valkey --num-docs 4 --plot ttft.png
    .venv/bin/python examples/long_doc_qa/run.py --max-inflight-requests 4 --hit-miss-ratio 2:1

The model is a local 89M-parameter Llama with random weights
(``lmcache_valkey.testkit.tiny_llama``), built once into ``--model-dir``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - optional
    tqdm = None

try:
    from rich.console import Console
    from rich.table import Table
except ImportError:  # pragma: no cover - optional
    Console = Table = None

from lmcache_valkey.server.embedded import free_port
from lmcache_valkey.testkit.vllm_http import post_completions
from lmcache_valkey.vllm.hook_timing import (
    DEFAULT_DUMP_INTERVAL_S,
    FIELDS,
    load_dumps,
    summarize_ms,
)
from lmcache_valkey.vllm.hook_timing import DIR_ENV as HOOK_TIMINGS_ENV

DEFAULT_MODEL_DIR = Path.home() / ".cache" / "lmcache_valkey" / "llama-89m"
QUESTION = "\n\nQuestion: In one sentence, what is this document about?\nAnswer:"
SERVER_WARMUP_PROMPT = "Hello, this is a short warm-up request."
ALL_CONFIGS = ("none", "valkey", "valkey-unix", "example")
TEXT_COLUMNS = ("config", "round", "role", "hook")


# ------------------------------------------------------------------ processes

_children: list[subprocess.Popen[bytes]] = []
_children_lock = threading.Lock()


def _kill_group(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM `proc` (started with its own session), then SIGKILL what is left of its group.

    Only the API server gets SIGTERM, so that it stops its engine itself (as
    tests/vllm_server.py does); whatever is still running afterwards is killed.
    """
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    # vLLM's engine core may outlive the API server for a moment; reap the rest of the group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _cleanup_children() -> None:
    with _children_lock:
        procs = list(_children)
        _children.clear()
    for p in procs:
        _kill_group(p, timeout=10)


def _on_signal(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def redact(text: str) -> str:
    """Hide passwords in URLs (valkey://user:pass@host) and password fields."""
    text = re.sub(r"(://[^:/@\s\"']*:)[^@\s\"']+@", r"\1***@", text)
    return re.sub(r'("password"\s*:\s*")[^"]*(")', r"\1***\2", text)


# vLLM prefixes its processes' lines with "(EngineCore_DP0 pid=123) ".
_PROCESS_PREFIX = re.compile(r"^\([\w-]+ pid=\d+\) ")


def failure_excerpt(log: str, tail_lines: int = 15) -> str:
    """Every traceback in a server log, whole, with the line before it, then the log's end.

    A plain tail is not enough: when a plugin fails to load (e.g. an
    uncompiled source tree shadowing the installed package), vLLM logs that
    traceback first and goes on until a later, unrelated-looking error
    ("Unsupported connector type") ends it, thousands of characters on.
    """
    lines = log.splitlines()
    keep: set[int] = set(range(max(0, len(lines) - tail_lines), len(lines)))
    i = 0
    while i < len(lines):
        if "Traceback (most recent call last)" not in lines[i]:
            i += 1
            continue
        keep.update((i - 1, i) if i else (i,))
        i += 1
        # The frames are indented; the exception is the first line that is not,
        # and its message may go on, indented, below it (pydantic's does).
        while i < len(lines) and _PROCESS_PREFIX.sub("", lines[i])[:1].isspace():
            keep.add(i)
            i += 1
        while i < len(lines):
            keep.add(i)
            i += 1
            if i < len(lines) and not _PROCESS_PREFIX.sub("", lines[i])[:1].isspace():
                break
    out, last = [], -1
    for n in sorted(keep):
        if n != last + 1:
            out.append("    [...]")
        out.append(lines[n])
        last = n
    return "\n".join(out)


class VllmServer:
    """One ``python -m vllm.entrypoints.openai.api_server`` in its own process group."""

    def __init__(self, args: argparse.Namespace, model_dir: Path, port: int,
                 kv_transfer: dict[str, Any] | None, log_dir: Path, name: str) -> None:
        self.model = str(model_dir)
        self.port = port
        self.name = name
        self.log_dir = log_dir
        self.start_timeout = args.start_timeout
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
               "--model", self.model, "--port", str(port), "--dtype", "float32",
               "--block-size", "32", "--max-model-len", str(args.max_model_len),
               "--enforce-eager"]
        if not args.prefix_caching:
            cmd.append("--no-enable-prefix-caching")
        if getattr(args, "max_num_batched_tokens", None):
            cmd += ["--max-num-batched-tokens", str(args.max_num_batched_tokens)]
        if kv_transfer is not None:
            cmd += ["--kv-transfer-config", json.dumps(kv_transfer, separators=(",", ":"))]
        cmd += shlex.split(args.vllm_args)
        self.cmd = cmd
        self.env_extra = {"VLLM_CPU_KVCACHE_SPACE": str(args.kv_cache_space)}
        if args.reserved_cpus >= 0:
            # vLLM CPU reserves 1 core for its scheduler, plus 1 more when any KV
            # connector is configured (meant for NIXL); on a small machine that gives the
            # connector configurations a different number of compute threads than `none`
            # (2 cores: 1 thread without a connector, 2 with one). Same for everyone.
            self.env_extra["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(args.reserved_cpus)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self.starts = 0

    def command_line(self) -> str:
        env = " ".join(f"{k}={v}" for k, v in self.env_extra.items())
        return redact(env + " " + shlex.join(self.cmd))

    def start(self, phase: str, env: dict[str, str] | None = None) -> float:
        self.starts += 1
        self.log_path = self.log_dir / f"vllm-{self.name}-{phase}.log"
        with open(self.log_path, "wb") as log:  # the child keeps its own copy of the fd
            t0 = time.monotonic()
            # cwd outside any checkout: `python -m` puts the cwd first on sys.path, and a
            # source tree without its compiled _native (one `make install` did not
            # complete) would shadow the installed package.
            proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, **self.env_extra, **(env or {})},
                                    start_new_session=True, cwd=self.log_dir)
        with _children_lock:
            _children.append(proc)
        self.proc = proc
        deadline = t0 + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM ({self.name}) exited with {proc.returncode}; "
                                   f"log {self.log_path}:\n{self.failure_report()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return time.monotonic() - t0
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"vLLM ({self.name}) not up after {self.start_timeout} s; "
                           f"log {self.log_path}:\n{self.failure_report()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        _kill_group(self.proc)
        with _children_lock:
            if self.proc in _children:
                _children.remove(self.proc)
        self.proc = None

    def log_tail(self, n: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-n:]

    def failure_report(self) -> str:
        """What to print when the server died: its tracebacks and the end of its log."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return failure_excerpt(self.log_path.read_text(errors="replace"))

    def metrics(self) -> dict[str, float]:
        """Prometheus counters/gauges summed over their label sets."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            with contextlib.suppress(ValueError):
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return out


# ------------------------------------------------------------------ requests


@dataclass
class Result:
    doc: int
    ttft: float
    latency: float
    # False: a fresh document (never sent before) mixed into a query round by
    # --hit-miss-ratio; True: a warm-up document sent again.
    repeated: bool = True
    text: str = ""
    tokens: list[str] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    # time.monotonic() of every streamed chunk (for inter-token gaps).
    arrivals: list[float] = field(default_factory=list)

    def max_gap(self, start: float = float("-inf"), end: float = float("inf")) -> float:
        """Longest wait between two streamed chunks, counting gaps that overlap (start, end)."""
        gaps = [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)
                if b >= start and a <= end]
        return max(gaps, default=0.0)


def stream_completion(port: int, model: str, prompt: str, max_tokens: int, doc: int,
                      timeout: float, stop: threading.Event | None = None,
                      into: Result | None = None) -> Result:
    """One streamed greedy completion.

    `stop` set: hang up after the next chunk (vLLM aborts the request). `into`:
    fill this Result, which another thread may watch while it streams.
    """
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "logprobs": 1, "stream": True, "ignore_eos": True}
    t0 = time.perf_counter()
    ttft: float | None = None
    res = into if into is not None else Result(doc=doc, ttft=0.0, latency=0.0)
    with post_completions(port, body, timeout) as r:
        for raw in r:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            chunk = json.loads(data)
            for choice in chunk.get("choices", []):
                text = choice.get("text") or ""
                res.arrivals.append(time.monotonic())  # a token, even if no text yet
                if text and ttft is None:
                    ttft = time.perf_counter() - t0
                res.text += text
                lp = choice.get("logprobs") or {}
                res.tokens += lp.get("tokens") or []
                res.logprobs += lp.get("token_logprobs") or []
            if stop is not None and stop.is_set():
                break
    res.latency = time.perf_counter() - t0
    res.ttft = ttft if ttft is not None else res.latency
    return res


def run_round(server: VllmServer, prompts: list[str], plan: list[tuple[int, bool]],
              args: argparse.Namespace, label: str) -> tuple[list[Result], float]:
    """Send `plan`'s (document, repeated) requests, --max-inflight-requests at a time.

    A pool of that many threads, each sending its next request as soon as its
    previous one finished: at most (and, until the end, exactly) that many in flight.
    """
    bar = tqdm(total=len(plan), desc=label, leave=False, unit="req") if tqdm else None
    t0 = time.perf_counter()

    def one(item: tuple[int, bool]) -> Result:
        doc, repeated = item
        r = stream_completion(server.port, server.model, prompts[doc], args.max_tokens, doc,
                              args.request_timeout)
        r.repeated = repeated
        if bar is not None:
            bar.update(1)
        return r

    try:
        if args.max_inflight_requests <= 1:
            results = [one(item) for item in plan]
        else:
            with ThreadPoolExecutor(args.max_inflight_requests) as pool:
                results = list(pool.map(one, plan))
    finally:
        if bar is not None:
            bar.close()
    return results, time.perf_counter() - t0


# ------------------------------------------------------------------ configs


def kv_transfer_for(name: str, valkey_url: str | None, example_dir: Path,
                    connector_options: dict | None = None) -> dict | None:
    if name == "none":
        return None
    if name.startswith("valkey"):
        # One key prefix per configuration: they share the server, and one
        # configuration's warm-up must not find what another one stored.
        return {"kv_connector": "ValkeyConnector", "kv_role": "kv_both",
                "kv_connector_extra_config": {"url": valkey_url,
                                              "key_prefix": f"vllm:kv:{name}:",
                                              **(connector_options or {})}}
    if name == "example":
        return {"kv_connector": "ExampleConnector", "kv_role": "kv_both",
                "kv_connector_extra_config": {"shared_storage_path": str(example_dir)}}
    raise ValueError(name)


def ensure_model(model_dir: Path) -> Path:
    if (model_dir / "config.json").exists() and (model_dir / "model.safetensors").exists():
        print(f"model: reusing {model_dir}")
        return model_dir
    from lmcache_valkey.testkit.tiny_llama import BENCH_89M, build_tiny_llama

    print(f"model: building the 89M Llama (random weights) into {model_dir} ...", flush=True)
    t0 = time.monotonic()
    build_tiny_llama(model_dir, **BENCH_89M)
    print(f"model: built in {time.monotonic() - t0:.0f} s")
    return model_dir


def parse_hit_miss(text: str) -> tuple[int, int]:
    """``"H:M"`` -> (H, M), H >= 1, M >= 0."""
    try:
        hit, miss = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H:M (e.g. 2:1), got {text!r}") from None
    if hit < 1 or miss < 0:
        raise argparse.ArgumentTypeError(f"need H >= 1 and M >= 0, got {text!r}")
    return hit, miss


def fresh_docs_per_round(num_docs: int, ratio: tuple[int, int] | None) -> int:
    if ratio is None:
        return 0
    hit, miss = ratio
    return -(-num_docs // hit) * miss  # one group of M per (possibly short) group of H


def query_plan(num_docs: int, ratio: tuple[int, int] | None,
               round_index: int) -> list[tuple[int, bool]]:
    """The query round's (document, repeated) requests, in sending order.

    Without a ratio: the warm-up documents 0..N-1 again. With H:M: H warm-up
    documents, then M fresh ones, then the next H, ... until every warm-up document
    was sent once. Fresh documents follow the warm-up ones (N, N+1, ...), each
    query round its own: a fresh document of round 1 may be cached by round 2.
    Round r of every configuration sends the same documents, so outputs can be
    compared with ``none``'s.
    """
    if ratio is None:
        return [(doc, True) for doc in range(num_docs)]
    hit, miss = ratio
    fresh = num_docs + round_index * fresh_docs_per_round(num_docs, ratio)
    plan: list[tuple[int, bool]] = []
    for group, start in enumerate(range(0, num_docs, hit)):
        plan += [(doc, True) for doc in range(start, min(start + hit, num_docs))]
        plan += [(fresh + group * miss + j, False) for j in range(miss)]
    return plan


def compare(reference: list[Result], results: list[Result]) -> dict[str, Any]:
    """Each result against the reference answer for the same document.

    ``{"repeated": bool|None, "fresh": bool|None, "max_logprob_diff": float}``:
    same generated tokens for every repeated (resp. fresh) document; None when
    there were none.
    """
    ref = {r.doc: r for r in reference}
    same: dict[bool, bool | None] = {True: None, False: None}
    max_diff = 0.0
    for y in results:
        x = ref.get(y.doc)
        ok = x is not None and x.tokens == y.tokens and x.text == y.text
        same[y.repeated] = ok and same[y.repeated] is not False
        if x is not None:
            for p, q in zip(x.logprobs, y.logprobs, strict=False):
                if p is not None and q is not None:
                    max_diff = max(max_diff, abs(p - q))
    return {"repeated": same[True], "fresh": same[False], "max_logprob_diff": max_diff}


def summarize(results: list[Result]) -> dict[str, float] | None:
    ttfts = [r.ttft for r in results]
    if not ttfts:
        return None
    return {"mean": statistics.fmean(ttfts), "median": statistics.median(ttfts),
            "min": min(ttfts), "max": max(ttfts), "n": len(ttfts)}


# ------------------------------------------------------------------ output


def fmt_identical(cfg: dict[str, Any], which: str, tol: float) -> str:
    if cfg["name"] == "none":
        return "(reference)"
    same = cfg.get("identical", {}).get(which)
    if same is None:
        return "n/a"
    if not same:
        return "NO (tokens differ)"
    d = cfg["max_logprob_diff"]
    if d == 0.0:
        return "yes (bit-exact logprobs)"
    return f"yes (max Δlogprob {d:.1e})" if d <= tol else f"tokens yes, Δlogprob {d:.1e}"


def fmt_ttft(stats: dict[str, float] | None) -> str:
    return "-" if stats is None else f"{stats['mean']:.3f} / {stats['median']:.3f}"


def fmt_ratio(cfg: dict[str, Any], base: dict[str, Any] | None) -> str:
    if base is None or base is cfg:
        return "-"
    return f"{cfg['query']['round_s'] / base['query']['round_s']:.2f}x"


def build_rows(configs: list[dict[str, Any]], tol: float) -> tuple[list[str], list[list[str]]]:
    header = ["config", "warm-up TTFT mean / median (s)", "query TTFT mean / median (s)",
              "repeated docs TTFT (s)", "fresh docs TTFT (s)", "warm-up round (s)",
              "query round (s)", "query round vs none", "query round vs example", "ext hits",
              "repeated docs identical to none", "fresh docs identical to none"]
    base = next((c for c in configs if c["name"] == "none"), None)
    example = next((c for c in configs if c["name"] == "example"), None)
    rows = []
    for c in configs:
        q = c["query"]
        hits = c.get("ext_hits")
        rows.append([c["name"], fmt_ttft(c["warmup"]["ttft"]), fmt_ttft(q["ttft"]),
                     fmt_ttft(q["ttft_repeated"]), fmt_ttft(q["ttft_fresh"]),
                     f"{c['warmup']['round_s']:.2f}", f"{q['round_s']:.2f}",
                     fmt_ratio(c, base), fmt_ratio(c, example),
                     "-" if hits is None else f"{hits:.0f}",
                     fmt_identical(c, "repeated", tol), fmt_identical(c, "fresh", tol)])
    return without_empty_columns(header, rows)


def without_empty_columns(header: list[str], rows: list[list[str]]
                          ) -> tuple[list[str], list[list[str]]]:
    """Drop the columns no row has a figure in (no fresh documents, no ``example``...)."""
    keep = [i for i in range(len(header))
            if any(r[i] not in ("-", "n/a", "(reference)") for r in rows)]
    return [header[i] for i in keep], [[r[i] for i in keep] for r in rows]


def print_table(configs: list[dict[str, Any]], title: str, tol: float) -> None:
    print_rows(*build_rows(configs, tol), title)


def print_rows(header: list[str], rows: list[list[str]], title: str) -> None:
    if Console is not None:
        table = Table(title=title)
        for h in header:
            table.add_column(h, justify="left" if h in TEXT_COLUMNS else "right")
        for r in rows:
            table.add_row(*r)
        Console(width=240).print(table)
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(title)
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def markdown_table(configs: list[dict[str, Any]], tol: float) -> str:
    return markdown_rows(*build_rows(configs, tol))


def markdown_rows(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def plot_ttft(configs: list[dict[str, Any]], title: str, path: Path) -> None:
    """Each request's TTFT, warm-up round beside query round(s), one panel per configuration."""
    from lmcache_valkey.tools.bench import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, len(configs), figsize=(4.5 * len(configs), 4), sharey=True,
                             squeeze=False)
    for ax, cfg in zip(axes[0], configs, strict=True):
        rounds = [("warm-up", cfg["warmup"]["requests"])]
        rounds += [(f"query {i + 1}" if len(cfg["query_rounds"]) > 1 else "query (after restart)",
                    r["requests"]) for i, r in enumerate(cfg["query_rounds"])]
        for x, (_label, requests) in enumerate(rounds):
            ttfts = [r["ttft"] for r in requests]
            ax.bar(x, statistics.fmean(ttfts), color="tab:gray" if x == 0 else "tab:red",
                   alpha=0.6)
            ax.plot([x] * len(ttfts), ttfts, "k.", markersize=4)
            # The mean's label above the slowest request's dot, so neither hides the other.
            ax.annotate(f"mean {statistics.fmean(ttfts):.2f} s", (x, max(ttfts)),
                        xytext=(0, 4), textcoords="offset points", ha="center", va="bottom",
                        fontsize=8)
        ax.set_xticks(range(len(rounds)), [label for label, _ in rounds])
        ax.set_title(cfg["name"])
        ax.grid(axis="y", alpha=0.3)
    highest = max(r["ttft"] for cfg in configs for rnd in [cfg["warmup"], *cfg["query_rounds"]]
                  for r in rnd["requests"])
    axes[0][0].set_ylim(0, 1.12 * highest)  # room for the labels above the dots
    axes[0][0].set_ylabel("TTFT (s): mean (bar), each request (dot)")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def flush_hook_timings(server: VllmServer, timeout: float) -> None:
    """Make the connectors write all their hook timings before the server is stopped.

    vLLM 0.32 (CPU) does not call the connectors' shutdown() when its API server
    gets SIGTERM, and its engine processes end without running atexit, so what
    a connector recorded after its last periodic dump would be lost. It dumps
    from its hooks at most every DEFAULT_DUMP_INTERVAL_S: wait that long, then
    one tiny request (< 1 block: nothing stored or loaded) runs the hooks again.
    """
    time.sleep(DEFAULT_DUMP_INTERVAL_S + 0.5)
    stream_completion(server.port, server.model, SERVER_WARMUP_PROMPT, 2, -1, timeout)


def hook_timing_rows(hook_dirs: dict[tuple[str, str], list[Path]]) -> list[dict[str, Any]]:
    """Per configuration, round kind, role and hook: the pooled durations' summary."""
    rows = []
    for (name, phase), dirs in hook_dirs.items():
        pooled: dict[str, dict[str, dict[str, list[float]]]] = {}
        for d in dirs:
            if not d.is_dir():
                continue
            for timing in FIELDS:
                for role, per_hook in load_dumps(d, field=timing).items():
                    for hook, values in per_hook.items():
                        (pooled.setdefault(timing, {}).setdefault(role, {})
                         .setdefault(hook, []).extend(values))
        rows.extend(hook_summary_rows(name, phase, pooled))
    return rows


def hook_summary_rows(name: str, phase: str, pooled: dict[str, dict[str, dict[str, list[float]]]]
                      ) -> list[dict[str, Any]]:
    """One row per role and hook: wall-time summary, plus the CPU time's p99 / max."""
    rows = []
    walls, cpus = pooled.get("durations_ms", {}), pooled.get("cpu_ms", {})
    for role in sorted(walls):
        for hook in sorted(walls[role]):
            if not walls[role][hook]:
                continue
            cpu = summarize_ms(cpus.get(role, {}).get(hook, []))
            rows.append({"config": name, "round": phase, "role": role, "hook": hook,
                         **summarize_ms(walls[role][hook]),
                         "cpu_p99_ms": cpu["p99_ms"], "cpu_max_ms": cpu["max_ms"]})
    return rows


def print_hook_timings(rows: list[dict[str, Any]]) -> None:
    print()
    if not rows:
        print("hook timings: no files were written (this connector build does not record "
              f"them, or no configuration uses it): nothing under {HOOK_TIMINGS_ENV}")
        return
    header = ["config", "round", "role", "hook", "calls", "p50 (ms)", "p99 (ms)", "max (ms)",
              "CPU p99 (ms)", "CPU max (ms)"]
    table = [[r["config"], r["round"], r["role"], r["hook"], str(r["n"]),
              f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['max_ms']:.3f}",
              f"{r.get('cpu_p99_ms', 0.0):.3f}", f"{r.get('cpu_max_ms', 0.0):.3f}"] for r in rows]
    print_rows(header, table, "wall time of each connector hook call (vLLM blocked for it); "
               "CPU: what the hook's thread ran of it")
    print("\nmarkdown:\n" + markdown_rows(header, table))


# ------------------------------------------------------------------ main


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def add_server_args(p: argparse.ArgumentParser) -> None:
    """The vLLM server options (VllmServer reads them), shared with stall.py."""
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR,
                   help="where the 89M model is built (reused if present)")
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--kv-cache-space", type=int, default=1,
                   help="VLLM_CPU_KVCACHE_SPACE (GiB)")
    p.add_argument("--reserved-cpus", type=int, default=1,
                   help="VLLM_CPU_NUM_OF_RESERVED_CPU for every server, so that all "
                        "configurations get the same OpenMP compute threads (vLLM would "
                        "otherwise reserve one more core when a KV connector is set); "
                        "-1: leave vLLM's per-configuration default")
    p.add_argument("--vllm-args", default="", help="extra arguments for every vLLM server")
    p.add_argument("--connector-options", default="{}", type=json_object,
                   help="extra ValkeyConnector kv_connector_extra_config options, as JSON "
                        '(e.g. \'{"op_timeout_s": 5}\')')
    p.add_argument("--log-dir", type=Path, default=None,
                   help="vLLM server logs (default: a new temporary folder, kept)")
    p.add_argument("--start-timeout", type=float, default=300.0, help="seconds per start")
    p.add_argument("--request-timeout", type=float, default=600.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Long-document QA TTFT across a vLLM server restart: no connector vs "
                    "the ValkeyConnector vs vLLM's ExampleConnector (CPU, float32, "
                    "89M Llama with random weights).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--configs", default="none,valkey,example",
                   help=f"comma-separated subset of {','.join(ALL_CONFIGS)}")
    p.add_argument("--num-docs", type=int, default=8, help="documents per round")
    p.add_argument("--doc-tokens", type=int, default=1200,
                   help="tokens per document (BOS included; the question adds ~15)")
    p.add_argument("--max-tokens", type=int, default=8, help="tokens generated per request")
    p.add_argument("--max-inflight-requests", "--concurrency", type=int, default=1,
                   dest="max_inflight_requests",
                   help="requests in flight at once, the next one sent as soon as one "
                        "finishes (1: sequential)")
    p.add_argument("--hit-miss-ratio", type=parse_hit_miss, default=None, metavar="H:M",
                   help="query rounds interleave H warm-up documents (cache hits) with M "
                        "fresh, never-seen documents (misses): N warm-up documents give "
                        "ceil(N/H)*M fresh ones per query round; without it every "
                        "query request repeats a warm-up document")
    p.add_argument("--hook-timings", action="store_true",
                   help="set LMCACHE_VALKEY_HOOK_TIMINGS_DIR for every vLLM server (a folder "
                        "per configuration and round under the log folder) and print the "
                        "p50 / p99 / max wall time of each connector hook from the files "
                        "the connector writes")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic documents")
    p.add_argument("--prefix-caching", action=argparse.BooleanOptionalAction, default=False,
                   help="vLLM's own (in-memory) prefix caching; off by default so that only "
                        "a KV connector can make the query round faster")
    p.add_argument("--server-warmup", action=argparse.BooleanOptionalAction, default=True,
                   help="after every server start, send one short (< 1 block) request "
                        "so one-off first-request costs are not counted in the first "
                        "document's TTFT")
    p.add_argument("--max-num-batched-tokens", type=int, default=None,
                   help="vLLM's token budget per step, for every configuration (default: "
                        "max-inflight-requests x max-model-len, so that no prompt is split "
                        "across steps: vLLM's ExampleConnector stores a chunked prompt's "
                        "first chunk only and then fails to load it)")
    p.add_argument("--query-rounds", type=int, default=1,
                   help="query rounds per configuration, each after its own restart, taken "
                        "in turns across configurations; TTFT figures cover all of them")
    p.add_argument("--valkey-url", default=None,
                   help="use this Valkey instead of starting an embedded one (its keys are "
                        "not flushed: use a fresh server or key_prefix)")
    add_server_args(p)
    p.add_argument("--logprob-tolerance", type=float, default=1e-4,
                   help="max |Δlogprob| still reported as identical")
    p.add_argument("--json", type=Path, default=None, help="write raw figures here")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                   help="also plot each request's TTFT per configuration and round "
                        "(needs matplotlib)")
    args = p.parse_args(argv)
    if args.max_num_batched_tokens is None:
        args.max_num_batched_tokens = args.max_inflight_requests * args.max_model_len
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in args.configs if c not in ALL_CONFIGS]
    if bad or not args.configs:
        p.error(f"--configs: unknown {bad}; choose from {ALL_CONFIGS}")
    if (args.num_docs < 1 or args.doc_tokens < 8 or args.max_tokens < 1
            or args.max_inflight_requests < 1 or args.query_rounds < 1):
        p.error("need --num-docs >= 1, --doc-tokens >= 8, --max-tokens >= 1, "
                "--max-inflight-requests >= 1, --query-rounds >= 1")
    return args


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        vllm_v = version("vllm-cpu")
    except Exception:
        try:
            import importlib.metadata as md

            vllm_v = md.version("vllm")
        except Exception:
            vllm_v = "?"
    return (f"{os.cpu_count()} vCPU ({cpu}), no GPU, vllm-cpu {vllm_v}, "
            f"Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    atexit.register(_cleanup_children)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="long-doc-qa-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    example_dir = Path(tempfile.mkdtemp(prefix="long-doc-qa-example-kv-"))

    print(f"machine: {machine_description()}")
    model_dir = ensure_model(args.model_dir.expanduser())

    from lmcache_valkey.testkit.tiny_llama import load_tokenizer, synthetic_documents

    n_fresh = fresh_docs_per_round(args.num_docs, args.hit_miss_ratio)
    # Warm-up documents first, then each query round's fresh ones (all distinct).
    docs = synthetic_documents(args.num_docs + args.query_rounds * n_fresh, args.doc_tokens,
                               seed=args.seed, tokenizer=model_dir)
    prompts = [d + QUESTION for d in docs]
    tok = load_tokenizer(model_dir)
    prompt_tokens = [len(tok.encode(p).ids) for p in prompts]  # BOS included
    mix = ("" if args.hit_miss_ratio is None else
           f", query rounds {args.hit_miss_ratio[0]}:{args.hit_miss_ratio[1]} hit:miss "
           f"({args.num_docs} repeated + {n_fresh} fresh documents each)")
    print(f"workload: {args.num_docs} documents, {min(prompt_tokens)}-{max(prompt_tokens)} "
          f"prompt tokens each (~{statistics.fmean(prompt_tokens) / 32:.1f} blocks of 32)"
          f"{mix}, max_tokens={args.max_tokens}, "
          f"max in-flight requests={args.max_inflight_requests}, "
          f"vLLM prefix caching {'ON' if args.prefix_caching else 'OFF'}")
    print(f"logs: {log_dir}")

    valkey_ctx = None
    valkey_urls = {"valkey": args.valkey_url}
    if any(c.startswith("valkey") for c in args.configs) and args.valkey_url is None:
        from lmcache_valkey import EmbeddedValkey

        valkey_ctx = EmbeddedValkey(unix_socket=True)
        server = valkey_ctx.__enter__()
        # valkey-unix: the same server through its unix socket (same host only).
        valkey_urls = {"valkey": server.url, "valkey-unix": server.unix_url}
        print(f"valkey: embedded server at {redact(server.url)} and {server.unix_url}")
    elif "valkey-unix" in args.configs:
        sys.exit("--configs valkey-unix needs the embedded server (no --valkey-url)")

    port = free_port()
    servers = {name: VllmServer(args, model_dir, port,
                                kv_transfer_for(name, valkey_urls.get(name), example_dir / name,
                                                args.connector_options),
                                log_dir, name)
               for name in args.configs}
    print("vLLM commands (each started once per round, stopped after it):")
    for name, s in servers.items():
        print(f"  [{name}] {s.command_line()}")
    print(flush=True)

    out: dict[str, Any] = {
        "machine": machine_description(), "argv": sys.argv, "args": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "prompt_tokens": prompt_tokens, "question": QUESTION, "configs": []}
    cfgs: dict[str, dict[str, Any]] = {
        name: {"name": name, "command": server.command_line()} for name, server in servers.items()}
    queries: dict[str, list[list[Result]]] = {name: [] for name in servers}
    # Every configuration's warm-up first, then the query rounds in turns
    # (A, B, C, A, B, C ...), so that a slow minute of a shared machine does
    # not land on one configuration only.
    schedule = [("warmup", name, -1) for name in servers]
    schedule += [("query", name, r) for r in range(args.query_rounds) for name in servers]
    hook_dirs: dict[tuple[str, str], list[Path]] = {}
    failed: list[dict[str, Any]] = []
    try:
        for phase, name, round_index in schedule:
            server, cfg = servers[name], cfgs[name]
            if "failed" in cfg:
                continue
            env = {}
            if args.hook_timings:
                where = log_dir / "hook-timings" / f"{name}-{phase}{max(round_index, 0)}"
                hook_dirs.setdefault((name, phase), []).append(where)
                env[HOOK_TIMINGS_ENV] = str(where)
            up = server.start(phase, env)
            print(f"[{name}] vLLM up in {up:.0f} s ({phase} round)", flush=True)
            if args.server_warmup:
                stream_completion(server.port, server.model, SERVER_WARMUP_PROMPT, 2, -1,
                                  args.request_timeout)
            plan = ([(doc, True) for doc in range(args.num_docs)] if phase == "warmup" else
                    query_plan(args.num_docs, args.hit_miss_ratio, round_index))
            before = server.metrics()
            try:
                results, wall = run_round(server, prompts, plan, args, f"{name} {phase}")
            except (OSError, ValueError) as e:  # HTTP errors, resets, bad stream
                # One configuration failing (e.g. a connector crashing vLLM's worker)
                # must not cost the figures of the others.
                cfg["failed"] = f"{phase} round: {e!r} (log {server.log_path})"
                print(f"[{name}] FAILED in the {phase} round: {e!r}; vLLM log "
                      f"{server.log_path}:\n{server.failure_report()}", flush=True)
                server.stop()
                continue
            after = server.metrics()
            if args.hook_timings and name.startswith("valkey"):
                flush_hook_timings(server, args.request_timeout)
            server.stop()
            stats = summarize(results)
            print(f"[{name}] {phase}: TTFT mean {stats['mean']:.3f} s, median "
                  f"{stats['median']:.3f} s, round {wall:.2f} s", flush=True)
            delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in (
                "vllm:external_prefix_cache_hits_total",
                "vllm:external_prefix_cache_queries_total",
                "vllm:prefix_cache_hits_total", "vllm:prompt_tokens_total")}
            record = {"ttft": stats, "round_s": wall, "server_start_s": up,
                      "metrics_delta": delta, "log": str(server.log_path),
                      "requests": [asdict(r) for r in results]}
            if phase == "warmup":
                cfg["warmup"] = record
                continue
            queries[name].append(results)
            cfg.setdefault("query_rounds", []).append(record)
            # The counters start at 0 with every server: this round's hits.
            cfg.setdefault("ext_hits_per_round", []).append(
                after.get("vllm:external_prefix_cache_hits_total"))
        for name, cfg in cfgs.items():
            if "failed" in cfg:
                failed.append(cfg)
                continue
            rounds = cfg["query_rounds"]
            every = [r for rs in queries[name] for r in rs]
            cfg["query"] = {"ttft": summarize(every),
                            "ttft_repeated": summarize([r for r in every if r.repeated]),
                            "ttft_fresh": summarize([r for r in every if not r.repeated]),
                            "round_s": statistics.fmean(r["round_s"] for r in rounds),
                            "round_s_each": [r["round_s"] for r in rounds]}
            cfg["ext_hits"] = cfg["ext_hits_per_round"][-1]
            if name != "none" and "failed" not in cfgs.get("none", {"failed": True}):
                reference = [r for rs in queries["none"] for r in rs]
                check = compare(reference, every)
                cfg["identical"] = {"repeated": check["repeated"], "fresh": check["fresh"]}
                cfg["max_logprob_diff"] = check["max_logprob_diff"]
            out["configs"].append(cfg)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping servers", file=sys.stderr)
        return 130
    finally:
        for s in servers.values():
            s.stop()
        _cleanup_children()
        if valkey_ctx is not None:
            valkey_ctx.__exit__(None, None, None)

    ratio = ("" if args.hit_miss_ratio is None else
             f", query {args.hit_miss_ratio[0]}:{args.hit_miss_ratio[1]} hit:miss")
    title = (f"long_doc_qa: {args.num_docs} docs x ~{args.doc_tokens} tokens{ratio}, "
             f"{args.max_inflight_requests} in flight, max_tokens {args.max_tokens}, "
             f"vLLM restarted before each round, {args.query_rounds} query round(s) per "
             f"configuration")
    print()
    print_table(out["configs"], title, args.logprob_tolerance)
    print("\nmarkdown:\n" + markdown_table(out["configs"], args.logprob_tolerance))
    for cfg in failed:
        print(f"\n{cfg['name']}: FAILED in the {cfg['failed']}; not in the table")
    out["failed"] = failed
    if args.hook_timings:
        out["hook_timings"] = hook_timing_rows(hook_dirs)
        print_hook_timings(out["hook_timings"])
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1))
        print(f"\nraw figures: {args.json}")
    if args.plot is not None and out["configs"]:
        plot_ttft(out["configs"], title, args.plot)
        print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
