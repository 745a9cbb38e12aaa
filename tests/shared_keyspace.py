"""A Valkey keyspace shared with the platform's other users, for the tests
that must leave those users' keys as they found them (test_shared_server.py,
test_vllm_python_api.py): ``other_consumers`` writes them, ``snapshot``
records them byte for byte (``DUMP``) and TTL for TTL. ``r`` is a valkey-py
client."""

from __future__ import annotations


def other_consumers(r) -> None:
    """Keys of the platform's other users, of several types, with and
    without TTLs, some with names that *start like* the KV prefix."""
    for i in range(50):
        r.set(f"emb:doc{i}", bytes([i]) * 300)
    for i in range(20):
        r.hset(f"session:{i}", mapping={"user": f"u{i}", "turns": i})
        r.expire(f"session:{i}", 7200)
    r.rpush("ray:queue", *[f"task{i}" for i in range(10)])
    r.set("ray:gcs:node", b"\x00" * 64, px=900_000)
    for name in ("vllm:kv", "vllm:kvx:1", "vllm:k*:1", "VLLM:KV:1", "x:vllm:kv:1"):
        r.set(name, b"not the KV cache")


def snapshot(r, exclude: str) -> dict[bytes, tuple[bytes, bool]]:
    """name -> (DUMP bytes, has a TTL) of every key not under `exclude`."""
    return {k: (r.dump(k), r.pttl(k) > 0) for k in r.scan_iter(count=1000)
            if not k.startswith(exclude.encode())}
