"""The clients `lmcache-valkey bench` measures, behind one small interface.

Each adapter drives its library the way an LMCache backend would: batches of
keys, values handed over as buffers, fetched values ending up in the caller's
pre-allocated buffers (copied there when the library cannot receive into
them, because that copy is a cost its users pay). Libraries are imported
lazily, so this module imports with nothing but the standard library and a
missing peer is skipped with a reason instead of breaking the benchmark.

EXISTS is sent as one EXISTS per key by everyone: a cache needs to know
which keys hit, not how many, so that is the workload to compare.
"""

from __future__ import annotations

import dataclasses
import importlib
import select
import socket
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import numpy as np

# Long enough for a batch of hundreds of MiB on a slow machine; the libraries'
# defaults (glide: 250 ms) are meant for small commands and would time out.
_TIMEOUT_S = 120.0


def _byte_view(array: Any) -> memoryview:
    """A flat, byte-addressed view of a C-contiguous buffer."""
    return memoryview(array).cast("B")


def _first(indexes: list[int], keys: list[bytes]) -> str:
    shown = ", ".join(repr(keys[i]) for i in indexes[:3])
    return shown + (f" and {len(indexes) - 3} more" if len(indexes) > 3 else "")


def _check_stored(name: str, keys: list[bytes], ok: list[Any]) -> None:
    failed = [i for i in range(len(keys)) if i >= len(ok) or not ok[i]]
    if failed:
        raise RuntimeError(f"{name}: SET failed for {_first(failed, keys)}")


def _check_fetched(name: str, keys: list[bytes], dests: list[np.ndarray],
                   got: list[int | None]) -> None:
    """got[i]: bytes delivered into dests[i], None for a miss or an error."""
    failed = [i for i, (n, d) in enumerate(zip(got, dests, strict=True)) if n != d.nbytes]
    if failed:
        raise RuntimeError(f"{name}: GET missed or size mismatch for {_first(failed, keys)}")


