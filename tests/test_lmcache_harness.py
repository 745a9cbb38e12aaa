"""LMCache's own L2-adapter harnesses, run as outside judges of ValkeyL2Adapter.

* ``python -m lmcache.v1.basic_check --mode test_l2_adapter --l2-adapter JSON``
* ``lmcache bench l2 --l2-adapter JSON --no-skip-verify``

Both run in fresh processes, exactly as a user would start them, against a
dedicated Valkey server. The bench also runs LMCache's built-in ``resp`` (C++
client) and ``valkey`` (valkey-glide) adapters against the same server; their
figures are printed (``pytest -s``), never asserted: tests assert behaviour,
not timings.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmcache")

import lmcache_valkey  # noqa: E402
from lmcache_valkey.testkit.lmcache_bench import LMCACHE_CLI, bench_l2_summary  # noqa: E402

# The child processes must import the same lmcache_valkey as this one: the
# installed build in CI, the in-place build when run with PYTHONPATH=. (the
# checkout itself has no compiled _native unless built in place).
PACKAGE_PARENT = Path(lmcache_valkey.__file__).resolve().parent.parent
TIMEOUT_S = 180

# REGISTER_FIRST is `lmcache ...` with lmcache_valkey's register() called
# first (the launcher route).
REGISTER_FIRST = "from lmcache_valkey.lmcache import register; assert register(); " + LMCACHE_CLI

BENCH_ARGS = ["--num-keys", "16", "--data-size-kb", "1024", "--rounds", "2",
              "--warmup-rounds", "1", "--no-skip-verify"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if PACKAGE_PARENT.name != "site-packages":  # an in-place build: make it importable
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT),
                                                          env.get("PYTHONPATH")]))
    env.pop("VALKEY_PASSWORD", None)
    # cwd is a scratch dir: LMCache must not be run from inside its own package
    # (its lmcache/logging.py would shadow the stdlib module).
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)


def _plugin_spec(url: str, prefix: str, **params) -> str:
    return json.dumps({
        "type": "plugin", "module_path": "lmcache_valkey.lmcache",
        "class_name": "ValkeyL2Adapter", "config_class_name": "ValkeyL2AdapterConfig",
        "adapter_params": {"url": url, "key_prefix": prefix, **params},
    })


def _assert_bench_ok(proc: subprocess.CompletedProcess[str], keys_total: int) -> dict:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Adapter created successfully (ValkeyL2Adapter)" in proc.stdout
    assert re.search(r"\[Verify\] All \d+ keys data verified OK\.", proc.stdout), proc.stdout
    assert "MISMATCH" not in proc.stdout
    sections = bench_l2_summary(proc.stdout)
    for op in ("Store", "Load"):
        assert sections[op]["Total keys"] == str(keys_total)
        assert sections[op]["Total success"] == str(keys_total)
        assert sections[op]["Rounds timed out"] == "0"
    assert sections["Lookup"]["Total keys"] == str(keys_total)
    return sections


def test_basic_check_test_l2_adapter(valkey, tmp_path):
    spec = _plugin_spec(valkey.url, "basic-check:", ttl_s=600)
    proc = _run(["-m", "lmcache.v1.basic_check", "--mode", "test_l2_adapter",
                 "--num-keys", "8", "--l2-adapter", spec], tmp_path)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert "=== Testing L2 adapter #0 (ValkeyL2Adapter) ===" in out
    assert "Test Failed" not in out and "FAIL" not in out, out
    assert "Validation: 8/8 correctly absent" in out
    assert "Batch store OK" in out
    assert "Validation: 8/8 found" in out
    assert "Validation (loaded): 8/8" in out
    assert "Validation (content): 8/8" in out
    assert "data mismatch" not in out


def test_bench_l2_short_type_name_after_register(valkey, tmp_path):
    """The launcher route: register() in the process, then LMCache's CLI."""
    spec = json.dumps({"type": "lmcache_valkey", "url": valkey.url, "key_prefix": "short:"})
    proc = _run(["-c", REGISTER_FIRST, "bench", "l2", "--l2-adapter", spec, "--num-keys", "8",
                 "--data-size-kb", "256", "--rounds", "2", "--no-skip-verify"], tmp_path)
    _assert_bench_ok(proc, keys_total=16)


def test_short_type_name_needs_registration(valkey, tmp_path):
    """A fresh LMCache process does not know "lmcache_valkey" (no entry points
    for L2 adapters in LMCache 0.5.6): use the plugin form there."""
    spec = json.dumps({"type": "lmcache_valkey", "url": valkey.url})
    proc = _run(["-c", LMCACHE_CLI, "bench", "l2", "--l2-adapter", spec, "--num-keys", "1",
                 "--data-size-kb", "4"], tmp_path)
    assert proc.returncode != 0
    assert "Adapter created successfully" not in proc.stdout


def test_bench_l2_ours_and_lmcache_peers(valkey, tmp_path):
    """``lmcache bench l2`` for our adapter (plugin route, verified round trip),
    then LMCache's ``resp`` and ``valkey`` adapters on the same server."""
    keys_total = 16 * 2
    specs = {
        "lmcache_valkey (plugin)": _plugin_spec(valkey.url, "bench-ours:", num_connections=2),
        "resp (LMCache C++)": json.dumps({"type": "resp", "host": valkey.host,
                                          "port": valkey.port, "num_workers": 8}),
        "valkey (LMCache glide)": json.dumps({"type": "valkey", "key_prefix": "bench-glide",
                                              "startup_nodes": f"{valkey.host}:{valkey.port}",
                                              "num_workers": 8}),
    }
    rows = []
    for name, spec in specs.items():
        proc = _run(["-c", LMCACHE_CLI, "bench", "l2", "--l2-adapter", spec, *BENCH_ARGS],
                    tmp_path)
        if name.startswith("lmcache_valkey"):
            sections = _assert_bench_ok(proc, keys_total)
        elif proc.returncode != 0:  # a peer that cannot load here is skipped, not failed
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            rows.append(f"{name:26} unavailable: {tail[:100]}")
            continue
        else:
            sections = bench_l2_summary(proc.stdout)
        verified = "verified" if "data verified OK" in proc.stdout else "NOT verified"
        rows.append(f"{name:26} store {sections['Store']['Throughput avg (MB/s)']:>9} MB/s  "
                    f"load {sections['Load']['Throughput avg (MB/s)']:>9} MB/s  "
                    f"lookup {sections['Lookup']['Avg ops/s']:>10} keys/s  ({verified})")
    print(f"\nlmcache bench l2 {' '.join(BENCH_ARGS)}  (Valkey at {valkey.url})")
    print("\n".join(rows))
