"""Client counters, server facts, Prometheus export and `lmcache-valkey stats`,
against real servers."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest
from checks import retry

from lmcache_valkey import ValkeyConnectionError
from lmcache_valkey.observability import metrics as prom
from lmcache_valkey.observability.server_stats import server_stats
from lmcache_valkey.observability.stats import LATENCY_BUCKETS_S, ClientStats
from lmcache_valkey.tools.cli import main as cli_main

parser = pytest.importorskip("prometheus_client.parser")

FAMILIES = {
    "lmcache_valkey_batches", "lmcache_valkey_keys", "lmcache_valkey_key_errors",
    "lmcache_valkey_batch_errors", "lmcache_valkey_received_bytes", "lmcache_valkey_sent_bytes",
    "lmcache_valkey_batch_duration_seconds", "lmcache_valkey_connects",
    "lmcache_valkey_reconnects", "lmcache_valkey_connect_failures", "lmcache_valkey_server_up",
    "lmcache_valkey_prefix_keys", "lmcache_valkey_prefix_keys_truncated",
    "lmcache_valkey_server_keys", "lmcache_valkey_server_used_memory_bytes",
    "lmcache_valkey_server_maxmemory_bytes", "lmcache_valkey_server_connected_clients",
    "lmcache_valkey_server_evicted_keys", "lmcache_valkey_server_expired_keys",
    "lmcache_valkey_server_keyspace_hits", "lmcache_valkey_server_keyspace_misses",
    "lmcache_valkey_server_info",
}


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of a text exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in parser.text_string_to_metric_families(text) for s in fam.samples}


def known_batches(client) -> None:
    """3 SETs (1110 bytes); a GET of 5: 2 hits (110 bytes), a miss, a value too
    large for its buffer, a list (WRONGTYPE); EXISTS 2 of 3; DEL 1 of 2."""
    assert client.batch_set(["a", "b", "c"], [b"x" * 10, b"y" * 100, b"z" * 1000]) == [True] * 3
    client.execute("RPUSH", client.config.key_prefix + b"list", "v")
    got = client.batch_get_into(["a", "b", "nope", "c", "list"],
                                [bytearray(10), bytearray(100), bytearray(8), bytearray(8),
                                 bytearray(8)])
    assert got == [10, 100, None, None, None] and set(got.errors) == {4}
    assert client.batch_exists(["a", "b", "nope"]) == [True, True, False]
    assert client.batch_delete(["a", "nope"]) == [1, 0]


def test_exact_counts_after_known_batches(client) -> None:
    known_batches(client)
    s = client.stats()
    assert s.endpoint == client.config.endpoint
    get, set_, exists, delete = s.ops["get"], s.ops["set"], s.ops["exists"], s.ops["delete"]
    assert get.keys == {"hit": 2, "miss": 1, "error": 2}
    assert get.key_errors == {"too_large": 1, "WRONGTYPE": 1} and get.batch_errors == {}
    assert (s.hits, s.misses, s.bytes_in, s.bytes_out) == (2, 1, 110, 1110)
    assert set_.keys == {"stored": 3, "error": 0}
    assert exists.keys == {"found": 2, "missing": 1, "error": 0}
    assert delete.keys == {"deleted": 1, "missing": 1, "error": 0}
    assert s.ops["touch"].batches == 0
    assert s.errors == {"too_large": 1, "WRONGTYPE": 1}
    for op in (get, set_, exists, delete):
        assert op.batches == 1 and sum(op.latency_counts) == 1 and op.latency_sum_s > 0
    assert len(get.latency_counts) == len(LATENCY_BUCKETS_S) + 1
    assert (s.connects, s.reconnects, s.connect_failures) == (2, 0, 0)
    # Printing and JSON: the same numbers.
    text = str(s)
    assert "WRONGTYPE 1" in text and "too_large 1" in text and "2 connects" in text
    d = json.loads(json.dumps(s.to_dict()))
    assert d["ops"]["get"]["keys"] == {"hit": 2, "miss": 1, "error": 2}
    assert d["hits"] == 2 and d["bytes_out"] == 1110
    assert sum(d["ops"]["get"]["latency_counts"].values()) == 1


def test_touch_empty_batches_and_asyncio_are_counted_as_batches(server, prefix, make_client):
    import asyncio

    c = make_client(server.url, key_prefix=prefix, ttl_s=60)
    c.batch_set(["k"], [b"v"])
    assert c.batch_exists(["k", "gone"], refresh_ttl=True) == [True, False]
    assert c.batch_get_into([], []) == []                     # nothing to count
    asyncio.run(c.abatch_get_into(["k"], [bytearray(1)]))
    s = c.stats()
    assert s.ops["touch"].keys == {"found": 1, "missing": 1, "error": 0}
    assert s.ops["get"].batches == 1 and s.hits == 1


def test_a_failed_batch_counts_its_keys_as_errors_of_its_kind_then_reconnects(
        make_server, make_client, prefix) -> None:
    s = make_server()
    c = make_client(s.url, key_prefix=prefix, num_connections=1, connect_timeout_s=1,
                    reconnect_backoff_s=0.01, reconnect_backoff_max_s=0.05)
    c.batch_set(["k"], [b"v"])
    s.stop()
    with pytest.raises(ValkeyConnectionError):
        c.batch_get_into(["k", "j", "i"], [bytearray(1)] * 3)
    st = c.stats().ops["get"]
    assert st.batch_errors == {"connection": 1}
    assert st.keys == {"hit": 0, "miss": 0, "error": 3} and st.key_errors == {"connection": 3}
    with pytest.raises(ValkeyConnectionError):       # now a connect is tried, and fails
        c.batch_exists(["k"])
    assert c.stats().connect_failures == 1
    assert c.stats().ops["exists"].batch_errors == {"connection": 1}
    s.start()
    # the back-off may refuse the first tries
    assert retry(lambda: c.batch_set(["k"], [b"v"]), ValkeyConnectionError, 10, 0.02) == [True]
    snap = c.stats()
    assert (snap.connects, snap.reconnects, snap.connect_failures) == (2, 1, 1)


def test_a_checksum_failure_counts_as_its_own_kind(server, prefix, make_client) -> None:
    plain = make_client(server.url, key_prefix=prefix)
    checked = make_client(server.url, key_prefix=prefix, checksum="xxh3")
    plain.batch_set(["unsealed"], [b"v" * 64])               # no checksum trailer
    assert checked.batch_get_into(["unsealed"], [bytearray(128)]) == [None]
    assert checked.stats().ops["get"].key_errors == {"CHECKSUM": 1}


def test_a_bug_in_counting_never_leaves_a_future_unresolved(client, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise ZeroDivisionError

    monkeypatch.setattr(ClientStats, "record_batch", broken)
    assert client.batch_set(["k"], [b"v"]) == [True]
    assert "recording batch stats failed" in caplog.text


def test_server_facts_count_keys_under_the_prefix_exactly(server, prefix, make_client) -> None:
    # Glob characters in the prefix are literal: "p*" must not count "pX" keys.
    star = make_client(server.url, key_prefix=prefix + "p*[")
    other = make_client(server.url, key_prefix=prefix + "pX[")
    star.batch_set([f"k{i}" for i in range(25)], [b"v"] * 25)
    other.batch_set([f"k{i}" for i in range(7)], [b"v"] * 7)
    facts = server_stats(star)
    assert (facts.keys_under_prefix, facts.scan_truncated) == (25, False)
    assert facts.key_prefix == prefix + "p*["
    [node] = facts.nodes
    assert node.endpoint == f"{server.host}:{server.port}" and node.role == "master"
    assert node.used_memory > 0 and node.connected_clients >= 2 and node.keys >= 32
    assert node.maxmemory_policy == "noeviction" and node.version[0].isdigit()
    assert facts.total("used_memory") == node.used_memory
    assert "keys under prefix" in str(facts) and "25" in str(facts)


def test_scan_bound_is_reported_when_it_stops_the_count(make_server, make_client) -> None:
    s = make_server(config={"maxmemory": "64mb", "maxmemory-policy": "allkeys-lru"})
    c = make_client(s.url, key_prefix="kv:")
    c.batch_set([str(i) for i in range(3000)], [b"v"] * 3000)
    bounded = server_stats(c, scan_limit=100)
    assert bounded.scan_truncated and 0 < bounded.keys_under_prefix < 3000
    assert "SCAN stopped at its bound of 100 keys" in str(bounded)
    assert server_stats(c, scan_limit=5000).keys_under_prefix == 3000
    everything = server_stats(make_client(s.url))           # no prefix: INFO's count
    assert (everything.keys_under_prefix, everything.scan_truncated) == (3000, False)
    [node] = everything.nodes
    assert node.maxmemory == 64 << 20 and node.maxmemory_policy == "allkeys-lru"


def test_prometheus_text_parses_and_carries_the_counters(client) -> None:
    known_batches(client)
    text = prom.render(client)
    names = {f.name for f in parser.text_string_to_metric_families(text)}
    assert names >= FAMILIES
    got = samples(text)
    ep = client.config.endpoint

    def value(name, **labels):
        return got[(name, frozenset({"endpoint": ep, **labels}.items()))]

    assert value("lmcache_valkey_keys_total", op="get", result="hit") == 2
    assert value("lmcache_valkey_keys_total", op="get", result="error") == 2
    assert value("lmcache_valkey_key_errors_total", op="get", kind="WRONGTYPE") == 1
    assert value("lmcache_valkey_received_bytes_total") == 110
    assert value("lmcache_valkey_sent_bytes_total") == 1110
    for op in ("get", "set", "exists", "delete"):
        assert value("lmcache_valkey_batches_total", op=op) == 1
        assert value("lmcache_valkey_batch_duration_seconds_count", op=op) == 1
        assert value("lmcache_valkey_batch_duration_seconds_bucket", op=op, le="+Inf") == 1
    assert value("lmcache_valkey_prefix_keys", prefix=client.config.key_prefix.decode()) == 3
    assert value("lmcache_valkey_server_up") == 1
    # Leaving parts out.
    assert "lmcache_valkey_server_up" not in prom.render(client, server=False)
    assert "lmcache_valkey_batches_total" not in prom.render(client, client_stats=False)


def test_http_endpoint_serves_the_metrics(client) -> None:
    known_batches(client)
    httpd = prom.serve(0, client)
    try:
        url = f"http://127.0.0.1:{httpd.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert {f.name for f in parser.text_string_to_metric_families(text)} >= FAMILIES


def test_server_down_is_a_gauge_not_a_failed_scrape(make_server, make_client) -> None:
    s = make_server()
    c = make_client(s.url, connect_timeout_s=1)
    c.batch_set(["k"], [b"v"])
    s.stop()
    labels = frozenset({"endpoint": c.config.endpoint}.items())
    assert samples(prom.render(c))[("lmcache_valkey_server_up", labels)] == 0


def test_cli_prints_server_facts_in_every_format(server, prefix, make_client, capsys) -> None:
    make_client(server.url, key_prefix=prefix).batch_set(["a", "b"], [b"1", b"2"])
    args = ["stats", "--url", server.url, "--key-prefix", prefix]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert f"keys under prefix '{prefix}': 2" in out and "used memory" in out
    assert cli_main([*args, "--format", "json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["keys_under_prefix"] == 2 and facts["nodes"][0]["used_memory"] > 0
    assert cli_main([*args, "--format", "prometheus"]) == 0
    got = samples(capsys.readouterr().out)
    labels = frozenset({"endpoint": f"{server.host}:{server.port}", "prefix": prefix}.items())
    assert got[("lmcache_valkey_prefix_keys", labels)] == 2


def test_cli_without_a_server_says_so(monkeypatch, capsys) -> None:
    monkeypatch.delenv("VALKEY_HOST", raising=False)
    assert cli_main(["stats"]) == 1
    assert "no server to ask: give --url or set VALKEY_HOST" in capsys.readouterr().err


def test_cli_serve_exposes_the_metrics_until_signalled(server, capsys) -> None:
    import signal

    rc: list[int] = []
    t = threading.Thread(target=lambda: rc.append(
        cli_main(["stats", "--url", server.url, "--serve", "0"])))
    t.start()
    deadline = time.monotonic() + 20
    out = ""
    while "/metrics" not in out:
        assert time.monotonic() < deadline and t.is_alive()
        time.sleep(0.05)
        out += capsys.readouterr().out
    url = out.split("on ", 1)[1].split(";")[0]
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    assert "lmcache_valkey_server_used_memory_bytes" in text
    signal.pthread_kill(t.ident, signal.SIGTERM)  # blocked in that thread: sigwait takes it
    t.join(10)
    assert rc == [0]


def test_no_credentials_in_stats_metrics_or_cli_output(make_server, make_client, capsys):
    user, password = "st4ts-us3r", "Pw-n0t-F0r-Eyes"
    s = make_server(users=["default off", f"{user} on >{password} ~kv:* +@all"])
    url = f"valkey://{user}:{password}@{s.host}:{s.port}"
    c = make_client(url, key_prefix="kv:")
    outside = make_client(url, key_prefix="nope:")
    c.batch_set(["a"], [b"1"])
    assert outside.batch_set(["a"], [b"1"]).errors[0].code == "NOPERM"
    assert outside.stats().ops["set"].key_errors == {"NOPERM": 1}
    texts = [str(c.stats()), repr(c.stats()), json.dumps(c.stats().to_dict()),
             str(server_stats(c)), prom.render(c, outside)]
    for fmt in ("text", "json", "prometheus"):
        assert cli_main(["stats", "--url", url, "--key-prefix", "kv:", "--format", fmt]) == 0
        captured = capsys.readouterr()
        texts += [captured.out, captured.err]
    assert "keys under prefix 'kv:': 1" in texts[-6]
    for text in texts:
        assert password not in text and user not in text


def test_cluster_stats_sum_the_nodes(cluster, make_cluster_client, prefix) -> None:
    c = make_cluster_client(cluster.url, key_prefix=prefix)
    keys = [f"k{i}" for i in range(30)]
    assert c.batch_set(keys, [b"v" * 10] * 30) == [True] * 30
    assert c.batch_get_into(keys + ["nope"], [bytearray(10)] * 31) == [10] * 30 + [None]
    s = c.stats()
    assert (s.hits, s.misses, s.bytes_in, s.bytes_out) == (30, 1, 300, 300)
    assert len(s.nodes) == 3 and sum(n.hits for n in s.nodes.values()) == 30
    assert all(n.hits > 0 for n in s.nodes.values())            # the keys are spread
    assert s.ops["get"].batches == sum(n.ops["get"].batches for n in s.nodes.values()) >= 3
    assert s.cluster["topology_refreshes"] >= 1 and s.cluster["moved"] == 0
    facts = server_stats(c)
    assert facts.keys_under_prefix == 30 and len(facts.nodes) == 3
    got = samples(prom.render(c))
    per_node = [v for (name, labels), v in got.items()
                if name == "lmcache_valkey_keys_total" and ("result", "hit") in labels]
    assert sorted(per_node) == sorted(n.hits for n in s.nodes.values())
    assert got[("lmcache_valkey_cluster_redirects_total", frozenset({("kind", "moved")}))] == 0


def test_lmcache_l2_adapter_status_carries_the_client_figures(server, prefix) -> None:
    pytest.importorskip("lmcache")
    from lmcache_valkey.lmcache import ValkeyL2Adapter, ValkeyL2AdapterConfig

    adapter = ValkeyL2Adapter(ValkeyL2AdapterConfig.from_dict(
        {"url": server.url, "key_prefix": prefix}))
    try:
        adapter._client.batch_get_into(["absent"], [bytearray(1)])  # its own client's traffic
        status = adapter.report_status()
    finally:
        adapter.close()
    assert status["client"]["misses"] == 1 and status["client"]["hits"] == 0
    assert status["client"] == adapter._client.stats().summary()
