"""The console script, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "lmcache_valkey"]
OUTSIDE_CHECKOUT = Path(__file__).resolve().parent  # so the installed package is imported


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          cwd=OUTSIDE_CHECKOUT)


def test_bench_on_embedded_server_prints_verified_figures() -> None:
    out = run("bench", "--value-size", "64KiB", "--keys", "8", "--rounds", "2", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["verified"] is True and report["server"].startswith("embedded valkey")
    ops = {r["op"]: r for r in report["results"]}
    assert set(ops) == {"SET", "GET", "EXISTS"}
    assert ops["GET"]["value_bytes"] == 65536 and ops["GET"]["median_gbps"] > 0


def test_bench_table(server) -> None:
    out = run("bench", "--url", server.url, "--value-size", "4k", "--keys", "4", "--rounds", "1")
    assert out.returncode == 0, out.stderr
    assert "GB/s med" in out.stdout and "4 KiB" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["bench", "--value-size", "lots"], "not a size"),
    (["bench", "--keys", "0"], "must be >= 1"),
    (["bench", "--url", "valkey://127.0.0.1:1", "--rounds", "1"], "cannot connect to 127.0.0.1:1"),
    (["bench", "--url", "ftp://x"], "unsupported URL scheme"),
])
def test_bad_input_is_one_clear_line(args, message) -> None:
    out = run(*args)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr
