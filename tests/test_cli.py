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


def test_bench_on_embedded_server_compares_clients_over_tcp_and_unix(tmp_path) -> None:
    plot = tmp_path / "bench.png"
    out = run("bench", "--clients", "ours,ceiling,ours@unix", "--value-sizes", "64KiB,1MiB",
              "--keys", "4", "--exists-keys", "50", "--rounds", "2", "--json",
              *(["--plot", str(plot)] if _has("matplotlib") else []))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["verified"] is True
    assert report["server"].startswith(
        "embedded (io-threads 1, malloc keeps freed memory): valkey 9")
    assert report["clients"] == ["ours", "ours@unix", "ceiling"]
    cells = {(r["client"], r["op"], r["value_bytes"]) for r in report["results"]}
    for client in report["clients"]:
        assert {(client, "GET", 65536), (client, "SET", 1 << 20), (client, "EXISTS", 0)} <= cells
    assert all(r["ops_per_s"] > 0 for r in report["results"])
    if _has("matplotlib"):
        assert plot.stat().st_size > 10_000


def test_bench_starts_a_named_server_as_shipped_with_stock_malloc() -> None:
    """--server starts that server keeping freed memory unless --stock-malloc
    (server/allocator.py); the report's server line says which."""
    for flags, says in (([], "malloc keeps freed memory"), (["--stock-malloc"], "stock malloc")):
        out = run("bench", "--server", "valkey9", *flags, "--clients", "ours",
                  "--value-sizes", "64KiB", "--keys", "2", "--exists-keys", "2",
                  "--rounds", "1", "--json", "-q")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["server"].startswith(f"valkey9 (io-threads 1, {says}): ")


def test_bench_table(server) -> None:
    out = run("bench", "--url", server.url, "--clients", "ours,ceiling", "--value-sizes", "4k",
              "--keys", "4", "--rounds", "1", "--quiet")
    assert out.returncode == 0, out.stderr
    assert "ours/this" in out.stdout and "4 KiB" in out.stdout and "ceiling" in out.stdout


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("args, message", [
    (["bench", "--value-sizes", "lots"], "not a size"),
    (["bench", "--clients", "nobody"], "unknown client"),
    (["bench", "--keys", "0"], "must be >= 1"),
    (["bench", "--url", "valkey://127.0.0.1:1", "--rounds", "1"], "cannot connect to 127.0.0.1:1"),
    (["bench", "--url", "ftp://x"], "unsupported URL scheme"),
])
def test_bad_input_is_one_clear_line(args, message) -> None:
    out = run(*args)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_lmcache_subcommand_runs_lmcache_cli_with_our_adapter_type(server) -> None:
    """`lmcache-valkey lmcache ...` = LMCache's CLI, with type "lmcache_valkey" known."""
    pytest.importorskip("lmcache")
    spec = json.dumps({"type": "lmcache_valkey", "url": server.url,
                       "key_prefix": "cli-lmcache:"})
    r = run("lmcache", "bench", "l2", "--l2-adapter", spec, "--num-keys", "4",
            "--data-size-kb", "64", "--rounds", "1", "--no-skip-verify")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "verified OK" in r.stdout + r.stderr
