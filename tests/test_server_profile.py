"""Reading INFO server into a ServerProfile, and the GET depth it implies
(the live servers are covered by test_client.py's per-server contract)."""

from __future__ import annotations

from lmcache_valkey.protocol.server_profile import (
    DEEP_INFLIGHT_BYTES,
    SHALLOW_INFLIGHT_BYTES,
    UNKNOWN,
    parse_info_server,
)


def test_valkey_9_pipelines_deep() -> None:
    p = parse_info_server("# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\n"
                          "valkey_version:9.1.2\r\nio_threads_active:0\r\n")
    assert (p.name, p.version, p.io_threads_active) == ("valkey", "9.1.2", False)
    assert p.inflight_bytes() == DEEP_INFLIGHT_BYTES and str(p) == "valkey 9.1.2"


def test_valkey_8_and_redis_keep_about_one_large_reply_in_flight() -> None:
    v8 = parse_info_server("redis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.1.8\r\n"
                           "io_threads_active:1\r\n")
    assert v8.inflight_bytes() == SHALLOW_INFLIGHT_BYTES
    assert str(v8) == "valkey 8.1.8, io-threads active"
    redis = parse_info_server("# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n")
    assert (redis.name, redis.version) == ("redis", "7.0.15")
    assert redis.inflight_bytes() == SHALLOW_INFLIGHT_BYTES
    # Valkey 7.2 reported only redis_version, with server_name:valkey.
    v72 = parse_info_server("redis_version:7.2.5\r\nserver_name:valkey\r\n")
    assert v72.name == "valkey" and v72.inflight_bytes() == SHALLOW_INFLIGHT_BYTES


def test_unreadable_info_is_unknown_and_shallow() -> None:
    assert parse_info_server("garbage") == UNKNOWN
    assert UNKNOWN.inflight_bytes() == SHALLOW_INFLIGHT_BYTES
    assert parse_info_server("valkey_version:10.0.0-rc1\r\n").inflight_bytes() == \
        DEEP_INFLIGHT_BYTES
