"""Valkey Cluster support against real 3-primary clusters on loopback.

No mocks: slots are checked against the servers' own CLUSTER KEYSLOT,
migrations are done with the real SETSLOT/MIGRATE commands, and a failed
primary is a SIGKILLed process.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter

import numpy as np
import pytest
from checks import retry

from lmcache_valkey import (
    CompletionQueue,
    ConfigError,
    ValkeyClient,
    ValkeyClusterClient,
    ValkeyConnectionError,
    open_client,
)
from lmcache_valkey.cluster import crc16, hash_tag, key_slot

pytestmark = pytest.mark.engine

MiB = 1 << 20


def _owner(cluster, key: bytes):
    """The server that owns `key`'s slot, by asking the cluster itself."""
    slot = int(cluster.admin(cluster.masters[0], "CLUSTER", "KEYSLOT", key))
    for shard in cluster.admin(cluster.masters[0], "CLUSTER", "SHARDS"):
        fields = dict(zip(shard[::2], shard[1::2], strict=True))
        ranges = fields[b"slots"]
        if any(ranges[i] <= slot <= ranges[i + 1] for i in range(0, len(ranges), 2)):
            node = dict(zip(fields[b"nodes"][0][::2], fields[b"nodes"][0][1::2], strict=True))
            return next(s for s in cluster.masters if s.port == node[b"port"])
    raise AssertionError(f"slot {slot} unowned")


# -- slots ----------------------------------------------------------------------


def test_crc16_xmodem_vector_and_hash_tags():
    assert crc16(b"123456789") == 0x31C3
    assert hash_tag(b"{user1000}.following") == b"user1000"
    assert hash_tag(b"foo{}{bar}") == b"foo{}{bar}"  # empty first tag: whole key
    assert hash_tag(b"foo{{bar}}zap") == b"{bar"
    assert hash_tag(b"foo{bar}{zap}") == b"bar"
    assert hash_tag(b"}{") == b"}{"
    assert key_slot(b"{a}x") == key_slot(b"{a}y") == key_slot(b"a")


def test_key_slot_matches_the_server(cluster):
    rng = random.Random(7)
    keys = [b"", b"{", b"}", b"{}", b"{}{}", b"}{a}", b"{a", b"a{b}c{d}", b"lmcache:{x}@1"]
    keys += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))) for _ in range(150)]
    keys += [b"p:" + b"{" + str(rng.random()).encode() + b"}" + os.urandom(5)
             for _ in range(50)]
    with ValkeyClient(cluster.masters[0].url, num_connections=1) as admin:
        for k in keys:
            assert key_slot(k) == admin.execute("CLUSTER", "KEYSLOT", k), k


# -- data path --------------------------------------------------------------------


