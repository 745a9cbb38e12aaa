"""What server a connection talks to, and how deep to pipeline GETs there.

Servers differ in how they send a large GET reply, and that decides how many
replies a client should keep in flight:

* **Valkey 9+** writes a large bulk reply straight from the stored value
  (no copy), so a deep pipeline is free: ours keeps ``64 MiB`` of GET replies
  requested ahead per connection, which hides every round trip.
* **Valkey 8 and older, and Redis** copy every reply into the client's
  output buffer before writing it. With many large replies queued, the server
  copies megabytes into freshly allocated, cache-cold buffers and writes them
  out later: a bare pipelined reader gets ~1.8 GB/s on Valkey 8.1 and Redis 7.0
  where a one-GET-at-a-time reader gets 3.5-4.1 (measured here, 32 x 4 MiB).
  LMCache's C++ client keeps one request in flight per connection for that
  reason. Ours keeps ``256 KiB`` in flight there: one large value at a time
  (the engine always lets one reply go, however large), while 64 KiB values
  still pipeline 4 deep (on Valkey 8.1, 16 deep was slower than 2-4 deep, and
  4 deep no slower than one at a time on Redis 7). Servers that keep freed
  memory (``server/allocator.py``) still copy: there 8, 16 and 64 MiB of
  4 MiB GETs in flight measured 0.9-1.05x of 256 KiB (2026-12-06).

SETs are bounded on **every** server, Valkey 9 included, to ``8 MiB`` of
values sent ahead of their ``+OK`` per connection: a 4 MiB value goes with
one more behind it, so the round trip of its ``+OK`` is hidden and the
server has the next value to read while it stores one; 1 MiB values go 8
deep, 64 KiB values 128 deep, a 32 MiB value alone. Against LMCache's
client (one SET at a time per connection), 32 x 4 MiB, interleaved, median
of per-round ratios, Valkey 9.1 / 8.1 / Redis 7.0, by key length (one at a
time is slow with some key lengths, for both clients, for reasons not
settled; README, "GET depth per server"): 2-byte keys 1.51 /
1.41 / 1.29x with 8 MiB, 1.06 / 0.98 / 0.97x with 4 MiB; 16-byte 1.19 / 1.19
/ 1.16x against 0.98 / 0.99 / 1.04x; 28-byte 1.01 / 0.99 / 1.05x against
0.99 / 1.04 / 0.96x; 60-byte 1.06 / 0.98 / 1.01x against 0.97 / 0.83 /
1.02x. So 8 MiB is never worse than one at a time and much better with the
unlucky key lengths. Deeper is not better for smaller values (1 MiB values:
3.71 / 3.55 / 3.34 GB/s with 4 / 8 / 16 MiB on Valkey 9.1,
``examples/servers/sweep_inflight.py --op SET``). The bound was 4 MiB until
2026-12-06, chosen while SETs were sent with non-blocking writes. With
256 KiB values one SET at a time was round-trip bound (1.4-2.8 GB/s against
2.2-3.2 with 1-4 MiB bounds).

The choice is made at a client's first connect from ``INFO server`` (one
round trip, after AUTH; reconnects reuse it; ``io_threads_active`` is
reported, it does not change the choice), is visible in the client's ``repr``
and ``stats()``, and the ``max_inflight_bytes`` option overrides it. A server that refuses ``INFO``
(an ACL without ``+info``) is treated as one that copies: the safe depth
costs a deep-pipelining server some speed, never memory.
"""

from __future__ import annotations

import dataclasses

from ..errors import ServerReplyError
from .engine import Engine

#: GET reply bytes requested ahead per connection, by how the server writes them.
DEEP_INFLIGHT_BYTES = 64 * 1024 * 1024     # writes large replies from the value
SHALLOW_INFLIGHT_BYTES = 256 * 1024        # copies replies into output buffers
#: SET value bytes sent ahead of their replies per connection, on every server.
SET_INFLIGHT_BYTES = 8 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ServerProfile:
    """A server as ``INFO server`` describes it; ``name`` is ``"valkey"``,
    ``"redis"`` or ``"unknown"`` (INFO refused)."""

    name: str
    version: str
    io_threads_active: bool | None = None  # INFO's io_threads_active (None: not reported)

    @property
    def version_tuple(self) -> tuple[int, ...]:
        parts = []
        for p in self.version.split(".")[:3]:
            parts.append(int(p) if p.isdigit() else 0)
        return tuple(parts)

    @property
    def writes_large_replies_from_value(self) -> bool:
        """Valkey 9 sends a large bulk reply without copying it first."""
        return self.name == "valkey" and self.version_tuple >= (9,)

    def inflight_bytes(self) -> int:
        """The GET in-flight budget per connection for this server."""
        return DEEP_INFLIGHT_BYTES if self.writes_large_replies_from_value \
            else SHALLOW_INFLIGHT_BYTES

    def set_inflight_bytes(self) -> int:
        """The SET budget, the same on every server (see the module docstring)."""
        return SET_INFLIGHT_BYTES

    def __str__(self) -> str:
        threads = ", io-threads active" if self.io_threads_active else ""
        return f"{self.name} {self.version}{threads}"


UNKNOWN = ServerProfile("unknown", "?")


def parse_info_server(text: str) -> ServerProfile:
    """The profile in an ``INFO server`` reply (Valkey 8+ reports
    ``valkey_version``, and ``redis_version`` 7.2.4 for compatibility)."""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    active = fields.get("io_threads_active", "").strip()
    threads = active == "1" if active in ("0", "1") else None
    if fields.get("valkey_version"):
        return ServerProfile("valkey", fields["valkey_version"].strip(), threads)
    if fields.get("redis_version"):
        name = "valkey" if fields.get("server_name", "").strip() == "valkey" else "redis"
        return ServerProfile(name, fields["redis_version"].strip(), threads)
    return UNKNOWN


def probe(native: Engine) -> ServerProfile:
    """Ask the server on a connected, authenticated engine what it is.
    A refused INFO (ACL, renamed command) gives ``UNKNOWN``; I/O errors
    propagate (the connect fails, as a failed AUTH would)."""
    try:
        reply = native.execute("INFO", "server")
    except ServerReplyError:
        return UNKNOWN
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    return parse_info_server(text)
