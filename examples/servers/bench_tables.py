"""The README's per-server tables: one interleaved `lmcache-valkey bench` run
per server, printed as a Markdown table with the targets' ratios (ours over
LMCache's C++ client, over glide, over the better bare ceiling), and its plot.

    .venv/bin/python examples/servers/bench_tables.py --servers valkey9,valkey8,redis7 \
        --value-sizes 64KiB,4MiB,32MiB --rounds 11 --plot-dir docs

Each server's run is exactly
``lmcache-valkey bench --server S --value-sizes ... --keys 32 --rounds R
--clients ours,ceiling,ceiling-1,glide,lmcache-c++ --json --plot docs/bench-S.png``.
Figures only: this machine is shared, so compare ratios within a row.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from lmcache_valkey.tools.bench import _human

CLIENTS = "ours,ceiling,ceiling-1,glide,lmcache-c++"
COLUMNS = ("ours", "lmcache-c++", "glide", "ceiling", "ceiling-1")


def run_server(server: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "lmcache_valkey", "bench", "--server", server,
           "--value-sizes", args.value_sizes, "--keys", str(args.keys),
           "--rounds", str(args.rounds), "--clients", CLIENTS, "--json", "-q"]
    if args.plot_dir:
        cmd += ["--plot", f"{args.plot_dir}/bench-{server}.png"]
    if args.stock_malloc:
        cmd.append("--stock-malloc")
    print("$", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def _ratio(ours: float, other: float | None) -> str:
    return f"{ours / other:.2f}x" if other else "-"


def markdown(report: dict[str, Any]) -> str:
    """One row per (size, op): GB/s per client and the targets' ratios."""
    cells: dict[tuple[int, str], dict[str, float]] = {}
    rounds: dict[tuple[int, str], int] = {}
    for r in report["results"]:
        if r["op"] in ("GET", "SET"):
            cells.setdefault((r["sweep_bytes"], r["op"]), {})[r["client"]] = r["gbps"]
            rounds[(r["sweep_bytes"], r["op"])] = r["rounds"]
    lines = [f"{report['server']}", "",
             "| size | op | rounds | ours | LMCache C++ | glide | ceiling | ceiling-1 "
             "| ours / LMCache | ours / glide | ours / best ceiling |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (size, op), row in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1] != "GET")):
        ours = row["ours"]
        best = max(row.get("ceiling", 0.0), row.get("ceiling-1", 0.0)) or None
        figures = " | ".join(
            (f"**{row[c]:.2f}**" if c == "ours" else f"{row[c]:.2f}") if c in row else "-"
            for c in COLUMNS)
        lines.append(f"| {_human(size)} | {op} | {rounds[(size, op)]} | {figures} | "
                     f"{_ratio(ours, row.get('lmcache-c++'))} | {_ratio(ours, row.get('glide'))} "
                     f"| {_ratio(ours, best)} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="valkey9,valkey8,redis7")
    p.add_argument("--value-sizes", default="64KiB,4MiB,32MiB")
    p.add_argument("--keys", type=int, default=32)
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--plot-dir", default="", help="write docs/bench-SERVER.png there")
    p.add_argument("--stock-malloc", action="store_true",
                   help="the servers' allocators as shipped (see server/allocator.py)")
    args = p.parse_args()
    for server in args.servers.split(","):
        print(markdown(run_server(server, args)), "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
