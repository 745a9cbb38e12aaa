"""The one path from an integration's options to a client config
(lmcache_valkey.integration_options), through each integration that parses
a plain mapping: the same checks, the same messages, each with its own name
and defaults. (The LMCache remote connector needs LMCache's engine config:
test_lmcache_remote_connector.py covers it.)"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from lmcache_valkey.config import Secret
from lmcache_valkey.errors import ConfigError
from lmcache_valkey.integration_options import CLIENT_OPTIONS, IntegrationOptions

SECRET = "pw-Qx7-never-print"


def _vllm(options: Mapping[str, Any]) -> Any:
    from lmcache_valkey.vllm.config import ConnectorConfig

    return ConnectorConfig.from_extra_config(options, env={}).client_config


def _sglang(options: Mapping[str, Any]) -> Any:
    from lmcache_valkey.sglang.config import HiCacheValkeyConfig

    return HiCacheValkeyConfig.from_extra_config(options, env={}).client_config


def _lmcache_l2(options: Mapping[str, Any]) -> Any:
    pytest.importorskip("lmcache")
    from lmcache_valkey.lmcache.l2_adapter import ValkeyL2AdapterConfig

    return ValkeyL2AdapterConfig.from_dict(dict(options)).client_config


#: (parse, owner, default key prefix, default TTL)
INTEGRATIONS = {
    "vllm": (_vllm, "ValkeyConnector", b"vllm:kv:", 3600.0),
    "sglang": (_sglang, "ValkeyHiCacheStorage", b"hicache:", 3600.0),
    "lmcache-l2": (_lmcache_l2, "ValkeyL2Adapter", b"lmcache:", None),
}


@pytest.fixture(params=sorted(INTEGRATIONS))
def integration(request, monkeypatch) -> tuple[Callable[[Mapping[str, Any]], Any], str,
                                                bytes, float | None]:
    monkeypatch.delenv("VALKEY_HOST", raising=False)  # the L2 adapter reads os.environ
    return INTEGRATIONS[request.param]


def test_an_unknown_option_is_named_with_every_valid_one(integration) -> None:
    parse, owner, _, _ = integration
    with pytest.raises(ConfigError) as e:
        parse({"url": "valkey://h:1", "ttl": 5})
    text = str(e.value)
    assert text.startswith(f"{owner}: unknown option(s) ['ttl']")
    assert "valid options" in text
    assert all(repr(name) in text for name in ("url", "ttl_s", "key_prefix", "num_connections"))


def test_defaults_and_their_spellings_of_none(integration) -> None:
    parse, _, key_prefix, ttl_s = integration
    config = parse({"url": "valkey://h:1"})
    assert (config.key_prefix, config.ttl_s) == (key_prefix, ttl_s)
    config = parse({"url": "valkey://h:1", "key_prefix": None, "ttl_s": 0})
    assert (config.key_prefix, config.ttl_s) == (b"", None)  # null: no prefix; 0: never expire


def test_no_embedded_server_is_started_for_an_integration(integration) -> None:
    parse, owner, _, _ = integration
    with pytest.raises(ConfigError, match=f"^{owner} needs a server: .*url"):
        parse({"key_prefix": "x"})


def test_client_errors_name_the_integration_and_hide_the_password(integration) -> None:
    parse, owner, _, _ = integration
    with pytest.raises(ConfigError) as e:
        parse({"url": f"valkey://alice:{SECRET}@h:1", "password": SECRET,
               "num_connections": "many"})
    assert str(e.value).startswith(f"{owner}: num_connections must be an integer")
    assert SECRET not in str(e.value)
    config = parse({"url": "valkey://h:1", "password": SECRET})
    assert config.password == Secret(SECRET)
    assert SECRET not in repr(config)
    with pytest.raises(ConfigError, match=f"^{owner}: url must be a string"):
        parse({"url": 5})


def test_names_are_shown_as_the_user_wrote_them() -> None:
    spec = IntegrationOptions(owner="Thing", own=frozenset({"url"}),
                              client=CLIENT_OPTIONS - {"host"}, key_prefix="t:", ttl_s=None,
                              missing_server="give it a url", where="extra_config")
    spec.check_names(["url", "ttl_s"])
    with pytest.raises(ConfigError) as e:
        spec.check_names(["url", "host", "colour"], shown_under="plugin.thing.")
    head, valid = str(e.value).split(" are ")
    assert head == ("Thing: unknown option(s) ['plugin.thing.colour', 'plugin.thing.host'] in "
                    "extra_config; valid options under 'plugin.thing.'")
    assert valid == str(sorted(spec.valid)) and "'host'" not in valid
