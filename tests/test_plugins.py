"""The ``vllm.general_plugins`` hook, in fresh interpreters (import state matters)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import lmcache_valkey

PACKAGE_PARENT = str(Path(lmcache_valkey.__file__).resolve().parent.parent)


def run_python(code: str) -> str:
    r = subprocess.run([sys.executable, "-c",
                        f"import sys; sys.path.insert(0, {PACKAGE_PARENT!r})\n" + code],
                       capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).parent)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_register_all_does_not_import_lmcache_but_registers_when_it_is_imported():
    pytest.importorskip("lmcache")
    out = run_python(
        "from lmcache_valkey.plugins import register_all\n"
        "register_all(); register_all()\n"
        "print('lmcache' in sys.modules)\n"
        "from lmcache.v1.distributed.l2_adapters.config import get_l2_adapter_config_class\n"
        "from lmcache_valkey.lmcache import ValkeyL2AdapterConfig\n"
        "print(get_l2_adapter_config_class('lmcache_valkey') is ValkeyL2AdapterConfig)\n"
        "print(sum(type(f).__name__ == '_AfterImport' for f in sys.meta_path))\n")
    assert out.split() == ["False", "True", "0"]


def test_register_all_registers_at_once_when_lmcache_is_already_imported():
    pytest.importorskip("lmcache")
    out = run_python(
        "import lmcache.v1.distributed.l2_adapters\n"
        "from lmcache_valkey.plugins import register_all\n"
        "register_all()\n"
        "from lmcache.v1.distributed.l2_adapters.config import get_l2_adapter_config_class\n"
        "print(get_l2_adapter_config_class('lmcache_valkey').__name__)\n")
    assert out.split()[-1] == "ValkeyL2AdapterConfig"


def test_register_all_registers_the_vllm_connector():
    pytest.importorskip("vllm")
    out = run_python(
        "from lmcache_valkey.plugins import register_all\n"
        "register_all(); register_all()\n"
        "from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory\n"
        "print(KVConnectorFactory.get_connector_class_by_name('ValkeyConnector').__name__)\n")
    assert out.split()[-1] == "ValkeyConnector"
