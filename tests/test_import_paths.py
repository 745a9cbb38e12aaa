"""The import paths users were given keep working after the tree moved into
layers (client/, protocol/, observability/, server/, tools/): the config
strings and entry points, the integrations' packages, the documented Python
calls, and the flat module names of earlier READMEs."""

from __future__ import annotations

import importlib
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

import lmcache_valkey


def test_the_vllm_plugin_entry_point_resolves() -> None:
    [plugin] = [e for e in entry_points(group="vllm.general_plugins")
                if e.name == "lmcache_valkey"]
    assert plugin.value == "lmcache_valkey.plugins:register_all"
    assert callable(plugin.load())


@pytest.mark.parametrize("module", [
    "lmcache_valkey.lmcache", "lmcache_valkey.lmcache.l2_adapter",
    "lmcache_valkey.lmcache.remote_connector", "lmcache_valkey.vllm",
    "lmcache_valkey.cluster", "lmcache_valkey.testkit.tiny_llama",
])
def test_integration_packages_import(module: str) -> None:
    importlib.import_module(module)


@pytest.mark.parametrize("old, new", sorted(lmcache_valkey._MOVED.items()))
def test_flat_module_names_reach_the_moved_modules(old: str, new: str) -> None:
    moved = importlib.import_module(f"lmcache_valkey.{new}")
    if old == "metrics":
        pytest.importorskip("prometheus_client")
    assert getattr(lmcache_valkey, old) is moved


def test_documented_calls() -> None:
    from lmcache_valkey.client import BatchResult, ValkeyClient
    assert (ValkeyClient, BatchResult) == (lmcache_valkey.ValkeyClient, lmcache_valkey.BatchResult)
    assert callable(lmcache_valkey.prefix_delete.delete_prefix)
    assert callable(lmcache_valkey.server_stats.server_stats)
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        lmcache_valkey.nonexistent  # noqa: B018


def test_the_command_and_python_m() -> None:
    out = subprocess.run([sys.executable, "-m", "lmcache_valkey", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "bench" in out
