"""URL, options and environment: precedence, validation, redaction."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from lmcache_valkey import ClientConfig, ConfigError
from lmcache_valkey.config import Secret


def cfg(url=None, env=None, **options) -> ClientConfig:
    return ClientConfig.from_options(url, env=env or {}, **options)


@pytest.mark.parametrize("url, host, port, db", [
    ("valkey://h:1234/2", "h", 1234, 2),
    ("redis://h", "h", 6379, 0),
    ("valkey://[::1]:7000", "::1", 7000, 0),
    ("valkey://h:1?db=3", "h", 1, 3),
])
def test_tcp_urls(url, host, port, db) -> None:
    c = cfg(url)
    assert (c.host, c.port, c.db, c.unix_path) == (host, port, db, None)


def test_unix_url() -> None:
    c = cfg("unix:///run/v.sock?db=1")
    assert (c.unix_path, c.host, c.db, c.endpoint) == ("/run/v.sock", None, 1, "unix:/run/v.sock")


def test_credentials_in_url_are_decoded_and_hidden() -> None:
    c = cfg("valkey://alice:p%40ss@h:1")
    assert c.username == "alice" and c.password == Secret("p@ss")
    for text in (repr(c), str(c), c.redacted_url(), c.endpoint):
        assert "p@ss" not in text and "p%40ss" not in text and "alice" not in text
    assert pickle.loads(pickle.dumps(c.password)).get() == "p@ss"


def test_env_fills_what_the_url_leaves_out() -> None:
    env = {"VALKEY_HOST": "envhost", "VALKEY_PORT": "7001", "VALKEY_DB": "4",
           "VALKEY_PASSWORD": "pw"}
    c = cfg(None, env)
    assert (c.host, c.port, c.db, c.password.get()) == ("envhost", 7001, 4, "pw")
    c = cfg("valkey://urlhost:9", env)
    assert (c.host, c.port, c.db, c.password.get()) == ("urlhost", 9, 4, "pw")
    c = cfg("valkey://urlhost:9", env, db=7)            # options beat both
    assert c.db == 7


def test_no_server_anywhere_means_embedded() -> None:
    assert cfg().embedded and not cfg("valkey://h").embedded


def test_options_are_typed_from_strings() -> None:
    c = cfg("valkey://h", ttl_s="30", num_connections="4", key_prefix="kv:")
    assert (c.ttl_s, c.num_connections, c.key_prefix, c.ttl_ms) == (30.0, 4, b"kv:", 30_000)


def test_cluster_and_tls_urls() -> None:
    c = cfg("valkey+cluster://u:pw@a:1,[::1]:2/0?read_from_replicas=yes")
    assert (c.cluster, c.cluster_nodes, c.host, c.port) == (True, (("a", 1), ("::1", 2)), "a", 1)
    assert c.read_from_replicas and not c.tls
    assert c.redacted_url() == "valkey+cluster://***:***@a:1,[::1]:2/0"
    assert c.for_node("b", 7) == dataclasses.replace(c, host="b", port=7, cluster=False,
                                                     cluster_nodes=())
    t = cfg("rediss://h:6380?tls_ca_file=/ca.pem&tls_server_name=valkey.internal")
    assert (t.tls, t.tls_ca_file, t.tls_server_name, t.tls_check_hostname) == \
        (True, "/ca.pem", "valkey.internal", True)
    assert cfg("valkeys+cluster://h:1?tls_check_hostname=no").tls_check_hostname is False
    assert cfg("valkey://h:1?cluster=true").cluster_nodes == (("h", 1),)


@pytest.mark.parametrize("url, options, message", [
    ("http://h", {}, "unsupported URL scheme 'http'"),
    ("valkey://h?tls_ca_file=/ca.pem", {}, "TLS options given but TLS is off"),
    ("valkeys://h", {"tls_cert_file": "c.pem"}, "tls_cert_file and tls_key_file go together"),
    ("valkey://h?colour=red", {}, "unknown URL parameter"),
    ("valkey://h?cluster=maybe", {}, "cluster must be true or false"),
    ("valkey+cluster://a:1,:2", {}, "malformed cluster node"),
    ("unix:///s.sock?cluster=1", {}, "need a TCP address"),
    ("unix://", {}, "socket path"),
    ("valkey://h:99999", {}, "malformed server URL"),
    ("valkey://h", {"num_connections": 0}, "num_connections must be >= 1"),
    ("valkey://h", {"ttl_s": -1}, "ttl_s must be > 0"),
    ("valkey://h", {"ttl_s": "soon"}, "ttl_s must be a number"),
    ("valkey://h", {"port": 1.5}, "port must be an integer"),
    ("valkey://h", {"op_timeout_s": 0}, "op_timeout_s must be > 0"),
    ("valkey://h", {"colour": "red"}, "unknown option"),
    ("valkey://h", {"key_prefix": 5}, "key_prefix must be str or bytes"),
])
def test_bad_config_is_refused_clearly(url, options, message) -> None:
    with pytest.raises(ConfigError, match=message):
        cfg(url, **options)
