#!/usr/bin/env python3
"""Valkey frozen under a serving vLLM: does vLLM keep serving?

A Valkey failover, a fork for a snapshot or a network hiccup can leave the
server silent for seconds. A KV cache must then cost its users nothing but
the cache: new requests are computed cold, running ones keep streaming. This
script measures exactly that on a real vLLM OpenAI server (CPU build, the
89M Llama of ``run.py``, prefix caching off) with the ValkeyConnector on an
embedded Valkey:

1. **warm** a document W (its KV is stored in Valkey);
2. **healthy**: start a long streaming request S1; while it streams, send a
   cold document C1 (never seen) and measure its TTFT; then hang S1 up;
3. **frozen**: start a long streaming request S2; ``SIGSTOP`` the
   valkey-server process for ``--freeze-s`` seconds; one second in, send a
   cold document C2 and measure its TTFT, and S2's longest wait between two
   streamed tokens during the freeze; ``SIGCONT``;
4. **after**: send W again (repeatedly, up to ``--recovery-timeout-s``) until
   ``vllm:external_prefix_cache_hits_total`` grows: it is loaded from Valkey
   again.

It prints healthy cold TTFT, TTFT during the freeze, the longest streaming
pause (healthy and frozen), and whether and when W hit again. The targets of
issue 13: TTFT during the freeze <= healthy cold TTFT + 2 s, pause <= 1 s,
a hit after ``SIGCONT``. With ``--hook-timings`` it also prints the wall time
of each connector hook (p50 / p99 / max) in the healthy and frozen windows,
from the files the connector writes (``LMCACHE_VALKEY_HOOK_TIMINGS_DIR``).

    .venv/bin/python examples/long_doc_qa/stall.py                  # ~2 min on 2 vCPU
    .venv/bin/python examples/long_doc_qa/stall.py --hook-timings --freeze-s 20
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as ldq  # noqa: E402  (run.py of this folder: server, streaming, tables)

from lmcache_valkey.vllm.hook_timing import DIR_ENV, FIELDS, load_dumps  # noqa: E402

HITS = "vllm:external_prefix_cache_hits_total"
STREAM_PROMPT = "Tell a very long story about a lighthouse keeper and the sea."


class Stream:
    """A long streamed completion in a thread, hung up on ``stop()``."""

    def __init__(self, server: ldq.VllmServer, max_tokens: int, timeout: float) -> None:
        self._stop = threading.Event()
        self.result: ldq.Result | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(server, max_tokens, timeout),
                                        daemon=True)
        self._partial = ldq.Result(doc=-1, ttft=0.0, latency=0.0)

    def _run(self, server: ldq.VllmServer, max_tokens: int, timeout: float) -> None:
        try:
            self.result = ldq.stream_completion(server.port, server.model, STREAM_PROMPT,
                                                max_tokens, -1, timeout, stop=self._stop,
                                                into=self._partial)
        except BaseException as e:  # reported by the caller
            self.error = e

    def start(self, min_tokens: int = 5, timeout: float = 120.0) -> Stream:
        """Start, and return once `min_tokens` tokens have streamed."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while len(self._partial.arrivals) < min_tokens:  # appended by the streaming thread
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the streaming request did not stream: {self.error!r}")
            time.sleep(0.05)
        return self

    def stop(self) -> ldq.Result:
        self._stop.set()
        self._thread.join(60)
        return self._partial


def timed_request(server: ldq.VllmServer, prompt: str, max_tokens: int, timeout: float
                  ) -> tuple[threading.Thread, dict[str, Any]]:
    """Send one streamed request in a thread; its Result (or error) lands in the dict."""
    out: dict[str, Any] = {"sent": time.monotonic()}

    def go() -> None:
        try:
            out["result"] = ldq.stream_completion(server.port, server.model, prompt,
                                                  max_tokens, 0, timeout)
        except BaseException as e:
            out["error"] = e
        out["done"] = time.monotonic()

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, out


def fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Freeze the Valkey server (SIGSTOP) under a serving vLLM with the "
                    "ValkeyConnector: TTFT of a new request, longest pause of a streaming "
                    "one, and whether stored KV is loaded again after SIGCONT.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--freeze-s", type=float, default=20.0, help="how long Valkey is stopped")
    p.add_argument("--doc-tokens", type=int, default=1200,
                   help="tokens of the warm document and of each cold one")
    p.add_argument("--max-tokens", type=int, default=8,
                   help="tokens generated for the warm and cold documents")
    p.add_argument("--stream-max-tokens", type=int, default=3000,
                   help="max_tokens of the streaming requests (hung up before that)")
    p.add_argument("--settle-s", type=float, default=2.0,
                   help="seconds the streams keep running after each phase's cold request")
    p.add_argument("--recovery-timeout-s", type=float, default=60.0,
                   help="how long to keep re-sending the warm document after SIGCONT")
    p.add_argument("--max-num-batched-tokens", type=int, default=256,
                   help="vLLM's token budget per step: small, so that a cold prompt's "
                        "prefill is split over several steps and the streaming request gets "
                        "a token between them (one 1200-token prefill step takes ~2.6 s on a "
                        "2-vCPU machine, longer than the 1 s pause target); 0: vLLM's default")
    p.add_argument("--hook-timings", action="store_true",
                   help=f"set {DIR_ENV} for the vLLM server and print the p50 / p99 / max "
                        "wall time of each connector hook, healthy and frozen")
    p.add_argument("--seed", type=int, default=7, help="seed of the synthetic documents")
    ldq.add_server_args(p)
    p.add_argument("--json", type=Path, default=None, help="write raw figures here")
    args = p.parse_args(argv)
    args.prefix_caching = False  # only the connector may make W faster
    if args.freeze_s <= 1 or args.doc_tokens < 64 or args.stream_max_tokens < 16:
        p.error("need --freeze-s > 1, --doc-tokens >= 64, --stream-max-tokens >= 16")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, ldq._on_signal)
    atexit.register(ldq._cleanup_children)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="valkey-stall-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {ldq.machine_description()}")
    model_dir = ldq.ensure_model(args.model_dir.expanduser())

    from lmcache_valkey import EmbeddedValkey
    from lmcache_valkey.testkit.tiny_llama import synthetic_documents

    warm, cold_healthy, cold_frozen = (
        d + ldq.QUESTION for d in synthetic_documents(3, args.doc_tokens, seed=args.seed,
                                                      tokenizer=model_dir))
    timings_dir = log_dir / "hook-timings"
    figures: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    with EmbeddedValkey() as valkey:
        kv = ldq.kv_transfer_for("valkey", valkey.url, log_dir, args.connector_options)
        server = ldq.VllmServer(args, model_dir, ldq.free_port(), kv, log_dir, "valkey")
        print(f"valkey: embedded server {ldq.redact(valkey.url)}, pid {valkey.pid}")
        print(f"vLLM: {server.command_line()}\nlogs: {log_dir}", flush=True)
        frozen = False
        try:
            up = server.start("stall", {DIR_ENV: str(timings_dir)} if args.hook_timings else {})
            print(f"vLLM up in {up:.0f} s", flush=True)
            ldq.stream_completion(server.port, server.model, ldq.SERVER_WARMUP_PROMPT, 2, -1,
                                  args.request_timeout)
            w = ldq.stream_completion(server.port, server.model, warm, args.max_tokens, 0,
                                      args.request_timeout)
            figures["warm_doc_first_ttft_s"] = w.ttft
            print(f"warm: W computed and stored, TTFT {w.ttft:.2f} s", flush=True)

            # Healthy: a cold request while another one streams.
            s1 = Stream(server, args.stream_max_tokens, args.request_timeout).start()
            healthy_start = time.monotonic()
            c1 = ldq.stream_completion(server.port, server.model, cold_healthy,
                                       args.max_tokens, 1, args.request_timeout)
            time.sleep(args.settle_s)
            healthy_end = time.monotonic()
            figures["healthy_cold_ttft_s"] = c1.ttft
            figures["healthy_max_stream_gap_s"] = s1.stop().max_gap(healthy_start, healthy_end)
            print(f"healthy: cold TTFT {c1.ttft:.2f} s, longest streaming pause "
                  f"{figures['healthy_max_stream_gap_s']:.2f} s", flush=True)

            # Frozen: the same, with valkey-server stopped.
            s2 = Stream(server, args.stream_max_tokens, args.request_timeout).start()
            freeze_start = time.monotonic()
            os.kill(valkey.pid, signal.SIGSTOP)
            frozen = True
            print(f"frozen: valkey-server (pid {valkey.pid}) stopped for {args.freeze_s:.0f} s",
                  flush=True)
            time.sleep(1.0)
            c2_thread, c2 = timed_request(server, cold_frozen, args.max_tokens,
                                          args.request_timeout)
            time.sleep(max(0.0, freeze_start + args.freeze_s - time.monotonic()))
            os.kill(valkey.pid, signal.SIGCONT)
            frozen = False
            freeze_end = time.monotonic()
            c2_thread.join(args.request_timeout)
            time.sleep(args.settle_s)
            streamed = s2.stop()
            c2_result = c2.get("result")
            if c2_result is None:
                raise RuntimeError(f"the cold request sent during the freeze failed: "
                                   f"{c2.get('error')!r}")
            figures["frozen_cold_ttft_s"] = c2_result.ttft
            figures["frozen_cold_done_before_sigcont"] = c2["done"] < freeze_end
            figures["frozen_max_stream_gap_s"] = streamed.max_gap(freeze_start, freeze_end)
            figures["stream_tokens_during_freeze"] = sum(
                freeze_start <= t <= freeze_end for t in streamed.arrivals)
            print(f"frozen: cold TTFT {c2_result.ttft:.2f} s (done "
                  f"{'before' if figures['frozen_cold_done_before_sigcont'] else 'AFTER'} "
                  f"SIGCONT), longest streaming pause {figures['frozen_max_stream_gap_s']:.2f} s, "
                  f"{figures['stream_tokens_during_freeze']} tokens streamed during the freeze",
                  flush=True)

            # After: W is loaded from Valkey again.
            hits_before = server.metrics().get(HITS, 0.0)
            tries, hit_after = 0, None
            while time.monotonic() < freeze_end + args.recovery_timeout_s:
                tries += 1
                ldq.stream_completion(server.port, server.model, warm, args.max_tokens, 0,
                                      args.request_timeout)
                if server.metrics().get(HITS, 0.0) > hits_before:
                    hit_after = time.monotonic() - freeze_end
                    break
                time.sleep(0.5)
            figures["hit_after_sigcont_s"] = hit_after
            figures["hit_after_sigcont_tries"] = tries
            if hit_after is None:
                print(f"after: W did NOT hit within {args.recovery_timeout_s:.0f} s "
                      f"({tries} tries)", flush=True)
            else:
                print(f"after: W hit {hit_after:.1f} s after SIGCONT ({tries} tries)", flush=True)
            if args.hook_timings:
                ldq.flush_hook_timings(server, args.request_timeout)
        except KeyboardInterrupt:
            print("\ninterrupted; stopping the server", file=sys.stderr)
            return 130
        finally:
            if frozen:
                os.kill(valkey.pid, signal.SIGCONT)
            server.stop()
            ldq._cleanup_children()

    print_report(figures, args)
    if args.hook_timings:
        windows = {"healthy": (healthy_start, healthy_end), "frozen": (freeze_start, freeze_end)}
        figures["hook_timings"] = hook_rows(timings_dir, windows)
        ldq.print_hook_timings(figures["hook_timings"])
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1))
        print(f"\nraw figures: {args.json}")
    return 0


