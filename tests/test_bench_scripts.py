"""The benchmark scripts under examples/servers run end to end on a real
server (tiny sizes: this checks they work, not what they measure)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "servers"


def test_sweep_inflight_prints_one_row_per_value_size() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "sweep_inflight.py"), "--server", "valkey9", "--op", "GET",
         "--value-sizes", "4KiB,16KiB", "--budgets", "4KiB,64KiB", "--keys", "4",
         "--moved-per-size", "64KiB"],
        check=True, capture_output=True, text=True, timeout=120).stdout
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [r[:2] for r in rows] == [["4", "KiB"], ["16", "KiB"]]
    assert all(len(r) == 2 + 3 and all(float(x) > 0 for x in r[2:]) for r in rows)


def test_bench_tables_turn_a_report_into_the_readme_rows() -> None:
    spec = importlib.util.spec_from_file_location("bench_tables", EXAMPLES / "bench_tables.py")
    assert spec and spec.loader
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    row = {"sweep_bytes": 4 << 20, "op": "GET", "rounds": 11}
    report = {"server": "valkey8 (io-threads 1)", "results": [
        {**row, "client": "ours", "gbps": 3.0},
        {**row, "client": "lmcache-c++", "gbps": 2.5},
        {**row, "client": "glide", "gbps": 1.5},
        {**row, "client": "ceiling", "gbps": 1.2},
        {**row, "client": "ceiling-1", "gbps": 2.0},
        {**row, "op": "EXISTS", "client": "ours", "gbps": 0.0},
    ]}
    lines = tables.markdown(report).splitlines()
    assert lines[-1] == ("| 4 MiB | GET | 11 | **3.00** | 2.50 | 1.50 | 1.20 | 2.00 "
                         "| 1.20x | 2.00x | 1.50x |")
