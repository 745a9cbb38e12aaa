"""The ``checksum`` option: values carry a digest trailer, checked on load.

Real servers throughout; corruption is made on the server itself (SETRANGE,
SET of a truncated value), as a faulty disk, replica or proxy would leave it.
A value that fails its check is a miss with a ``CHECKSUM`` error; what its
destination holds then is unspecified (it may have been written): a miss
means "ignore the buffer".
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from lmcache_valkey import ValkeyClient
from lmcache_valkey.client.integrity import TRAILER_LEN, Checksum
from lmcache_valkey.config import ClientConfig
from lmcache_valkey.errors import ConfigError, IntegrityError, ValkeyConnectionError
from lmcache_valkey.protocol.operations import GET

MiB = 1 << 20
SIZES = [0, 1, 4 * MiB, 7 * MiB + 3]
ALGORITHMS = ["xxh3", "crc32c"]
TAGS = {"xxh3": b"LV\x01\x01", "crc32c": b"LV\x01\x02"}


def payload(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def scatter(size: int) -> list:
    """Uneven segments of several kinds (an empty one included) totalling size."""
    a, b = size // 3, size // 2
    return [bytearray(a), np.zeros(0, np.uint8), np.zeros(b - a, np.uint8),
            memoryview(bytearray(size - b))]


def joined(segs: list) -> bytes:
    return b"".join(bytes(s) for s in segs)


def assert_checksum_miss(result, i: int) -> None:
    assert result[i] is None
    err = result.errors[i]
    assert isinstance(err, IntegrityError) and err.code == "CHECKSUM"
    assert i not in result.too_large


@pytest.fixture(params=ALGORITHMS)
def algo(request) -> str:
    return request.param


@pytest.fixture
def checked(server, prefix, make_client, algo):
    return make_client(server.url, key_prefix=prefix, checksum=algo)


@pytest.fixture
def plain(server, prefix, make_client):
    """The same keys, read and written without checksum."""
    return make_client(server.url, key_prefix=prefix)


# -- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_exact_bytes_into_every_kind_of_destination(checked, raw, prefix, algo,
                                                                size):
    value = payload(size, seed=size)
    assert checked.batch_set(["n", "s"], [value, [value[:size // 2], value[size // 2:]]]) \
        == [True, True]
    stored = raw.get(prefix + "n")
    assert len(stored) == size + TRAILER_LEN and stored[:size] == value.tobytes()
    assert stored[-4:] == TAGS[algo]
    assert len(raw.get(prefix + "s")) == size + TRAILER_LEN  # a scatter list: one value

    as_bytearray, as_numpy, segs = bytearray(size), np.zeros(size, np.uint8), scatter(size)
    result = checked.batch_get_into(["n", "s", "s"], [as_bytearray, as_numpy, segs])
    assert list(result) == [size] * 3  # the value's length, not the stored one
    assert not result.errors and not result.too_large
    assert as_bytearray == value.tobytes()
    assert as_numpy.tobytes() == value.tobytes()
    assert joined(segs) == value.tobytes()


def test_larger_destination_gets_the_value_first(checked):
    value = payload(100_000, 3)
    checked.batch_set(["k"], [value])
    dest = np.full(100_000 + 50, 0xAB, np.uint8)
    assert checked.batch_get_into(["k"], [dest]) == [100_000]
    # The trailer lands right after the value (up to 12 bytes of spare room
    # are overwritten); past that the buffer is untouched.
    assert dest[:100_000].tobytes() == value.tobytes()
    assert (dest[100_000 + TRAILER_LEN:] == 0xAB).all()


def test_asyncio_and_many_tiles(checked):
    import asyncio

    keys = [f"k{i}" for i in range(40)]
    values = [payload(70_000 + i, i) for i in range(40)]  # tiled over both connections
    assert all(checked.batch_set(keys, values))
    dests = [bytearray(v.size) for v in values]
    got = asyncio.run(checked.abatch_get_into(keys, dests))
    assert list(got) == [v.size for v in values]
    assert all(d == v.tobytes() for d, v in zip(dests, values, strict=True))


# -- corruption and foreign values -----------------------------------------------------


@pytest.mark.parametrize("where", ["payload", "digest", "tag", "truncated", "extended",
                                   "other key's value"])
def test_corruption_on_the_server_is_a_checksum_miss(checked, raw, prefix, where):
    size = 4 * MiB
    good, bad = payload(size, 1), payload(size, 2)
    assert all(checked.batch_set(["good", "bad"], [good, bad]))
    key = prefix + "bad"
    if where == "truncated":
        raw.set(key, raw.get(key)[:-1])
    elif where == "other key's value":  # intact, but not this key's: a misdirected write
        raw.copy(prefix + "good", key, replace=True)
    elif where == "extended":
        raw.append(key, b"\0")
    else:
        offset = {"payload": size // 2 + 7, "digest": size, "tag": size + TRAILER_LEN - 1}[where]
        old = raw.getrange(key, offset, offset)[0]
        raw.setrange(key, offset, bytes([old ^ 0x10]))  # one bit flipped
    dests = [np.zeros(size, np.uint8), np.zeros(size, np.uint8)]
    result = checked.batch_get_into(["good", "bad"], dests)
    assert result[0] == size and dests[0].tobytes() == good.tobytes()
    if where == "extended":  # one byte more than the destination + trailer: too large
        assert result[1] is None and result.too_large == {1: size + 1}
        return
    assert_checksum_miss(result, 1)
    if where == "payload":
        # The destination was written with the corrupted bytes: on a miss,
        # ignore the buffer.
        stored = raw.get(key)
        assert dests[1].tobytes() == stored[:size] != bad.tobytes()
    # The connection stays usable, and the good value still reads.
    assert checked.batch_get_into(["good"], [dests[0]]) == [size]


@pytest.mark.parametrize("size", [0, 5, 12, 13, 4 * MiB])
def test_value_written_without_checksum_reads_as_a_miss(checked, plain, size):
    assert plain.batch_set(["k"], [payload(size, size)]) == [True]
    result = checked.batch_get_into(["k"], [bytearray(size)])
    assert_checksum_miss(result, 0)


def test_value_written_with_checksum_is_value_plus_trailer_to_plain_readers(checked, plain,
                                                                             algo):
    value = payload(10_000, 4)
    checked.batch_set(["k"], [value])
    exact = bytearray(10_000)
    result = plain.batch_get_into(["k"], [exact])
    assert result == [None] and result.too_large == {0: 10_000 + TRAILER_LEN}  # a miss
    roomy = bytearray(10_000 + TRAILER_LEN)
    assert plain.batch_get_into(["k"], [roomy]) == [10_000 + TRAILER_LEN]
    assert roomy[:10_000] == value.tobytes() and roomy[-4:] == TAGS[algo]


def test_other_algorithm_never_verifies(server, prefix, make_client):
    xxh3 = make_client(server.url, key_prefix=prefix, checksum="xxh3")
    crc = make_client(server.url, key_prefix=prefix, checksum="crc32c")
    xxh3.batch_set(["k"], [payload(1000)])
    assert_checksum_miss(crc.batch_get_into(["k"], [bytearray(1000)]), 0)


def test_too_small_destination_reports_the_value_length(checked):
    value = payload(100_000, 5)
    checked.batch_set(["big", "small"], [value, b"hello"])
    tiny = bytearray(b"\xee" * 99_999)
    after = bytearray(5)
    result = checked.batch_get_into(["big", "small", "absent"], [tiny, after, bytearray(3)])
    assert list(result) == [None, 5, None]
    assert result.too_large == {0: 100_000} and not result.errors
    assert tiny == b"\xee" * 99_999  # drained, not written
    assert after == b"hello"


def test_exists_and_delete_are_unaffected(checked, plain):
    checked.batch_set(["a"], [b"x" * 100])
    assert list(checked.batch_exists(["a", "b"])) == [True, False]
    assert list(checked.batch_delete(["a", "b"])) == [1, 0]
    assert list(plain.batch_exists(["a"])) == [False]


def test_partial_results_of_a_broken_connection_are_verified():
    """A fake engine stands in for a connection that breaks after the first
    key (a real server cannot be made to break at that exact point): the
    completed key in ``partial`` is checked and reported without trailer."""
    check = Checksum("xxh3")
    sealed = joined(check.seal(b"a", b"hello", 0))

    class BreaksAfterOneKey:
        def batch_get_into(self, keys, dests):
            pos = 0
            for seg in dests[0]:
                take = min(seg.nbytes, len(sealed) - pos)
                seg[:take] = sealed[pos:pos + take]
                pos += take
            e = ValkeyConnectionError("connection reset")
            e.partial = ([len(sealed), None], {}, {})
            raise e

    dests = [bytearray(5), bytearray(5)]
    with pytest.raises(ValkeyConnectionError) as info:
        check.run(BreaksAfterOneKey(), GET, [b"a", b"b"], dests, ())
    values, errors, _ = info.value.partial
    assert values == [5, None] and not errors and dests[0] == b"hello"


# -- configuration ----------------------------------------------------------------------


def test_config_values_and_errors():
    assert ClientConfig.from_options("valkey://h:1").checksum == "none"
    assert ClientConfig.from_options("valkey://h:1?checksum=xxh3").checksum == "xxh3"
    assert ClientConfig.from_options("valkey://h:1", checksum=" CRC32C ").checksum == "crc32c"
    for bad in ("md5", "", 1, ["xxh3"]):
        with pytest.raises(ConfigError, match="checksum"):
            ClientConfig.from_options("valkey://h:1", checksum=bad)
    with pytest.raises(ConfigError, match="checksum"):
        ClientConfig.from_options("valkey://h:1?checksum=sha1")


def test_missing_library_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "xxhash", None)  # import xxhash -> ImportError
    with pytest.raises(ConfigError, match=r"checksum='xxh3' needs the 'xxhash' package"):
        ValkeyClient("valkey://127.0.0.1:1", checksum="xxh3")


# -- cluster and TLS ----------------------------------------------------------------------


def test_cluster_nodes_and_ask_path_use_the_trailer(fresh_cluster, make_cluster_client):
    cl = fresh_cluster
    prefix = "ck:"
    c = make_cluster_client(cl.url, key_prefix=prefix, checksum="xxh3")
    keys = [f"{{tag}}:{i}" for i in range(6)] + [f"o{i}" for i in range(20)]
    values = [payload(3000 + i, i) for i in range(len(keys))]
    assert all(c.batch_set(keys, values))

    def server_of(key: str):
        port = int(c.node_of(key).rsplit(":", 1)[1])
        return next(s for s in cl.masters if s.port == port)

    assert len({c.node_of(k) for k in keys}) == 3  # every node's client seals
    for k, v in zip(keys, values, strict=True):
        assert cl.admin(server_of(k), "GET", prefix + k)[:-TRAILER_LEN] == v.tobytes()
    victim = keys[-1]
    cl.admin(server_of(victim), "SETRANGE", prefix + victim, 10, bytes([values[-1][10] ^ 1]))
    dests = [bytearray(v.size) for v in values]
    got = c.batch_get_into(keys, dests)
    assert list(got[:-1]) == [v.size for v in values[:-1]]
    assert_checksum_miss(got, len(keys) - 1)

    # Mid-migration the {tag} keys take the ASK slow path (GET and SET).
    from lmcache_valkey.cluster import key_slot

    slot = key_slot((prefix + keys[0]).encode())
    src = server_of(keys[0])
    dst = next(s for s in cl.masters if s is not src)
    cl.admin(src, "SETRANGE", prefix + keys[1], 0, bytes([values[1][0] ^ 1]))  # moves too
    cl.admin(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", cl.node_id(src))
    cl.admin(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", cl.node_id(dst))
    migrated = [prefix + k for k in keys[:3]]
    assert cl.admin(src, "MIGRATE", dst.host, dst.port, "", 0, 5000, "KEYS", *migrated) == "OK"
    dests = [bytearray(v.size) for v in values[:6]]
    got = c.batch_get_into(keys[:6], dests)
    assert c.asks >= 3
    assert_checksum_miss(got, 1)
    assert [got[i] for i in (0, 2, 3, 4, 5)] == [values[i].size for i in (0, 2, 3, 4, 5)]
    assert all(dests[i] == values[i].tobytes() for i in (0, 2, 3, 4, 5))
    new = [payload(500, 100 + i) for i in range(3)]
    assert all(c.batch_set(keys[:3], new))  # ASKING + SET: sealed, or the GET below fails
    dests = [bytearray(500) for _ in range(3)]
    got = c.batch_get_into(keys[:3], dests)
    assert list(got) == [500] * 3 and not got.errors
    assert [bytes(d) for d in dests] == [v.tobytes() for v in new]


def test_tls_round_trip_and_corruption(tls_server, tls_certs, prefix, make_client):
    c = make_client(tls_server.url, tls_ca_file=tls_certs.ca, key_prefix=prefix,
                    checksum="xxh3")
    value = payload(3 * MiB + 1, 9)
    assert c.batch_set(["k", "s"], [value, [value[:5], value[5:]]]) == [True, True]
    segs = scatter(value.size)
    assert c.batch_get_into(["k", "s"], [np.zeros(value.size, np.uint8), segs]) \
        == [value.size] * 2
    assert joined(segs) == value.tobytes()
    c.execute("SETRANGE", (prefix + "k").encode(), 100, bytes([value[100] ^ 1]))
    assert_checksum_miss(c.batch_get_into(["k"], [bytearray(value.size)]), 0)


# -- integrations ----------------------------------------------------------------------------


def test_lmcache_l2_adapter_turns_a_corrupted_chunk_into_a_failed_load(server, prefix, raw):
    pytest.importorskip("lmcache")
    torch = pytest.importorskip("torch")
    from lmcache.v1.memory_allocators.tensor_memory_allocator import TensorMemoryAllocator
    from lmcache_helpers import SHAPE, Runner, _bytes, _keys

    from lmcache_valkey.lmcache import ValkeyL2Adapter, ValkeyL2AdapterConfig
    from lmcache_valkey.lmcache.l2_adapter import encode_object_key

    allocator = TensorMemoryAllocator(torch.zeros(4 << 20, dtype=torch.uint8))
    objs = [allocator.allocate(SHAPE, torch.bfloat16) for _ in range(6)]
    gen = torch.Generator().manual_seed(7)
    for o in objs:
        flat = o.raw_data[: o.get_size()]
        flat.copy_(torch.randint(0, 256, (flat.numel(),), dtype=torch.uint8, generator=gen))
    src, dst = objs[:3], objs[3:]
    adapter = ValkeyL2Adapter(ValkeyL2AdapterConfig.from_dict(
        {"url": server.url, "key_prefix": prefix, "checksum": "xxh3"}))
    try:
        run = Runner(adapter)
        keys = _keys(3)
        assert run.store(keys, src).is_successful()
        name = prefix.encode() + encode_object_key(keys[1])
        size = src[1].get_size()
        assert raw.strlen(name) == size + TRAILER_LEN
        raw.setrange(name, size // 2, bytes([_bytes(src[1])[size // 2] ^ 1]))
        assert run.load(keys, dst) == [True, False, True]  # LMCache recomputes chunk 1
        assert _bytes(dst[0]) == _bytes(src[0]) and _bytes(dst[2]) == _bytes(src[2])
    finally:
        adapter.close()
        for o in objs:
            o.ref_count_down()


def test_vllm_connector_reports_a_corrupted_block_for_recompute(server, raw, tmp_path):
    pytest.importorskip("vllm")
    import vllm_harness as vh

    from lmcache_valkey.testkit.tiny_llama import TEST_TINY, build_tiny_llama

    model_dir = build_tiny_llama(tmp_path / "tiny-llama", **TEST_TINY)
    extra = {"url": server.url, "key_prefix": f"ck:{tmp_path.name}:", "checksum": "xxh3"}
    vc = vh.vllm_config(model_dir, extra)
    toks = vh.tokens(200, seed=11)
    first, _, stored = vh.prefill_on_new_worker(vc, toks, seed=1)
    hashes = list(stored)
    victim = extra["key_prefix"] + first.connector.key_of(hashes[3])
    assert raw.strlen(victim) == len(stored[hashes[3]]) + TRAILER_LEN
    raw.setrange(victim, 1000, bytes([stored[hashes[3]][1000] ^ 1]))

    second = vh.Worker(vc, seed=2)
    _, _, out, errors = vh.run_prefill(vc, second, toks)
    [load] = out.kv_connector_metadata.loads
    assert len(load.hashes) == 6                  # the lookup sees the key ...
    assert errors == {load.block_ids[3]}          # ... the load rejects it: vLLM recomputes
    assert vh.computed_before_step(out) == 3 * vh.BLOCK  # from there
    for i, (h, b) in enumerate(zip(load.hashes, load.block_ids, strict=True)):
        if i != 3:
            assert second.block_bytes(b) == stored[h]