def hook_rows(timings_dir: Path, windows: dict[str, tuple[float, float]]) -> list[dict]:
    rows = []
    for label, window in windows.items():
        if not timings_dir.is_dir():
            break
        pooled = {field: load_dumps(timings_dir, window, field=field) for field in FIELDS}
        rows.extend(ldq.hook_summary_rows("valkey", label, pooled))
    return rows


def print_report(f: dict[str, Any], args: argparse.Namespace) -> None:
    healthy = f["healthy_cold_ttft_s"]
    ttft_ok = f["frozen_cold_ttft_s"] <= healthy + 2.0
    pause_ok = f["frozen_max_stream_gap_s"] <= 1.0
    hit_ok = f["hit_after_sigcont_s"] is not None
    header = ["figure", "value", "target", "met"]
    rows = [
        ["healthy cold TTFT (s)", fmt_s(healthy), "-", "-"],
        [f"TTFT during a {args.freeze_s:.0f} s freeze (s)", fmt_s(f["frozen_cold_ttft_s"]),
         f"<= {healthy + 2.0:.2f} (healthy + 2 s)", "yes" if ttft_ok else "NO"],
        ["longest streaming pause, healthy (s)", fmt_s(f["healthy_max_stream_gap_s"]), "-", "-"],
        ["longest streaming pause, frozen (s)", fmt_s(f["frozen_max_stream_gap_s"]), "<= 1.00",
         "yes" if pause_ok else "NO"],
        ["hit after SIGCONT", "no" if not hit_ok else
         f"yes, {f['hit_after_sigcont_s']:.1f} s after ({f['hit_after_sigcont_tries']} tries)",
         "yes", "yes" if hit_ok else "NO"],
    ]
    print()
    ldq.print_rows(header, rows, f"Valkey frozen (SIGSTOP) {args.freeze_s:.0f} s under a "
                                 f"serving vLLM, ~{args.doc_tokens}-token documents")
    print("\nmarkdown:\n" + ldq.markdown_rows(header, rows))


if __name__ == "__main__":
    sys.exit(main())
