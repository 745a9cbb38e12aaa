"""One Valkey shared by several consumers (vLLM's KV cache under ``vllm:kv:``,
embeddings under ``emb:``, sessions under ``session:``, Ray under ``ray:``):
how much the KV prefix holds (``lmcache-valkey stats --key-prefix``), and
removing it alone (``lmcache-valkey delete-prefix``), against real servers.

The other consumers' keys are checked byte for byte (``DUMP``) and TTL for
TTL before and after; the server's own ``INFO commandstats`` shows which
commands were sent (UNLINK in bounded batches, never FLUSHALL/FLUSHDB/DEL).
"""

from __future__ import annotations

import pytest
from shared_keyspace import other_consumers, snapshot

from lmcache_valkey.client.prefix_delete import delete_prefix
from lmcache_valkey.observability.server_stats import server_stats
from lmcache_valkey.tools.cli import main as cli_main

valkey = pytest.importorskip("valkey")

KV = "vllm:kv:"
N_KV = 1234


def command_calls(r) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(v["calls"])
            for name, v in r.info("commandstats").items()}


@pytest.fixture
def shared(make_server, make_client):
    """A dedicated server holding N_KV blocks under vllm:kv: (TTL 3600 s,
    16 KiB each) beside the other consumers' keys."""
    s = make_server()
    r = valkey.Valkey(host=s.host, port=s.port)
    other_consumers(r)
    kv = make_client(s.url, key_prefix=KV, ttl_s=3600)
    names = [f"ns:0.0:{i:08x}" for i in range(N_KV)]
    assert all(kv.batch_set(names, [bytes([i % 251]) * 16384 for i in range(N_KV)]))
    r.persist(KV + names[0])   # one block without a TTL (e.g. written with ttl_s=0)
    yield s, r
    r.close()


def test_stats_estimate_the_prefix_memory_and_ttl_spread(shared, make_client, capsys) -> None:
    s, r = shared
    c = make_client(s.url, key_prefix=KV)
    exact = sum(r.memory_usage(k) for k in r.scan_iter(match=KV + "*", count=1000))

    everything = server_stats(c, memory_samples=5000).prefix_usage
    assert everything.sampled == N_KV and everything.memory_estimate == exact
    assert everything.without_ttl == 1
    assert 3500 < everything.ttl_min_s <= everything.ttl_median_s <= everything.ttl_max_s <= 3600

    facts = server_stats(c, memory_samples=50)               # what the CLI does by default
    usage = facts.prefix_usage
    assert facts.keys_under_prefix == N_KV and usage.sampled == 50
    # Blocks of one size: the sampled mean is every block's size to a few bytes.
    assert usage.memory_estimate == pytest.approx(exact, rel=0.01)
    assert usage.memory_estimate < facts.total("used_memory")  # the others' keys are not in it
    assert "~" in str(facts) and "estimate: MEMORY USAGE of 50 sampled keys" in str(facts)

    assert cli_main(["stats", "--url", s.url, "--key-prefix", KV, "--memory-samples", "20"]) == 0
    out = capsys.readouterr().out
    assert f"keys under prefix '{KV}': {N_KV}" in out
    assert "memory under prefix: ~" in out and "TTL left (sample): min" in out
    assert cli_main(["stats", "--url", s.url, "--key-prefix", KV, "--format", "prometheus"]) == 0
    prom = capsys.readouterr().out
    assert f'lmcache_valkey_prefix_memory_bytes_estimate{{endpoint="{s.host}:{s.port}",' \
           f'prefix="{KV}"}}' in prom
    assert 'lmcache_valkey_prefix_ttl_seconds{' in prom and 'quantile="0.5"' in prom


def test_stats_memory_sampling_is_off_without_a_prefix_or_when_asked(shared, make_client):
    s, _ = shared
    assert server_stats(make_client(s.url), memory_samples=100).prefix_usage is None
    assert server_stats(make_client(s.url, key_prefix=KV)).prefix_usage is None
    with pytest.raises(ValueError, match="memory_samples"):
        server_stats(make_client(s.url, key_prefix=KV), memory_samples=-1)


