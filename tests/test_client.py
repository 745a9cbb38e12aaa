"""The client contract against a real Valkey: exact bytes, misses, sizes,
per-key errors, prefixes, TTLs, buffers of every kind, windows, futures and
asyncio.

Every test here runs over each of conftest.CONTRACT_ENDPOINTS: each server
(Valkey 9.1, Valkey 8.1, Redis 7) over TCP, and the unix socket and TLS
(Debian's redis-server 7, tls_fixtures.py) on one server each. `client` and
`raw` are overridden below so that they talk to each endpoint in turn:
`client` through its transport, `raw` (valkey-py) through a plain TCP port
of the same server. TLS-only behaviour (certificates, handshakes, aborts) is
in test_tls.py."""

from __future__ import annotations

import asyncio
import functools
import selectors
import threading

import numpy as np
import pytest
from closing import valkey_py

from lmcache_valkey import BatchResult, CompletionQueue, ConfigError, ProtocolError, ValkeyClient
from lmcache_valkey.errors import ClientClosedError

pytestmark = pytest.mark.engine

MiB = 1 << 20
SIZES = [0, 1, 4096, 4 << 20, (7 << 20) + 3]


@pytest.fixture
def server_kind(endpoint) -> str:
    return endpoint.kind


@pytest.fixture
def client(connect, prefix: str) -> ValkeyClient:
    return connect(key_prefix=prefix)


@pytest.fixture
def raw(endpoint):
    """A second, independent client (valkey-py) on a plain TCP port of the
    endpoint's server, to look at what the client did."""
    yield from valkey_py(endpoint.raw_host, endpoint.raw_port)


