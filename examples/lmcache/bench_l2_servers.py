"""LMCache's own judge on every server: `lmcache bench l2`, our adapter
against LMCache's `resp` adapter (its C++ client), on Valkey 9, Valkey 8 and
Redis 7.

For each server (started as `lmcache-valkey bench --server` does), the two
adapters take turns, round after round (ours, resp, resp, ours, ...), each in
a fresh `lmcache bench l2` process exactly as a user starts it; the table
gives the median store and load GB/s over the rounds and ours/resp. Our
adapter runs with data verification on (`--no-skip-verify`); resp with it on
too, so both pay the same check outside the timed part.

    .venv/bin/python examples/lmcache/bench_l2_servers.py --servers valkey9,valkey8,redis7 \
        --data-size-kb 4096 --num-keys 32 --turns 5

Figures only: the machine's noise decides how many turns you need.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from lmcache_valkey.server.embedded import EmbeddedValkey, server_binary
from lmcache_valkey.testkit.lmcache_bench import LMCACHE_CLI, bench_l2_summary
from lmcache_valkey.tools.bench import example_parser


def specs(host: str, port: int, num_workers: int) -> dict[str, str]:
    return {
        "ours": json.dumps({
            "type": "plugin", "module_path": "lmcache_valkey.lmcache",
            "class_name": "ValkeyL2Adapter", "config_class_name": "ValkeyL2AdapterConfig",
            "adapter_params": {"url": f"valkey://{host}:{port}", "key_prefix": "l2-ours:",
                               "num_connections": num_workers}}),
        "resp": json.dumps({"type": "resp", "host": host, "port": port,
                            "num_workers": num_workers}),
    }


def throughput(stdout: str) -> dict[str, float]:
    """{"Store": MB/s, "Load": MB/s} from the bench's summary."""
    summary = bench_l2_summary(stdout)
    return {op: float(summary[op]["Throughput avg (MB/s)"]) for op in ("Store", "Load")
            if "Throughput avg (MB/s)" in summary.get(op, {})}


def run_once(spec: str, args: argparse.Namespace, cwd: str) -> dict[str, float]:
    cmd = [sys.executable, "-c", LMCACHE_CLI, "bench", "l2", "--l2-adapter", spec,
           "--num-keys", str(args.num_keys), "--data-size-kb", str(args.data_size_kb),
           "--rounds", str(args.rounds), "--warmup-rounds", "1", "--no-skip-verify"]
    env = dict(os.environ, LMCACHE_DISABLE_BANNER="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or "MISMATCH" in proc.stdout:
        raise RuntimeError(
            f"lmcache bench l2 failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return throughput(proc.stdout)


def main() -> int:
    ap = example_parser(__doc__)
    ap.add_argument("--servers", default="valkey9,valkey8,redis7")
    ap.add_argument("--data-size-kb", type=int, default=4096)
    ap.add_argument("--num-keys", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="rounds per bench process (3)")
    ap.add_argument("--turns", type=int, default=5, help="bench processes per adapter (5)")
    ap.add_argument("--num-workers", type=int, default=2,
                    help="our connections = resp's worker threads (2: one per core here)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as cwd:  # not inside LMCache's package
        for kind in args.servers.split(","):
            with EmbeddedValkey(binary=server_binary(kind)) as server:
                adapters = specs(server.host, server.port, args.num_workers)
                got: dict[str, list[dict[str, float]]] = {name: [] for name in adapters}
                for turn in range(args.turns):
                    order = list(adapters) if turn % 2 == 0 else list(reversed(adapters))
                    for name in order:
                        got[name].append(run_once(adapters[name], args, cwd))
                        print(f"  {kind} turn {turn + 1}: {name} {got[name][-1]}",
                              file=sys.stderr)
            med = {name: {op: statistics.median(r[op] for r in runs) for op in ("Store", "Load")}
                   for name, runs in got.items()}
            rows.append((kind, med))
    print(f"lmcache bench l2 --num-keys {args.num_keys} --data-size-kb {args.data_size_kb} "
          f"--rounds {args.rounds} --no-skip-verify; {args.turns} turns each, medians; "
          f"{args.num_workers} connections / workers")
    print(f"{'server':<9} {'ours store':>11} {'resp store':>11} {'ratio':>6}   "
          f"{'ours load':>10} {'resp load':>10} {'ratio':>6}   (GB/s)")
    for kind, med in rows:
        o, r = med["ours"], med["resp"]
        print(f"{kind:<9} {o['Store'] / 1e3:>11.2f} {r['Store'] / 1e3:>11.2f} "
              f"{o['Store'] / r['Store']:>5.2f}x   {o['Load'] / 1e3:>10.2f} "
              f"{r['Load'] / 1e3:>10.2f} {o['Load'] / r['Load']:>5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