def test_values_across_all_nodes_round_trip_exactly(cluster, make_cluster_client, prefix):
    c = make_cluster_client(cluster.url, key_prefix=prefix, num_connections=2)
    assert isinstance(c, ValkeyClusterClient)
    rng = np.random.default_rng(3)
    sizes = [0, 1, MiB + 3, 4096, 100_000] + [int(rng.integers(0, 70_000)) for _ in range(295)]
    keys = [f"k{i}" for i in range(len(sizes))]
    values = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    assert c.batch_set(keys, values) == [True] * len(keys)

    spread = Counter(c.node_of(k) for k in keys)
    assert len(spread) == 3 and min(spread.values()) > 50  # every primary got keys

    # bytearrays, numpy arrays and scatter lists (two segments) as destinations
    dests: list = []
    for i, n in enumerate(sizes):
        if i % 3 == 0:
            dests.append(bytearray(n))
        elif i % 3 == 1:
            dests.append(np.zeros(n, np.uint8))
        else:
            dests.append([bytearray(n // 2), bytearray(n - n // 2)])
    got = c.batch_get_into(keys, dests)
    assert list(got) == sizes and not got.errors
    for d, v in zip(dests, values, strict=True):
        data = b"".join(bytes(s) for s in d) if isinstance(d, list) else bytes(d)
        assert data == v

    # what the client wrote is on the owning primary, under the prefix
    for k in ("k0", "k2", "k7"):
        owner = _owner(cluster, (prefix + k).encode())
        assert cluster.admin(owner, "STRLEN", prefix + k) == sizes[int(k[1:])]
        assert c.node_of(k) == f"{owner.host}:{owner.port}"


def test_exists_delete_ttl_and_misses(cluster, make_cluster_client, prefix):
    c = make_cluster_client(cluster.url, key_prefix=prefix, ttl_s=100)
    keys = [f"e{i}" for i in range(60)]
    assert all(c.batch_set(keys, [b"v%d" % i for i in range(60)]))
    assert list(c.batch_exists(keys + ["missing"])) == [True] * 60 + [False]
    assert list(c.batch_exists(keys[:5], refresh_ttl=True)) == [True] * 5
    for k in keys[:6]:
        owner = _owner(cluster, (prefix + k).encode())
        assert 0 < cluster.admin(owner, "PTTL", prefix + k) <= 100_000
    assert list(c.batch_delete(keys[:30] + ["missing"])) == [1] * 30 + [0]
    assert list(c.batch_exists(keys)) == [False] * 30 + [True] * 30
    bufs = [bytearray(8) for _ in range(3)]
    assert list(c.batch_get_into([keys[0], keys[40], "missing"], bufs)) == [None, 3, None]
    assert bytes(bufs[1][:3]) == b"v40"
    assert c.batch_get_into([], []) == []


def test_too_large_and_error_replies_are_per_key(cluster, make_cluster_client, prefix):
    c = make_cluster_client(cluster.url, key_prefix=prefix)
    assert all(c.batch_set(["big", "small"], [b"x" * 100, b"y"]))
    cluster.admin(_owner(cluster, (prefix + "h").encode()), "HSET", prefix + "h", "f", "v")
    res = c.batch_get_into(["big", "small", "h"], [bytearray(10), bytearray(1), bytearray(4)])
    assert list(res) == [None, 1, None]
    assert res.too_large == {0: 100}
    assert res.errors[2].code == "WRONGTYPE"


def test_submit_with_completion_queue_and_asyncio(cluster, make_cluster_client, prefix):
    c = make_cluster_client(cluster.url, key_prefix=prefix)
    keys = [f"a{i}" for i in range(40)]
    values = [os.urandom(1000 + i) for i in range(40)]
    q = CompletionQueue()
    fut = c.submit_batch_set(keys, values, completion=q, token="set")
    assert fut.result(10) == [True] * 40
    assert [t for _, t in q.drain()] == ["set"]
    q.close()

    async def main():
        dests = [bytearray(len(v)) for v in values]
        got, present = await asyncio.gather(c.abatch_get_into(keys, dests),
                                            c.abatch_exists(keys + ["nope"]))
        removed = await c.abatch_delete(keys[:4])
        return dests, got, present, removed

    dests, got, present, removed = asyncio.run(main())
    assert list(got) == [len(v) for v in values]
    assert [bytes(d) for d in dests] == values
    assert list(present) == [True] * 40 + [False]
    assert list(removed) == [1] * 4


def test_control_commands(cluster, make_cluster_client, prefix):
    with open_client(cluster.url, key_prefix=prefix) as c:
        assert c.ping()
        c.connect()
        assert c.execute("PING") == "PONG"
        sizes = c.execute_on_all("DBSIZE")
        assert sorted(sizes) == sorted(f"127.0.0.1:{s.port}" for s in cluster.masters)
        assert "primaries=3" in repr(c)


# -- configuration and seeds ------------------------------------------------------


def test_config_rules(cluster):
    with pytest.raises(ConfigError, match="only database 0"):
        open_client(cluster.url + "/2")
    with pytest.raises(ConfigError, match="open_client"):
        ValkeyClient(cluster.url)
    with pytest.raises(ConfigError, match="not a cluster"):
        ValkeyClusterClient(cluster.masters[0].url)
    # cluster=true on an ordinary URL; one reachable seed among dead ones is enough
    dead = "127.0.0.1:1"
    good = f"127.0.0.1:{cluster.masters[1].port}"
    for url in (f"{cluster.masters[0].url}?cluster=true",
                f"valkey+cluster://{dead},{good}", f"redis+cluster://{good}"):
        with open_client(url, key_prefix="cfg:") as c:
            assert isinstance(c, ValkeyClusterClient)
            assert c.batch_set(["x", "y", "z"], [b"1", b"2", b"3"]) == [True] * 3


def test_unreachable_seeds_give_one_clear_error():
    with open_client("valkey+cluster://127.0.0.1:1,127.0.0.1:2", connect_timeout_s=1) as c:
        with pytest.raises(ValkeyConnectionError) as info:
            c.batch_get_into(["a", "b"], [bytearray(1), bytearray(1)])
        assert "127.0.0.1:1" in str(info.value) and "127.0.0.1:2" in str(info.value)
        assert list(info.value.partial) == [None, None]
        with pytest.raises(ValkeyConnectionError):
            c.connect()


# -- migration: MOVED and ASK -------------------------------------------------------


def _start_migration(cl, full_keys: list[str]):
    """Start moving the slot of `full_keys` (one slot, prefixed names) from
    its owner to another primary, and move those keys over already: they
    answer -ASK from the source. Returns (slot, source, target)."""
    slot = key_slot(full_keys[0].encode())
    src = _owner(cl, full_keys[0].encode())
    dst = next(s for s in cl.masters if s is not src)
    cl.admin(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", cl.node_id(src))
    cl.admin(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", cl.node_id(dst))
    assert cl.admin(src, "MIGRATE", dst.host, dst.port, "", 0, 5000,
                    "KEYS", *full_keys) == "OK"
    return slot, src, dst


def test_slot_migration_is_followed_with_ask_then_moved(fresh_cluster, make_cluster_client):
    cl = fresh_cluster
    prefix = "mig:"
    c = make_cluster_client(cl.url, key_prefix=prefix, num_connections=2)
    keys = [f"{{tag}}:{i}" for i in range(10)]  # one slot
    values = [os.urandom(5000 + i) for i in range(10)]
    assert all(c.batch_set(keys, values))
    other = [f"o{i}" for i in range(30)]  # elsewhere, in the same batches
    other_values = [os.urandom(50) for _ in other]
    assert all(c.batch_set(other, other_values))

    slot, src, dst = _start_migration(cl, [prefix + k for k in keys[:5]])
    dst_id = cl.node_id(dst)

    # Mid-migration: half the keys answer -ASK from the source.
    all_keys = keys + other
    dests = [bytearray(len(v)) for v in values + other_values]
    got = c.batch_get_into(all_keys, dests)
    assert list(got) == [len(v) for v in values + other_values] and not got.errors
    assert [bytes(d) for d in dests] == values + other_values
    assert c.asks >= 5
    assert list(c.batch_exists(all_keys)) == [True] * 40
    new_values = [os.urandom(300) for _ in keys]
    assert all(c.batch_set(keys, new_values))  # migrated ones via ASKING + SET

    # Finish: move the rest and hand the slot over everywhere.
    rest = [prefix + k for k in keys[5:]]
    assert cl.admin(src, "MIGRATE", dst.host, dst.port, "", 0, 5000, "KEYS", *rest) == "OK"
    for s in [dst, src] + [m for m in cl.masters if m not in (src, dst)]:
        cl.admin(s, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    assert cl.admin(dst, "GET", prefix + keys[0]) == new_values[0]  # written via ASK
    moves_before = c.moves
    dests = [bytearray(len(v)) for v in new_values]
    got = c.batch_get_into(keys, dests)
    assert list(got) == [300] * 10 and not got.errors
    assert [bytes(d) for d in dests] == new_values
    assert c.moves > moves_before
    assert c.node_of(keys[0]) == f"{dst.host}:{dst.port}"
    assert list(c.batch_delete(keys)) == [1] * 10
    assert cl.admin(dst, "EXISTS", prefix + keys[0]) == 0


def test_ask_path_seals_and_checks_values_as_the_fast_path_does(fresh_cluster,
                                                                make_cluster_client):
    """A key followed to its migration target is read and written by the
    same checksum path as any batch: trailers sealed on SET, checked on GET
    (a value corrupted on the server is a CHECKSUM miss there too)."""
    cl = fresh_cluster
    prefix = "askck:"
    c = make_cluster_client(cl.url, key_prefix=prefix, checksum="xxh3")
    keys = [f"{{ck}}:{i}" for i in range(4)]
    values = [os.urandom(3000 + i) for i in range(4)]
    assert all(c.batch_set(keys, values))
    src = _owner(cl, (prefix + keys[0]).encode())
    assert cl.admin(src, "SETRANGE", prefix + keys[2], 10, b"XX") == len(values[2]) + 12
    _start_migration(cl, [prefix + k for k in keys[:3]])  # keys[3] stays on the source

    dests = [bytearray(len(v)) for v in values]
    got = c.batch_get_into(keys, dests)
    assert c.asks >= 3
    assert got[:2] == [len(v) for v in values[:2]] and got[3] == len(values[3])
    assert [bytes(d) for d in dests[:2]] == values[:2] and bytes(dests[3]) == values[3]
    assert got[2] is None and got.errors[2].code == "CHECKSUM"
    assert list(got.errors) == [2]

    new_values = [os.urandom(700) for _ in keys]
    assert list(c.batch_set(keys, new_values)) == [True] * 4  # three via ASKING + SET
    dests = [bytearray(1000) for _ in keys]
    got = c.batch_get_into(keys, dests)
    assert list(got) == [700] * 4 and not got.errors
    assert [bytes(d[:700]) for d in dests] == new_values
    assert list(c.batch_exists(keys, refresh_ttl=True)) == [True] * 4
    assert list(c.batch_delete(keys)) == [1] * 4


# -- failures -------------------------------------------------------------------------


def test_killed_primary_fails_only_its_keys_then_recovers(fresh_cluster, make_cluster_client):
    cl = fresh_cluster
    c = make_cluster_client(cl.url, key_prefix="kill:", connect_timeout_s=1,
                            reconnect_backoff_max_s=0.2)
    keys = [f"k{i}" for i in range(90)]
    values = [os.urandom(2000) for _ in keys]
    assert all(c.batch_set(keys, values))
    victim = cl.masters[1]
    victim_addr = f"{victim.host}:{victim.port}"
    on_victim = [c.node_of(k) == victim_addr for k in keys]
    assert 0 < sum(on_victim) < len(keys)
    victim.kill()

    dests = [bytearray(2000) for _ in keys]
    with pytest.raises(ValkeyConnectionError) as info:
        c.batch_get_into(keys, dests)
    assert victim_addr in str(info.value)
    partial = info.value.partial
    for i, dead in enumerate(on_victim):
        if dead:
            assert partial[i] is None
        else:
            assert partial[i] == 2000 and bytes(dests[i]) == values[i]
    with pytest.raises(ValkeyConnectionError) as info:
        c.batch_set(keys, values)
    assert list(info.value.partial) == [not dead for dead in on_victim]
    with pytest.raises(ValkeyConnectionError) as info:
        c.batch_exists(keys)
    assert list(info.value.partial) == [not dead for dead in on_victim]

    victim.start()  # same port and nodes.conf: rejoins with its slots, no data
    cl.wait_ok()
    res = retry(lambda: c.batch_set(keys, values), ValkeyConnectionError, 20, 0.1)
    assert list(res) == [True] * len(keys)
    dests = [bytearray(2000) for _ in keys]
    assert list(c.batch_get_into(keys, dests)) == [2000] * len(keys)
    assert [bytes(d) for d in dests] == values
    assert c.refreshes >= 2


# -- replicas -------------------------------------------------------------------------


def test_reads_from_replicas():
    from lmcache_valkey.testkit.local_cluster import start_local_cluster

    with start_local_cluster(1, replicas=1) as cl:
        replica = cl.replicas[0]
        before = cl.admin(replica, "INFO", "commandstats")
        with open_client(cl.url, key_prefix="r:", read_from_replicas=True) as c:
            keys = [f"r{i}" for i in range(20)]
            values = [os.urandom(100) for _ in keys]
            assert all(c.batch_set(keys, values))
            assert cl.admin(cl.masters[0], "WAIT", 1, 5000) == 1
            # A replica counts once the cluster reports it online (it reads
            # "loading" until it has replicated something).
            deadline = time.monotonic() + 10
            while not c.refresh_topology().replicas[0]:
                assert time.monotonic() < deadline, "replica never reported online"
                time.sleep(0.1)
            dests = [bytearray(100) for _ in keys]
            assert list(c.batch_get_into(keys, dests)) == [100] * 20
            assert [bytes(d) for d in dests] == values
            assert list(c.batch_exists(keys)) == [True] * 20
        after = cl.admin(replica, "INFO", "commandstats")
        assert b"cmdstat_get:" not in before and b"cmdstat_get:calls=20" in after
        assert b"cmdstat_readonly:" in after


# -- integrations ---------------------------------------------------------------------


def test_lmcache_l2_adapter_accepts_a_cluster_url(cluster):
    pytest.importorskip("lmcache")
    torch = pytest.importorskip("torch")
    from lmcache_helpers import Runner, _keys

    from lmcache_valkey.lmcache import ValkeyL2Adapter, ValkeyL2AdapterConfig

    config = ValkeyL2AdapterConfig.from_dict({"url": cluster.url, "key_prefix": "l2c:"})
    adapter = ValkeyL2Adapter(config)
    try:
        assert isinstance(adapter._client, ValkeyClusterClient)

        class Obj:  # a MemoryObj stand-in exposing byte_array, as LMCache's do
            def __init__(self, data: bytearray) -> None:
                self.byte_array = data

            def get_size(self) -> int:
                return len(self.byte_array)

        run = Runner(adapter)
        keys = _keys(12)
        src = [Obj(bytearray(os.urandom(4096))) for _ in keys]
        assert run.store(keys, src).is_successful()
        assert run.lookup(keys) == [True] * 12
        dst = [Obj(bytearray(4096)) for _ in keys]
        assert run.load(keys, dst) == [True] * 12
        assert [bytes(d.byte_array) for d in dst] == [bytes(s.byte_array) for s in src]
        assert torch is not None
        # Listing walks every primary (SCAN per node) and sizes each key on its owner.
        seen, token = {}, None
        for _ in range(100):
            page = adapter.list_l2_keys(page_size=2, cursor=token)
            seen.update({e.key.chunk_hash_hex: e.size_bytes for e in page.entries})
            token = page.next_page_token
            if token is None:
                break
        assert seen == {k.chunk_hash.hex(): 4096 for k in keys}
    finally:
        adapter.close()


def test_vllm_connector_config_accepts_a_cluster_url(cluster):
    pytest.importorskip("vllm")
    from lmcache_valkey.vllm.config import ConnectorConfig

    cfg = ConnectorConfig.from_extra_config({"url": cluster.url, "key_prefix": "vc:"})
    assert cfg.client_config.cluster and len(cfg.client_config.cluster_nodes) == 3
    client = cfg.create_client()
    try:
        assert isinstance(client, ValkeyClusterClient)
        keys = [f"b{i}" for i in range(30)]
        blocks = [os.urandom(1024) for _ in keys]
        assert all(client.batch_set(keys, blocks))
        dests = [bytearray(1024) for _ in keys]
        assert list(client.batch_get_into(keys, dests)) == [1024] * 30
        assert [bytes(d) for d in dests] == blocks
    finally:
        client.close()


def test_bench_runs_on_a_cluster_url(cluster):
    pytest.importorskip("numpy")
    from lmcache_valkey.tools.bench import format_table, run_bench

    report = run_bench(cluster.url, value_sizes=[4096], keys=24, exists_keys=24, rounds=1,
                       warmup=0, num_connections=1, clients=None, show_progress=False)
    assert report["clients"] == ["ours"] and report["verified"]
    spread = report["cluster_spread"]
    assert len(spread) == 3 and sum(v["keys"] for v in spread.values()) == 24
    assert "cluster spread" in format_table(report)