def test_delete_prefix_removes_only_the_kv_cache(shared, make_client) -> None:
    s, r = shared
    others = snapshot(r, KV)
    assert len(others) == 50 + 20 + 2 + 5
    c = make_client(s.url)
    calls_before = command_calls(r)

    dry = delete_prefix(c, KV, batch=100, dry_run=True)
    assert (dry.matched, dry.deleted, dry.batches) == (N_KV, 0, 0)
    assert r.dbsize() == N_KV + len(others)
    assert "unlink" not in command_calls(r)

    progress: list[int] = []
    report = delete_prefix(c, KV, batch=100, progress=progress.append)
    assert (report.matched, report.deleted, report.remaining) == (N_KV, N_KV, 0)
    assert sum(progress) == N_KV and max(progress) <= 100     # bounded batches
    assert snapshot(r, KV) == others                          # theirs: same bytes, same TTLs
    assert r.dbsize() == len(others)
    calls = command_calls(r)
    assert calls["unlink"] == report.batches >= N_KV // 100
    for forbidden in ("flushall", "flushdb", "del"):
        assert calls.get(forbidden, 0) == calls_before.get(forbidden, 0)


def test_delete_prefix_cli_asks_first_and_reports(shared, capsys) -> None:
    s, r = shared
    others = snapshot(r, KV)
    args = ["delete-prefix", "--url", s.url, "--key-prefix", KV, "--quiet"]

    assert cli_main(args) == 1                                # not a terminal, no --yes
    assert f"{N_KV} keys under" in capsys.readouterr().err and r.dbsize() > len(others)
    assert cli_main([*args, "--dry-run"]) == 0
    assert f"dry run: {N_KV} keys under prefix '{KV}' would be deleted" in capsys.readouterr().out
    assert cli_main([*args, "--yes", "--batch", "300"]) == 0
    out = capsys.readouterr().out
    assert f"deleted {N_KV} of {N_KV} keys under prefix '{KV}'" in out
    assert "0 left under the prefix" in out
    assert snapshot(r, KV) == others


@pytest.mark.parametrize("prefix", ["", b""])
def test_an_empty_prefix_is_refused(server, make_client, prefix, capsys) -> None:
    with pytest.raises(ValueError, match="empty prefix"):
        delete_prefix(make_client(server.url), prefix)
    assert cli_main(["delete-prefix", "--url", server.url, "--key-prefix", "", "--yes"]) == 1
    assert "refusing to delete under an empty prefix" in capsys.readouterr().err


def test_delete_prefix_on_a_cluster(cluster, make_cluster_client, prefix) -> None:
    kv = make_cluster_client(cluster.url, key_prefix=prefix + KV)
    emb = make_cluster_client(cluster.url, key_prefix=prefix + "emb:")
    keys = [f"b{i}" for i in range(300)]
    assert all(kv.batch_set(keys, [b"kv"] * 300)) and all(emb.batch_set(keys, [b"e"] * 300))
    report = delete_prefix(make_cluster_client(cluster.url), prefix + KV, batch=64)
    assert (report.matched, report.deleted, report.remaining) == (300, 300, 0)
    assert kv.batch_exists(keys) == [False] * 300
    assert emb.batch_exists(keys) == [True] * 300


def test_volatile_lru_evicts_kv_blocks_and_never_the_keys_without_ttl(make_server,
                                                                     make_client) -> None:
    """What the README recommends for a shared server whose other consumers
    keep keys without a TTL: ``volatile-lru`` evicts only keys with one, and
    every KV block has one (``ttl_s``). Over maxmemory, blocks make room for
    new ones; the others' keys all stay."""
    from server_pressure import _SYNC_FREE, MAXMEMORY

    s = make_server(config={"maxmemory": MAXMEMORY, "maxmemory-policy": "volatile-lru",
                            "maxmemory-samples": "64", **_SYNC_FREE})
    r = valkey.Valkey(host=s.host, port=s.port)
    other_consumers(r)
    theirs = {k: v for k, v in snapshot(r, KV).items() if not v[1]}  # those without TTL
    kv = make_client(s.url, key_prefix=KV, ttl_s=3600)
    block = bytes(range(256)) * 256                                   # 64 KiB
    for i in range(8):                                                # ~4x what fits
        names = [f"g{i}:{j}" for j in range(16)]
        assert kv.batch_set(names, [block] * 16) == [True] * 16       # room made for each
    assert int(r.info("stats")["evicted_keys"]) > 0
    assert {k: v for k, v in snapshot(r, KV).items() if k in theirs} == theirs
    # Which blocks went is LRU's choice (its clock ticks once a second: these
    # are all equally young); each block is either gone or exact.
    names = [f"g{i}:{j}" for i in range(8) for j in range(16)]
    dests = [bytearray(len(block)) for _ in names]
    got = kv.batch_get_into(names, dests)
    assert 0 < sum(n is not None for n in got) < len(names)
    assert all(d == block for n, d in zip(got, dests, strict=True) if n is not None)
    r.close()
