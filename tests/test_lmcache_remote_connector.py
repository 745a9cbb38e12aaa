"""ValkeyRemoteConnector driven the way LMCache drives it, against real Valkey.

Everything goes through LMCache's own code on CPU: the YAML is read by
``LMCacheEngineConfig.from_file`` (what ``LMCACHE_CONFIG_FILE`` uses), the
backends are built by ``CreateStorageBackends`` (a real ``LocalCPUBackend``
with its allocator, and a ``RemoteBackend`` whose ``CreateConnector`` loads
our class from ``remote_storage_plugins``), and the tests call the
RemoteBackend's methods, which run the connector's coroutines on an event
loop thread as LMCache's storage manager does. The only addition is a spy on
``LocalCPUBackend.allocate`` that records the MemoryObjs the connector takes,
so the tests can check that every miss gives its buffer back.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import re
import shlex
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lmcache")
torch = pytest.importorskip("torch")
yaml = pytest.importorskip("yaml")

from lmcache.v1.config import LMCacheEngineConfig  # noqa: E402
from lmcache_helpers import (  # noqa: E402
    CHUNK_BYTES,
    CHUNK_TOKENS,
    MODULE,
    PLUGIN,
    TOKEN_BYTES,
    Lm,
    content,
    key,
    metadata,
    payload,
    plugin_keys,
)

from lmcache_valkey import ConfigError  # noqa: E402
from lmcache_valkey.lmcache.remote_connector import ValkeyRemoteConnector  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "lmcache"


@pytest.fixture
def lm(server, prefix: str, make_lm) -> Lm:
    return make_lm(plugin_keys(url=server.url, key_prefix=prefix, ttl_s=60))


# -- the example config ------------------------------------------------------


def test_example_yaml_loads_with_lmcache_and_builds_our_connector(server, prefix, loop):
    path = EXAMPLES / "lmcache-valkey.yaml"
    config = LMCacheEngineConfig.from_file(str(path))
    doc = yaml.safe_load(path.read_text())
    from lmcache.v1.config import _CONFIG_DEFINITIONS

    assert set(doc) <= set(_CONFIG_DEFINITIONS), "a key LMCache ignores (typo?)"
    assert config.remote_storage_plugins == [PLUGIN]
    assert config.remote_url is None
    extra = config.extra_config
    assert extra[f"remote_storage_plugin.{PLUGIN}.module_path"] == MODULE
    assert extra[f"remote_storage_plugin.{PLUGIN}.class_name"] == "ValkeyRemoteConnector"
    assert extra[f"remote_storage_plugin.{PLUGIN}.ttl_s"] == 86400

    # The same file, pointed at the test server: LMCache builds our connector.
    extra[f"remote_storage_plugin.{PLUGIN}.url"] = server.url
    extra[f"remote_storage_plugin.{PLUGIN}.key_prefix"] = prefix
    config.max_local_cpu_size = 0.02
    lm = Lm(config, loop)
    try:
        assert lm.conn.client.config.ttl_s == 86400
        assert lm.conn.client.config.num_connections == 4
        assert lm.conn.client.config.op_timeout_s == config.blocking_timeout_secs
    finally:
        lm.close()


# -- data path -----------------------------------------------------------------


def test_put_exists_get_exact_bytes(lm: Lm, raw, prefix: str):
    lm.put({i: lm.chunk(i) for i in range(3)})
    for i in range(3):
        assert lm.remote.contains(key(i))
        got = lm.remote.get_blocking(key(i))
        assert got is not None and content(got) == payload(i)
        assert got.get_shapes() == metadata().get_shapes()
        assert got.get_dtypes() == [torch.bfloat16]
        got.ref_count_down()
    assert lm.conn.exists_sync(key(1))

    # On the server: the prefix + LMCache's key string, the bytes, the TTL.
    name = (prefix + key(2).to_string()).encode()
    assert raw.get(name) == payload(2)
    assert 0 < raw.pttl(name) <= 60_000
    assert lm.released()


def test_unix_socket_url(server, prefix, make_lm, raw):
    lm = make_lm(plugin_keys(url=server.unix_url, key_prefix=prefix))
    lm.put({0: lm.chunk(0)})
    assert raw.get(prefix + key(0).to_string()) == payload(0)
    assert raw.pttl(prefix + key(0).to_string()) == -1  # no ttl_s: no expiry
    lm.assert_loads(0)


def test_batched_variants_mixed_hits(lm: Lm):
    lm.put({0: lm.chunk(0), 1: lm.chunk(1), 3: lm.chunk(3)})
    keys = [key(i) for i in range(5)]  # 2 and 4 missing

    assert lm.remote.batched_contains(keys) == 2
    assert lm.run(lm.remote.batched_async_contains("lookup-1", keys)) == 2
    assert lm.remote.batched_contains([key(9)]) == 0

    got = lm.remote.batched_get_blocking(keys)
    assert [g is not None for g in got] == [True, True, False, True, False]
    for i, g in enumerate(got):
        if g is not None:
            assert content(g) == payload(i)
            g.ref_count_down()

    prefix_objs = lm.run(lm.remote.batched_get_non_blocking("lookup-2", keys))
    assert [content(o) for o in prefix_objs] == [payload(0), payload(1)]
    for o in prefix_objs:
        o.ref_count_down()
    assert lm.released()  # misses and everything after the first miss went back


def test_single_get_miss_releases_its_buffer(lm: Lm):
    assert not lm.remote.contains(key(7))
    assert lm.remote.get_blocking(key(7)) is None
    assert len(lm.taken) == 1 and lm.released()


def test_wrong_length_values_are_misses(lm: Lm, raw, prefix: str):
    raw.set(prefix + key(0).to_string(), payload(0, CHUNK_BYTES + 1))  # does not fit
    raw.set(prefix + key(1).to_string(), payload(1, CHUNK_BYTES - 1))  # short, not whole tokens
    raw.set(prefix + key(2).to_string(), payload(2, 5 * TOKEN_BYTES))  # short: no unfull chunks
    raw.set(prefix + key(3).to_string(), b"")
    assert lm.remote.batched_get_blocking([key(i) for i in range(4)]) == [None] * 4
    assert len(lm.taken) == 4 and lm.released()
    # The connection is still usable afterwards.
    lm.put({5: lm.chunk(5)})
    lm.assert_loads(5)


def test_unfull_last_chunk(server, prefix, make_lm):
    lm = make_lm(plugin_keys(url=server.url, key_prefix=prefix), save_unfull_chunk=True)
    lm.put({0: lm.chunk(0), 1: lm.chunk(1, tokens=5)})
    full, last = lm.remote.batched_get_blocking([key(0), key(1)])
    assert content(full) == payload(0)
    assert content(last) == payload(1, 5 * TOKEN_BYTES)
    assert last.get_shape()[2] == 5  # [2, layers, tokens, hidden]
    full.ref_count_down()
    last.ref_count_down()


def test_ttl_refreshed_by_lookup(lm: Lm, raw, prefix: str):
    lm.put({0: lm.chunk(0)})
    name = prefix + key(0).to_string()
    raw.pexpire(name, 5_000)
    assert lm.remote.batched_contains([key(0)]) == 1
    assert raw.pttl(name) > 5_000  # back to the configured 60 s


def test_list_remove_ping(lm: Lm):
    lm.put({0: lm.chunk(0), 1: lm.chunk(1)})
    assert sorted(lm.run(lm.conn.list())) == sorted([key(0).to_string(), key(1).to_string()])
    assert lm.run(lm.conn.ping()) == 0
    assert lm.remote.remove(key(0))
    assert not lm.remote.contains(key(0))
    assert lm.run(lm.conn.list()) == [key(1).to_string()]


# -- failures ------------------------------------------------------------------


def test_server_down_then_back(make_server, prefix, make_lm):
    srv = make_server()
    lm = make_lm(plugin_keys(url=srv.url, key_prefix=prefix, connect_timeout_s=1,
                             reconnect_backoff_max_s=0.2))
    lm.put({0: lm.chunk(0)})
    srv.stop()

    # Nothing raises into LMCache: misses, zero hits, an error code.
    assert not lm.remote.contains(key(0))
    assert not lm.conn.exists_sync(key(0))
    assert lm.remote.batched_contains([key(0)]) == 0
    assert lm.run(lm.remote.batched_async_contains("l", [key(0)])) == 0
    assert lm.remote.get_blocking(key(0)) is None
    assert lm.remote.batched_get_blocking([key(0), key(1)]) == [None, None]
    assert lm.run(lm.remote.batched_get_non_blocking("l", [key(0)])) == []
    assert lm.run(lm.conn.ping()) != 0
    assert lm.run(lm.conn.list()) == []
    unsent = lm.chunk(1)
    lm.run(lm.conn.batched_put([key(1)], [unsent]))  # logged, not raised
    unsent.ref_count_down()
    assert lm.released()

    srv.restart()  # same port, empty
    deadline = time.monotonic() + 15
    while lm.run(lm.conn.ping()) != 0:
        assert time.monotonic() < deadline, "connector did not reconnect"
        time.sleep(0.1)
    assert lm.remote.get_blocking(key(0)) is None  # the data went with the old server
    lm.put({0: lm.chunk(0)})
    lm.assert_loads(0)


def test_cancelled_load_keeps_its_buffer_until_the_transfer_ends(make_server, prefix,
                                                                 make_lm):
    """LMCache cancels a load after blocking_timeout_secs; the bytes may still
    be arriving, so the MemoryObj must not go back to the allocator yet."""
    srv = make_server()
    lm = make_lm(plugin_keys(url=srv.url, key_prefix=prefix))
    lm.put({0: lm.chunk(0)})
    valkey = pytest.importorskip("valkey")
    with valkey.Valkey(host=srv.host, port=srv.port) as admin:
        admin.execute_command("CLIENT", "PAUSE", 1500, "ALL")  # the GET waits for this
        fut = asyncio.run_coroutine_threadsafe(lm.conn.get(key(0)), lm.loop)
        deadline = time.monotonic() + 5
        while not lm.taken:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        fut.cancel()
        with pytest.raises(concurrent.futures.CancelledError):
            fut.result(5)
        obj = lm.taken[0]
        assert obj.get_ref_count() == 1  # still held: the server has not answered
    deadline = time.monotonic() + 15
    while obj.get_ref_count() != 0:  # released once the reply has landed
        assert time.monotonic() < deadline, "buffer never released"
        time.sleep(0.02)
    assert content(obj) == payload(0)


def test_close(lm: Lm):
    lm.put({0: lm.chunk(0)})
    lm.run(lm.conn.close())
    assert lm.conn.client.closed
    assert lm.remote.get_blocking(key(0)) is None
    assert not lm.remote.contains(key(0))
    assert lm.released()
    lm.run(lm.conn.close())  # twice is fine


# -- configuration ---------------------------------------------------------------


def test_package_module_path_and_several_instances(server, prefix, make_lm, raw):
    """Two instances of the plugin type, each with its own prefix; the package
    path works as module_path (it re-exports the class)."""
    a, b = f"{PLUGIN}.a", f"{PLUGIN}.b"
    extra = {**plugin_keys(a, url=server.url, key_prefix=prefix + "A:"),
             **plugin_keys(b, "lmcache_valkey.lmcache", url=server.url, key_prefix=prefix + "B:")}
    lm = make_lm(extra, name=b, plugins=[a, b])
    remote_a = lm.backends[f"RemoteBackend-{a}"]
    assert remote_a.connection.getWrappedConnector().plugin_name == a
    assert lm.conn.plugin_name == b
    lm.put({0: lm.chunk(0)})  # through b
    assert raw.exists(prefix + "B:" + key(0).to_string())
    assert lm.remote.contains(key(0))
    assert not remote_a.contains(key(0))


def _config(extra: dict[str, Any], **top: Any) -> LMCacheEngineConfig:
    return LMCacheEngineConfig.from_dict({"chunk_size": CHUNK_TOKENS, "max_local_cpu_size": 0.02,
                                          "remote_storage_plugins": [PLUGIN],
                                          "extra_config": extra, **top})


class _Backend:
    """What the constructor reads from the CPU backend when built directly."""

    metadata = metadata()


@pytest.mark.parametrize("extra, top, message", [
    (plugin_keys(url="valkey://127.0.0.1:1", ttl=5), {}, "unknown option"),
    (plugin_keys(), {}, "url"),
    (plugin_keys(url="memcached://x:1"), {}, "scheme"),
    (plugin_keys(url="valkey://127.0.0.1:1", ttl_s=-1), {}, "ttl_s"),
    (plugin_keys(url="valkey://127.0.0.1:1"), {"remote_serde": "cachegen"}, "naive"),
    (plugin_keys(url="valkey://127.0.0.1:1"), {"use_layerwise": True}, "layerwise"),
    ({}, {}, "class_name"),
])
def test_config_errors(extra, top, message, monkeypatch):
    """LMCache logs a connector that fails to build and carries on without it,
    so the message is what the user sees: it must say what to fix."""
    monkeypatch.delenv("VALKEY_HOST", raising=False)
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ConfigError, match=message):
            ValkeyRemoteConnector(loop=loop, local_cpu_backend=_Backend(),
                                  config=_config(extra, **top))
    finally:
        loop.close()


def test_unknown_option_lists_valid_ones():
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ConfigError) as e:
            ValkeyRemoteConnector(loop=loop, local_cpu_backend=_Backend(),
                                  config=_config(plugin_keys(url="valkey://h:1", ttl=5)))
    finally:
        loop.close()
    assert f"remote_storage_plugin.{PLUGIN}.ttl" in str(e.value)
    assert "ttl_s" in str(e.value) and "key_prefix" in str(e.value)


# -- the README's multiprocess-mode commands ------------------------------------


def _readme_commands() -> list[list[str]]:
    text = (EXAMPLES / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            if cmd.strip():
                commands.append(shlex.split(cmd))
    return commands


def _l2_adapter_jsons(tokens: list[str]) -> list[str]:
    return [tokens[i + 1] for i, t in enumerate(tokens) if t == "--l2-adapter"]


def _parse_server_command(tokens: list[str]) -> Any:
    from lmcache.cli.commands.server import ServerCommand
    from lmcache.v1.distributed.config import parse_args_to_config

    parser = argparse.ArgumentParser()
    ServerCommand().add_arguments(parser)
    args = parser.parse_args(tokens[tokens.index("server") + 1:])
    return parse_args_to_config(args).l2_adapter_config.adapters


def test_readme_plugin_route_parses_with_lmcache():
    from lmcache.v1.distributed.l2_adapters.config import (
        add_l2_adapters_args,
        parse_args_to_l2_adapters_config,
    )

    plugin_jsons = [j for cmd in _readme_commands() for j in _l2_adapter_jsons(cmd)
                    if json.loads(j)["type"] == "plugin"]
    assert len(plugin_jsons) == 3
    parser = add_l2_adapters_args(argparse.ArgumentParser())
    for raw_json in plugin_jsons:
        (cfg,) = parse_args_to_l2_adapters_config(
            parser.parse_args(["--l2-adapter", raw_json])).adapters
        assert cfg.module_path == "lmcache_valkey.lmcache"
        assert cfg.class_name == "ValkeyL2Adapter"
        assert cfg.config_class_name == "ValkeyL2AdapterConfig"
        assert cfg.adapter_params["url"] == "valkey://127.0.0.1:6379"

    (server_cmd,) = [c for c in _readme_commands() if c[:2] == ["lmcache", "server"]]
    (adapter,) = _parse_server_command(server_cmd)
    assert adapter.adapter_params == {"url": "valkey://127.0.0.1:6379",
                                      "key_prefix": "lmcache-mp:", "ttl_s": 86400,
                                      "num_connections": 4}


def test_readme_short_name_route_parses_after_register():
    registration = pytest.importorskip("lmcache_valkey.lmcache.registration")
    (cmd,) = [c for c in _readme_commands() if c[:2] == ["lmcache-valkey", "lmcache"]]
    registration.register()   # what `lmcache-valkey lmcache` does before LMCache's CLI
    (adapter,) = _parse_server_command(cmd[1:])
    assert type(adapter).__name__ == "ValkeyL2AdapterConfig"


def test_readme_vllm_commands_name_lmcache_connectors():
    import lmcache

    vllm_dir = Path(lmcache.__file__).parent / "integration" / "vllm"
    configs = {}
    for cmd in _readme_commands():
        if cmd[:2] == ["vllm", "serve"] or "vllm" in cmd:
            ktc = json.loads(cmd[cmd.index("--kv-transfer-config") + 1])
            configs[ktc["kv_connector"]] = ktc
    assert set(configs) == {"LMCacheConnectorV1", "LMCacheMPConnector"}
    mp = configs["LMCacheMPConnector"]
    assert mp["kv_connector_module_path"] == "lmcache.integration.vllm.lmcache_mp_connector"
    source = (vllm_dir / "lmcache_mp_connector.py").read_text()
    assert "class LMCacheMPConnector(" in source
    for name in mp["kv_connector_extra_config"]:
        assert f'"{name}"' in source  # a key the connector reads