def _import_error(module: str, package: str) -> str | None:
    """None if `module` imports, else why not (as a skip reason)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return f"{package} not installed"
    except Exception as e:  # noqa: BLE001 - a broken install is a reason to skip, not to crash
        return f"{package} failed to import: {e}"
    return None


@dataclasses.dataclass(eq=False, repr=False)
class BenchClient:
    """One client under test. TCP when `host` is given, else the unix socket."""

    host: str | None
    port: int | None
    unix_path: str | None
    num_connections: int

    name = "?"  # not a field: bench.py may rename an instance
    supports_unix: ClassVar[bool] = True  # else __init__ raises RuntimeError for a unix socket

    def __post_init__(self) -> None:
        if self.host is None and self.unix_path is None:
            raise ValueError("need a host and port or a unix socket path")
        if self.host is None and not self.supports_unix:
            raise RuntimeError(f"{self.name} connects over TCP only, not to a unix socket")
        self._connect()

    def _connect(self) -> None:
        """Open the peer's connections to self.host/port or self.unix_path."""

    @property
    def tcp(self) -> bool:
        return self.host is not None

    #: (module to import, pip package that provides it), for peers that need one
    requires: ClassVar[tuple[str, str] | None] = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None if this client can run here, else why not."""
        return None if cls.requires is None else _import_error(*cls.requires)

    def set(self, keys: list[bytes], values: list[np.ndarray]) -> None:
        raise NotImplementedError

    def get(self, keys: list[bytes], dests: list[np.ndarray]) -> None:
        """Every value must end up in its dest (exactly its size)."""
        raise NotImplementedError

    def exists(self, keys: list[bytes]) -> int:
        raise NotImplementedError

    def close(self) -> None:
        pass


# -- ours ---------------------------------------------------------------------

class Ours(BenchClient):
    name = "ours"

    def __init__(self, host: str | None, port: int | None, unix_path: str | None,
                 num_connections: int, *, url: str | None = None) -> None:
        """`url` (a cluster URL, say) replaces host/port/unix_path."""
        from ..client.factory import open_client

        if url is None:
            super().__init__(host, port, unix_path, num_connections)
            url = f"valkey://{host}:{port}" if self.tcp else f"unix://{unix_path}"
        else:
            self.host, self.port, self.unix_path = host, port, unix_path
            self.num_connections = num_connections
        self._client = open_client(url, num_connections=num_connections,
                                   op_timeout_s=_TIMEOUT_S)

    def set(self, keys: list[bytes], values: list[np.ndarray]) -> None:
        _check_stored(self.name, keys, self._client.batch_set(keys, values))

    def get(self, keys: list[bytes], dests: list[np.ndarray]) -> None:
        _check_fetched(self.name, keys, dests, self._client.batch_get_into(keys, dests))

    def exists(self, keys: list[bytes]) -> int:
        return sum(self._client.batch_exists(keys))

    def close(self) -> None:
        self._client.close()


# -- the ceiling --------------------------------------------------------------

class Ceiling(BenchClient):
    """What one thread on one blocking socket can move: pipelined commands,
    values sent from and received into the caller's buffers, no parsing
    beyond the reply headers. Not a product: no reconnects, no auth, and
    num_connections is ignored (one reader/writer is the point)."""

    name = "ceiling"
    _IOV_MAX = 1024   # the kernel's limit on buffers per sendmsg
    _RECV = 65536     # reads of reply headers (and whatever follows them)

    def _connect(self) -> None:
        host, port, unix_path = self.host, self.port, self.unix_path
        if self.tcp:
            assert port is not None
            self._sock = socket.create_connection((host, port), timeout=_TIMEOUT_S)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            assert unix_path is not None
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.settimeout(_TIMEOUT_S)
            self._sock.connect(unix_path)
        # Plainly blocking from here: a timeout would add a poll() before every call.
        self._sock.settimeout(None)
        self._rbuf = bytearray()  # received, not yet consumed

    # reading

    def _fill(self) -> None:
        chunk = self._sock.recv(self._RECV)
        if not chunk:
            raise RuntimeError(f"{self.name}: server closed the connection")
        self._rbuf += chunk

    def _line(self) -> bytes:
        while (end := self._rbuf.find(b"\r\n")) < 0:
            self._fill()
        line = bytes(self._rbuf[:end])
        del self._rbuf[:end + 2]  # cheap: bytearray drops its head in place
        return line

    def _read_into(self, view: memoryview) -> None:
        """Fill view: first from what was read with the header, then
        straight from the socket. Then consume the body's CRLF."""
        have = min(len(self._rbuf), view.nbytes)
        view[:have] = self._rbuf[:have]
        del self._rbuf[:have]
        while have < view.nbytes:
            n = self._sock.recv_into(view[have:])
            if not n:
                raise RuntimeError(f"{self.name}: server closed the connection")
            have += n
        while len(self._rbuf) < 2:
            self._fill()
        del self._rbuf[:2]

    # writing

    def _send(self, parts: list[memoryview]) -> None:
        """sendmsg all parts, IOV_MAX at a time, resuming after partial sends."""
        i = 0
        while i < len(parts):
            sent = self._sock.sendmsg(parts[i:i + self._IOV_MAX])
            while i < len(parts) and (sent or not parts[i].nbytes):
                n = parts[i].nbytes
                if sent < n:
                    parts[i] = parts[i][sent:]
                    break
                sent -= n
                i += 1

    def _send_commands(self, name: bytes, keys: list[bytes]) -> None:
        self._sock.sendall(b"".join(
            b"*2\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(name), name, len(k), k) for k in keys))

    # the interface

    def set(self, keys: list[bytes], values: list[np.ndarray]) -> None:
        parts: list[memoryview] = []
        for k, v in zip(keys, values, strict=True):
            view = _byte_view(v)
            header = b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n" % (len(k), k, view.nbytes)
            parts += [memoryview(header), view, memoryview(b"\r\n")]
        self._send(parts)
        _check_stored(self.name, keys, [self._line() == b"+OK" for _ in keys])

    def _get_reply_into(self, dest: np.ndarray) -> int | None:
        """Read one GET reply into dest: its size, or None (miss, wrong size)."""
        line = self._line()
        n = int(line[1:]) if line[:1] == b"$" else -1
        view = _byte_view(dest)
        if n == view.nbytes:
            self._read_into(view)
        elif n >= 0:  # wrong size: drain it so the replies after it still line up
            self._read_into(memoryview(bytearray(n)))
        return n if n == view.nbytes else None

    def get(self, keys: list[bytes], dests: list[np.ndarray]) -> None:
        self._send_commands(b"GET", keys)
        _check_fetched(self.name, keys, dests, [self._get_reply_into(d) for d in dests])

    def exists(self, keys: list[bytes]) -> int:
        self._send_commands(b"EXISTS", keys)
        return sum(int(self._line()[1:]) for _ in keys)

    def close(self) -> None:
        self._sock.close()


class CeilingOneAtATime(Ceiling):
    """The ceiling for servers that copy pipelined replies (Valkey 8, Redis):
    one GET at a time on one blocking socket, each value recv_into'd
    straight into its buffer before the next GET is sent. SET and EXISTS
    are the pipelined ceiling's."""

    name = "ceiling-1"

    def get(self, keys: list[bytes], dests: list[np.ndarray]) -> None:
        got: list[int | None] = []
        for key, dest in zip(keys, dests, strict=True):
            self._send_commands(b"GET", [key])
            got.append(self._get_reply_into(dest))
        _check_fetched(self.name, keys, dests, got)


# -- redis-py and valkey-py ---------------------------------------------------

class _RedisPyLike(BenchClient):
    """redis-py and its fork valkey-py: pipelines of GET/SET on one pooled
    connection (num_connections does not apply). Replies arrive as bytes
    objects, so GET pays a copy into the destination."""

    _module = ""               # "redis" or "valkey"
    _client_class = ""         # "Redis" or "Valkey"
    _required_parser: tuple[str, str] | None = None  # (flag in <module>.utils, package)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        reason = _import_error(cls._module, cls._module)
        if reason is None and cls._required_parser:
            flag, package = cls._required_parser
            if not getattr(importlib.import_module(f"{cls._module}.utils"), flag, False):
                reason = f"{package} not installed (the pure-Python parser is not the peer)"
        return reason

    def _connect(self) -> None:
        host, port, unix_path = self.host, self.port, self.unix_path
        factory = getattr(importlib.import_module(self._module), self._client_class)
        where = {"host": host, "port": port} if self.tcp else {"unix_socket_path": unix_path}
        self._r = factory(socket_timeout=_TIMEOUT_S, **where)

    def _pipelined(self, command: str, *columns: list[Any]) -> list[Any]:
        pipe = self._r.pipeline(transaction=False)
        for args in zip(*columns, strict=True):
            getattr(pipe, command)(*args)
        return pipe.execute()

    def set(self, keys: list[bytes], values: list[np.ndarray]) -> None:
        views = [_byte_view(v) for v in values]  # accepted as is: no copy on our side
        _check_stored(self.name, keys, self._pipelined("set", keys, views))

    def get(self, keys: list[bytes], dests: list[np.ndarray]) -> None:
        got: list[int | None] = []
        for reply, dest in zip(self._pipelined("get", keys), dests, strict=True):
            view = _byte_view(dest)
            if reply is not None and len(reply) == view.nbytes:
                view[:] = reply
                got.append(len(reply))
            else:
                got.append(None)
        _check_fetched(self.name, keys, dests, got)

    def exists(self, keys: list[bytes]) -> int:
        return sum(self._pipelined("exists", keys))

    def close(self) -> None:
        self._r.close()


class RedisPy(_RedisPyLike):
    name = "redis-py"
    _module, _client_class = "redis", "Redis"
    _required_parser = ("HIREDIS_AVAILABLE", "hiredis")


class ValkeyPy(_RedisPyLike):
    """valkey-py, with the libvalkey parser when it is installed."""

    name = "valkey-py"
    _module, _client_class = "valkey", "Valkey"


# -- valkey-glide -------------------------------------------------------------

def _pieces(sizes: list[int], limit: int) -> list[slice]:
    """Consecutive slices of about `limit` bytes each (at least one item)."""
    out, start, acc = [], 0, 0
    for i, n in enumerate(sizes):
        if acc and acc + n > limit:
            out.append(slice(start, i))
            start, acc = i, 0
        acc += n
    if start < len(sizes):
        out.append(slice(start, len(sizes)))
    return out


class GlideSync(BenchClient):
    """valkey-glide's synchronous client. GET uses MGET with `buffers=`, its
    zero-allocation path: each value is copied from glide's Rust receive
    buffer into the destination, no Python bytes in between. glide keeps one
    multiplexed connection per node, so num_connections does not apply.

    glide slows down as one request's payload grows (32 x 4 MiB: ~0.8 GB/s
    as one MGET or one pipeline, ~2-3.5 GB/s in 4 MiB pieces, 2-core box),
    so batches go out in requests of about _PIECE_BYTES, one after another:
    the best way we found to drive it, as its users would.
    """

    name = "glide"
    requires = ("glide_sync", "valkey-glide-sync")
    _PIECE_BYTES = 4 << 20

    def _connect(self) -> None:
        host, port, unix_path = self.host, self.port, self.unix_path
        from glide_sync import GlideClient, GlideClientConfiguration, NodeAddress

        if self.tcp:
            assert host is not None and port is not None, "a TCP peer needs a host and a port"
            address = NodeAddress(host, port)
        else:
            address = NodeAddress(unix_socket_path=unix_path)
        config = GlideClientConfiguration([address], request_timeout=int(_TIMEOUT_S * 1000))
        self._client = GlideClient.create(config)

    def _pipelined(self, command: str, *columns: list[Any]) -> list[Any]:
        from glide_sync import Batch

        batch = Batch(is_atomic=False)
        for args in zip(*columns, strict=True):
            getattr(batch, command)(*args)
        return self._client.exec(batch, raise_on_error=True) or []  # None: never without WATCH

    def set(self, keys: list[bytes], values: list[np.ndarray]) -> None:
        views = [_byte_view(v) for v in values]  # passed to the FFI without a copy
        replies: list[Any] = []
        for piece in _pieces([v.nbytes for v in views], self._PIECE_BYTES):
            replies += self._pipelined("set", keys[piece], views[piece])
        _check_stored(self.name, keys, [r == "OK" for r in replies])

    def get(self, keys: list[bytes], dests: list[np.ndarray]) -> None:
        from glide_sync import GlideError

        views = [_byte_view(d) for d in dests]
        replies: list[bytes | None] = []  # b"<bytes written>" per key, None for a miss
        try:
            for piece in _pieces([v.nbytes for v in views], self._PIECE_BYTES):
                # glide's stub wants list[str | bytes | ...]: list is invariant, list[bytes] fits
                replies += self._client.mget(
                    keys[piece], buffers=views[piece])  # type: ignore[arg-type]
        except GlideError as e:  # e.g. a value larger than its buffer
            raise RuntimeError(f"{self.name}: GET failed: {e}") from e
        _check_fetched(self.name, keys, dests, [None if r is None else int(r) for r in replies])

    def exists(self, keys: list[bytes]) -> int:
        if not keys:
            return 0  # glide rejects an empty pipeline
        return sum(self._pipelined("exists", [[k] for k in keys]))

    def close(self) -> None:
        self._client.close()


# -- LMCache's own RESP client ------------------------------------------------

class LMCacheResp(BenchClient):
    """The C++ RESP client that ships with LMCache (lmcache.lmcache_redis).

    Its interface, found by running it: submit_* returns a future id; when
    batches finish, its eventfd becomes readable and drain_completions()
    returns (and resets the eventfd) a list of tuples
    (future_id, ok, error_message, per_key) where per_key is None for SET,
    a list of bools for GET (value received) and EXISTS (present). It
    requires every buffer of a batch to have the same size (LMCache's chunk
    size), so mixed sizes go out as one batch per size. A GET whose stored
    value is not exactly its buffer's size also leaves that connection out
    of step (the body is never read), so later replies on it are garbage.
    """

    name = "lmcache-c++"
    requires = ("lmcache.lmcache_redis", "lmcache")
    supports_unix = False
    _POLL_MS = 1000

    def _connect(self) -> None:
        from lmcache.lmcache_redis import LMCacheRedisClient

        self._native = LMCacheRedisClient(self.host, self.port, self.num_connections, "", "")
        self._poll = select.poll()
        self._poll.register(self._native.event_fd(), select.POLLIN)

    def _wait(self, ids: list[int]) -> dict[int, tuple[bool, str, list[bool] | None]]:
        done: dict[int, tuple[bool, str, list[bool] | None]] = {}
        waited_ms = 0
        while not all(i in done for i in ids):
            if not self._poll.poll(self._POLL_MS):
                waited_ms += self._POLL_MS
                if waited_ms >= _TIMEOUT_S * 1000:
                    raise RuntimeError(f"{self.name}: no completion in {_TIMEOUT_S:.0f}s")
            for future_id, ok, error, per_key in self._native.drain_completions():
                done[future_id] = (ok, error, per_key)
        return done

    def _by_size(self, submit: Any, keys: list[bytes], arrays: list[np.ndarray]) -> list[bool]:
        """Submit one batch per buffer size, wait for all; per key, in key
        order: did its batch succeed and (where reported) the key itself."""
        views = [_byte_view(a) for a in arrays]
        groups: dict[int, list[int]] = {}
        for i, v in enumerate(views):
            groups.setdefault(v.nbytes, []).append(i)
        ids = {submit([keys[i].decode() for i in idx], [views[i] for i in idx]): idx
               for idx in groups.values()}
        done = self._wait(list(ids))
        out = [False] * len(keys)
        for fid, idx in ids.items():
            ok, _error, per_key = done[fid]
            for j, i in enumerate(idx):
                out[i] = ok and (per_key is None or per_key[j])
        return out

    def set(self, keys: list[bytes], values: list[np.ndarray]) -> None:
        _check_stored(self.name, keys, self._by_size(self._native.submit_batch_set, keys, values))

    def get(self, keys: list[bytes], dests: list[np.ndarray]) -> None:
        # it only reports success when the value filled its buffer exactly
        ok = self._by_size(self._native.submit_batch_get, keys, dests)
        _check_fetched(self.name, keys, dests,
                       [d.nbytes if hit else None for hit, d in zip(ok, dests, strict=True)])

    def exists(self, keys: list[bytes]) -> int:
        if not keys:
            return 0  # the native client rejects an empty batch
        fid = self._native.submit_batch_exists([k.decode() for k in keys])
        ok, error, per_key = self._wait([fid])[fid]
        if not ok:
            raise RuntimeError(f"{self.name}: EXISTS failed: {error}")
        return sum(per_key or ())

    def close(self) -> None:
        self._native.close()


def all_peers() -> list[type[BenchClient]]:
    """Every client, in display order."""
    return [Ours, Ceiling, CeilingOneAtATime, RedisPy, ValkeyPy, GlideSync, LMCacheResp]