def payload(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


@functools.cache
def mib_values() -> tuple[np.ndarray, ...]:
    """64 distinct 1 MiB values, made once (a third of a second) for the
    windowing test's runs over every endpoint; read-only, so none can change."""
    values = tuple(payload(MiB, seed=i) for i in range(64))
    for v in values:
        v.flags.writeable = False
    return values


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_exact_bytes(client: ValkeyClient, size: int) -> None:
    value = payload(size, seed=size)
    assert client.batch_set(["k"], [value]) == [True]
    dest = np.full(size + 16, 0xAB, dtype=np.uint8)  # room to spare: must stay untouched
    assert client.batch_get_into(["k"], [dest]) == [size]
    assert bytes(dest[:size]) == value.tobytes()
    assert (dest[size:] == 0xAB).all()


def test_many_values_in_one_batch_are_each_exact(client: ValkeyClient) -> None:
    values = [payload(s, seed=i) for i, s in enumerate([3, 70_000, 1 << 20, 0, 5 << 20, 12])]
    keys = [f"v{i}" for i in range(len(values))]
    assert client.batch_set(keys, values) == [True] * len(values)
    dests = [np.zeros(v.size, np.uint8) for v in values]
    assert client.batch_get_into(keys, dests) == [v.size for v in values]
    for v, d in zip(values, dests, strict=True):
        assert bytes(d) == v.tobytes()


def test_miss_is_none(client: ValkeyClient) -> None:
    client.batch_set(["present"], [b"x"])
    result = client.batch_get_into(["absent", "present"], [bytearray(4), bytearray(4)])
    assert result == [None, 1]
    assert result.errors == {} and result.too_large == {}


def test_too_small_destination_is_drained_and_connection_stays_usable(client: ValkeyClient) -> None:
    big, small = payload(100_000, 1), payload(10, 2)
    client.batch_set(["big", "small"], [big, small])
    tiny = bytearray(b"\xee" * 99_999)
    after = bytearray(10)
    result = client.batch_get_into(["big", "small"], [tiny, after])
    assert result == [None, 10]
    assert result.too_large == {0: 100_000}
    assert tiny == b"\xee" * 99_999            # nothing written into a buffer that is too small
    assert bytes(after) == small.tobytes()
    assert client.batch_get_into(["big"], [np.zeros(100_000, np.uint8)]) == [100_000]


def test_wrongtype_key_in_the_middle_of_a_batch(client: ValkeyClient, raw, prefix: str) -> None:
    client.batch_set(["a", "c"], [b"AAA", b"CCC"])
    raw.lpush(prefix + "b", "x")
    dests = [bytearray(3) for _ in range(3)]
    result = client.batch_get_into(["a", "b", "c"], dests)
    assert result == [3, None, 3]
    assert result.errors[1].code == "WRONGTYPE"
    assert dests[0] == b"AAA" and dests[2] == b"CCC"


def test_two_thousand_key_batches(client: ValkeyClient) -> None:
    keys = [f"many:{i}" for i in range(2000)]
    values = [i.to_bytes(4, "little") * 64 for i in range(2000)]
    assert all(client.batch_set(keys, values))
    dests = [bytearray(256) for _ in keys]
    assert client.batch_get_into(keys, dests) == [256] * 2000
    assert dests == values
    assert client.batch_exists(keys + ["nope"]) == [True] * 2000 + [False]
    assert client.batch_delete(keys[:1000]) == [1] * 1000
    assert client.batch_exists(keys[998:1002]) == [False, False, True, True]


@pytest.mark.parametrize("max_inflight_bytes", [64 * MiB, 3 * MiB])
def test_64_values_of_1mib_are_windowed(connect, prefix, max_inflight_bytes: int) -> None:
    # 3 MiB in flight: windows of one 1 MiB value, 64 of them.
    c = connect(key_prefix=prefix, num_connections=1, max_inflight_bytes=max_inflight_bytes)
    keys = [f"w{i}" for i in range(64)]
    values = mib_values()
    assert c.batch_set(keys, values) == [True] * 64
    dests = [np.zeros(MiB, np.uint8) for _ in keys]
    assert c.batch_get_into(keys, dests) == [MiB] * 64
    for v, d in zip(values, dests, strict=True):
        assert np.array_equal(v, d)


def test_max_bulk_len_refusal_is_a_protocol_error(connect, prefix) -> None:
    c = connect(key_prefix=prefix, max_bulk_len=1000)
    c.batch_set(["big"], [bytes(5000)])
    with pytest.raises(ProtocolError, match="max_bulk_len"):
        c.batch_get_into(["big"], [bytearray(5000)])
    assert c.batch_exists(["big"]) == [True]  # a fresh connection replaces the failed one


def test_scatter_list_destinations_and_sources(client: ValkeyClient) -> None:
    value = payload(3 * 4096 + 17, 5)
    segments = [value[:4096], value[4096:3 * 4096], value[3 * 4096:]]
    assert client.batch_set(["s"], [segments]) == [True]
    dest = [bytearray(100), np.zeros(20_000, np.uint8)]
    assert client.batch_get_into(["s"], [dest]) == [value.size]
    assert bytes(dest[0]) + dest[1][: value.size - 100].tobytes() == value.tobytes()


def test_scatter_list_values_are_sent_in_order(client: ValkeyClient) -> None:
    parts = [payload(n, seed=n) for n in (5, 0, 40_000, 3 * MiB)]
    assert client.batch_set(["s"], [parts]) == [True]
    dest = bytearray(sum(p.size for p in parts))
    assert client.batch_get_into(["s"], [dest]) == [len(dest)]
    assert dest == b"".join(p.tobytes() for p in parts)


@pytest.mark.parametrize("kind", ["bytearray", "memoryview", "numpy"])
def test_destination_kinds(client: ValkeyClient, kind: str) -> None:
    client.batch_set(["k"], [b"hello world"])
    make = {"bytearray": lambda: bytearray(11),
            "memoryview": lambda: memoryview(bytearray(11)),
            "numpy": lambda: np.zeros(11, np.uint8)}[kind]
    dest = make()
    assert client.batch_get_into(["k"], [dest]) == [11]
    assert bytes(dest) == b"hello world"


def test_destinations_of_every_kind_and_misses(client: ValkeyClient) -> None:
    value = payload(300_000, 7)
    assert client.batch_set(["v", "w"], [value, b"hello"]) == [True, True]
    as_bytearray = bytearray(300_000)
    as_numpy = np.zeros((300, 1000), np.uint8)
    as_floats = np.zeros(75_000, np.float32)  # any dtype: bytes are bytes
    segs = [bytearray(1000), np.zeros(0, np.uint8), np.zeros(99_000, np.uint8),
            memoryview(bytearray(250_000))]
    result = client.batch_get_into(
        ["v", "v", "v", "v", "absent", "w"],
        [as_bytearray, as_numpy, as_floats, segs, bytearray(4), bytearray(5)])
    assert result == [300_000] * 4 + [None, 5]
    assert result.errors == {} and result.too_large == {}
    assert as_bytearray == value.tobytes()
    assert as_numpy.tobytes() == value.tobytes()
    assert as_floats.tobytes() == value.tobytes()
    scattered = b"".join(bytes(s) for s in segs)
    assert scattered[:300_000] == value.tobytes() and not any(scattered[300_000:])


def test_read_only_destination_is_refused(client: ValkeyClient) -> None:
    client.batch_set(["k"], [b"x"])
    with pytest.raises(TypeError, match="writable"):
        client.batch_get_into(["k"], [b"immutable"])


def test_torch_tensors_pinned_or_not(client: ValkeyClient) -> None:
    torch = pytest.importorskip("torch")
    src = torch.randn(1024, 64, dtype=torch.bfloat16)
    assert client.batch_set(["t"], [src]) == [True]
    for dest in (torch.empty_like(src), torch.empty(1024, 64, dtype=torch.bfloat16)):
        assert client.batch_get_into(["t"], [dest]) == [src.numel() * 2]
        assert torch.equal(dest, src)
    blocks = [torch.empty(512, 64, dtype=torch.bfloat16) for _ in range(2)]  # paged KV blocks
    assert client.batch_get_into(["t"], [blocks]) == [src.numel() * 2]
    assert torch.equal(torch.cat(blocks), src)


def test_non_contiguous_tensor_is_refused(client: ValkeyClient) -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(ConfigError, match="contiguous"):
        client.batch_get_into(["t"], [torch.empty(8, 8).t()])


def test_prefix_and_ttl_are_visible_to_another_client(connect, raw, prefix) -> None:
    c = connect(key_prefix=prefix, ttl_s=120)
    c.batch_set(["a", b"b"], [b"1", b"2"])
    assert raw.get(prefix + "a") == b"1" and raw.get(prefix + "b") == b"2"
    assert 110 <= raw.ttl(prefix + "a") <= 120
    assert 110_000 <= raw.pttl(prefix + "b") <= 120_000
    assert raw.get("a") is None                      # nothing outside the prefix


def test_no_ttl_means_no_expiry(client: ValkeyClient, raw, prefix: str) -> None:
    client.batch_set(["forever"], [b"x"])
    assert raw.ttl(prefix + "forever") == -1


def test_fractional_ttl_uses_milliseconds(connect, raw, prefix) -> None:
    c = connect(key_prefix=prefix, ttl_s=1.5)
    c.batch_set(["k"], [b"x"])
    assert 1000 < raw.pttl(prefix + "k") <= 1500


def test_exists_with_refresh_ttl_renews_only_present_keys(connect, raw, prefix) -> None:
    c = connect(key_prefix=prefix, ttl_s=100)
    c.batch_set(["a", "b"], [b"1", b"2"])
    raw.pexpire(prefix + "a", 5_000)
    raw.pexpire(prefix + "b", 5_000)
    assert c.batch_exists(["a", "missing"], refresh_ttl=True) == [True, False]
    assert 90_000 <= raw.pttl(prefix + "a") <= 100_000   # renewed
    assert raw.pttl(prefix + "b") <= 5_000               # not asked: untouched
    assert raw.exists(prefix + "missing") == 0           # a miss creates nothing
    assert raw.get(prefix + "a") == b"1"


def test_refresh_ttl_without_a_ttl_is_a_plain_exists(client: ValkeyClient, raw,
                                                     prefix: str) -> None:
    client.batch_set(["k"], [b"x"])
    assert client.batch_exists(["k", "nope"], refresh_ttl=True) == [True, False]
    assert raw.ttl(prefix + "k") == -1


def test_set_with_ttl_exists_touch_delete(connect, prefix) -> None:
    c = connect(key_prefix=prefix, ttl_s=100)
    assert c.batch_set(["a", "b"], [b"1", b"2"]) == [True, True]
    pttl = c.execute("PTTL", prefix + "a")
    assert 90_000 < pttl <= 100_000
    c.execute("PEXPIRE", prefix + "a", 5_000)
    assert c.batch_exists(["a", "b", "zz"], refresh_ttl=True) == [True, True, False]
    assert c.execute("PTTL", prefix + "a") > 90_000  # touched back to the full TTL
    assert c.batch_exists(["a", "zz"]) == [True, False]
    assert c.batch_delete(["a", "zz"]) == [1, 0]
    assert c.batch_exists(["a", "b"]) == [False, True]


async def _aexists(c: ValkeyClient) -> list[bool]:
    return await c.abatch_exists(["a", "zz"], refresh_ttl=True)


def test_async_exists_passes_refresh_ttl(connect, raw, prefix) -> None:
    c = connect(key_prefix=prefix, ttl_s=100)
    c.batch_set(["a"], [b"1"])
    raw.pexpire(prefix + "a", 5_000)
    assert asyncio.run(_aexists(c)) == [True, False]
    assert raw.pttl(prefix + "a") > 50_000


def test_keys_must_be_str_or_bytes(client: ValkeyClient) -> None:
    with pytest.raises(TypeError, match="key #1"):
        client.batch_exists(["ok", 3])


def test_mismatched_lengths_are_refused(client: ValkeyClient) -> None:
    with pytest.raises(ConfigError, match="2 keys but 1 buffers"):
        client.batch_set(["a", "b"], [b"x"])


def test_empty_batches(client: ValkeyClient) -> None:
    assert client.batch_get_into([], []) == []
    assert client.batch_set([], []) == []
    assert client.batch_exists([]) == []


def test_tiled_across_connections_keeps_key_order(connect, prefix) -> None:
    c = connect(key_prefix=prefix, num_connections=4)
    values = [payload(300_000 + i, i) for i in range(16)]   # large enough to split
    keys = [f"tile{i}" for i in range(16)]
    assert c.batch_set(keys, values) == [True] * 16
    dests = [np.zeros(v.size, np.uint8) for v in values]
    reversed_keys = keys[::-1]
    result = c.batch_get_into(reversed_keys, dests[::-1])
    assert result == [v.size for v in values][::-1]
    assert all((d == v).all() for d, v in zip(dests, values, strict=True))


def test_a_blocking_batch_runs_on_the_calling_thread(connect, prefix, monkeypatch) -> None:
    """batch_* runs its first tile on the caller's thread over an idle
    connection (no hand-off to a worker and back); the other tiles, and
    every submitted batch, run on the workers."""
    import lmcache_valkey.client.workers as workers

    ran_on: list[str] = []
    real = workers.run_batch

    def spy(*args, **kwargs):
        ran_on.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(workers, "run_batch", spy)
    c = connect(key_prefix=prefix, num_connections=2)
    me = threading.current_thread().name
    assert c.batch_set(["small"], [b"x"]) == [True]
    assert ran_on == [me]
    ran_on.clear()
    values = [payload(MiB, i) for i in range(16)]   # 16 MiB: two tiles
    assert c.batch_set([f"big{i}" for i in range(16)], values) == [True] * 16
    assert sorted(ran_on, key=lambda name: name != me)[0] == me and len(ran_on) == 2
    assert ran_on[0] != ran_on[1]
    ran_on.clear()
    assert c.submit_batch_exists(["small"]).result(timeout=10) == [True]
    assert ran_on[0].startswith("lmcache-valkey")


def test_futures(client: ValkeyClient) -> None:
    f1 = client.submit_batch_set(["f1", "f2"], [b"one", b"two"])
    assert f1.result(timeout=10) == [True, True]
    f2 = client.submit_batch_get_into(["f1", "f2"], [bytearray(3), bytearray(3)])
    assert isinstance(f2.result(timeout=10), BatchResult)


def test_completion_queue_eventfd_wakes_a_selector(client: ValkeyClient) -> None:
    q = CompletionQueue()
    try:
        sel = selectors.DefaultSelector()
        sel.register(q.fileno(), selectors.EVENT_READ)
        futures = [client.submit_batch_exists([f"x{i}"], completion=q, token=i) for i in range(5)]
        seen: dict[int, object] = {}
        while len(seen) < 5:
            assert sel.select(timeout=10), "eventfd never became readable"
            for fut, token in q.drain():
                seen[token] = fut.result()
        assert sorted(seen) == [0, 1, 2, 3, 4]
        assert all(f.done() for f in futures)
        sel.close()
    finally:
        q.close()


def test_asyncio(client: ValkeyClient) -> None:
    async def main() -> tuple:
        dests = [bytearray(5) for _ in range(20)]
        sets = await asyncio.gather(
            *(client.abatch_set([f"a{i}"], [b"%05d" % i]) for i in range(20)))
        gets = await asyncio.gather(
            *(client.abatch_get_into([f"a{i}"], [dests[i]]) for i in range(20)))
        exists = await client.abatch_exists(["a0", "zz"])
        deleted = await client.abatch_delete(["a0"])
        return sets, gets, dests, exists, deleted

    sets, gets, dests, exists, deleted = asyncio.run(main())
    assert sets == [[True]] * 20 and gets == [[5]] * 20
    assert dests == [b"%05d" % i for i in range(20)]
    assert exists == [True, False] and deleted == [1]


def test_execute_and_ping(client: ValkeyClient) -> None:
    assert client.ping()
    assert "redis_version" in client.execute("INFO", "server").decode()


def test_repr_names_the_server_without_secrets(endpoint, connect) -> None:
    c = connect(key_prefix="p:")
    assert endpoint.address in repr(c) and "p:" in repr(c)


def test_connect_opens_every_connection_up_front(endpoint, raw) -> None:
    c = ValkeyClient(endpoint.url, num_connections=3, **endpoint.options)
    try:
        before = raw.info("clients")["connected_clients"]
        c.connect()
        assert raw.info("clients")["connected_clients"] == before + 3
        assert c.batch_exists(["nope"]) == [False]
    finally:
        c.close()
    with pytest.raises(ClientClosedError):
        c.connect()


def test_get_depth_is_chosen_per_server_and_shown(server_kind, connect, prefix) -> None:
    """Valkey 9 writes large replies from the value: deep GET pipelines.
    Valkey 8 and Redis copy them into output buffers: about one large reply
    in flight (server_profile.py). repr and stats() say which was chosen, and
    the max_inflight_bytes option overrides it."""
    c = connect(key_prefix=prefix)
    assert c.ping()
    expected = 64 << 20 if server_kind == "valkey9" else 256 << 10
    name = "redis" if server_kind == "redis7" else "valkey"
    snap = c.stats()
    assert snap.get_inflight_bytes == expected
    assert snap.server.startswith(f"{name} {server_kind[-1]}.")
    assert snap.set_inflight_bytes == 8 << 20   # the same on every server
    assert f"get_inflight_bytes={expected}, set_inflight_bytes={8 << 20}" in repr(c)
    assert snap.server in repr(c)
    assert "in flight per connection: GET replies" in str(snap)
    assert "SET values 8.0 MiB" in str(snap)
    fixed = connect(key_prefix=prefix, max_inflight_bytes=3 << 20)
    assert fixed.ping()
    assert fixed.stats().get_inflight_bytes == fixed.stats().set_inflight_bytes == 3 << 20
    # Any depth moves the same bytes: values larger than the budget, mixed sizes.
    values = [payload(s, seed=s) for s in (5 << 20, 10, 70_000, (2 << 20) + 1)]
    keys = [f"d{i}" for i in range(len(values))]
    assert fixed.batch_set(keys, values) == [True] * len(values)
    for cl in (c, fixed):
        dests = [np.zeros(v.size, np.uint8) for v in values]
        assert cl.batch_get_into(keys, dests) == [v.size for v in values]
        assert all(bytes(d) == v.tobytes() for d, v in zip(dests, values, strict=True))
