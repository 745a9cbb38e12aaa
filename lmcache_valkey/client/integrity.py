"""End-to-end value checksums (the ``checksum`` option).

With ``checksum="xxh3"`` (or ``"crc32c"``) every SET sends the value followed
by a 12-byte trailer, as one more scatter segment (the value itself is still
sent from the caller's memory)::

    value bytes | digest (8 bytes, little endian) | tag (4 bytes)

The digest covers the key's full name (prefix included) and the value bytes,
so a value that ends up under another key (a misdirected write, a COPY or
RENAME) fails too. The tag names the trailer format and the algorithm, so a
value written without a checksum, by another writer or with another
algorithm never verifies by accident. A GET receives into the caller's destination plus one
more 12-byte segment, so a destination sized for the value still takes the
value and its trailer. After the batch, on the connection's worker thread,
each hit is hashed where it landed and compared with its trailer: a mismatch,
a missing trailer or a foreign tag turns the key into a miss (``None``) with
an :class:`~lmcache_valkey.errors.IntegrityError` (code ``CHECKSUM``) in
``BatchResult.errors``. Its destination may then hold any bytes: a miss
means "ignore the buffer". Hits report the value's length, without the
trailer; ``too_large`` reports the stored length less the trailer.

The hash libraries are optional (``pip install 'lmcache_valkey[integrity]'``);
both release the GIL while they hash large buffers, so the connections'
threads verify in parallel. google-crc32c is not used: it accepts only
``bytes`` (no zero-copy view of a caller's buffer).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError, IntegrityError, ValkeyConnectionError
from ..protocol.buffers import byte_segments
from ..protocol.engine import Engine
from ..protocol.operations import GET, SET, Operation

TRAILER = struct.Struct("<Q4s")
TRAILER_LEN = TRAILER.size  # 12
NAMES = ("none", "xxh3", "crc32c")
_INSTALL = "pip install 'lmcache_valkey[integrity]'"


# A digest function: (key, value segments) -> 64-bit int.
Digest = Callable[[bytes, list[memoryview]], int]


def _key_header(key: bytes) -> bytes:
    # Length first: ("ab", "c...") and ("a", "bc...") must not hash alike.
    return len(key).to_bytes(4, "little") + key


def _xxh3() -> Digest:
    import xxhash

    def digest(key: bytes, views: list[memoryview]) -> int:
        h = xxhash.xxh3_64(_key_header(key))
        for v in views:
            h.update(v)
        return int(h.intdigest())

    return digest


def _crc32c() -> Digest:
    from crc32c import crc32c  # the "crc32c" package (ICRAR), not google-crc32c

    def digest(key: bytes, views: list[memoryview]) -> int:
        crc = crc32c(_key_header(key))
        for v in views:
            crc = crc32c(v, crc)
        return int(crc)

    return digest


# name -> (tag, module to install, digest factory). Tag: b"LV", format 1, algorithm.
_ALGORITHMS: dict[str, tuple[bytes, str, Callable[[], Digest]]] = {
    "xxh3": (b"LV\x01\x01", "xxhash", _xxh3),
    "crc32c": (b"LV\x01\x02", "crc32c", _crc32c),
}


def checksum_for(name: Any) -> Checksum | None:
    """The Checksum for a ``checksum`` option value (None for ``"none"``);
    a ConfigError naming the option for a bad value or a missing library."""
    if name is None or name == "none":
        return None
    if not isinstance(name, str) or name not in _ALGORITHMS:
        raise ConfigError(f"checksum must be one of {list(NAMES)}, not {name!r}")
    return Checksum(name)


class Checksum:
    """One algorithm's trailer: sealing values, checking what was received."""

    __slots__ = ("name", "tag", "_digest")

    def __init__(self, name: str) -> None:
        self.name = name
        self.tag, module, factory = _ALGORITHMS[name]
        try:
            self._digest = factory()
        except ImportError:
            raise ConfigError(f"checksum={name!r} needs the {module!r} package: "
                              f"{_INSTALL}") from None

    def __repr__(self) -> str:
        return f"Checksum({self.name!r})"

    # -- the two sides ---------------------------------------------------

    def seal(self, key: bytes, value: Any, index: int) -> list[Any]:
        """A SET value (buffer or scatter list) for `key` (its full name) as
        segments + its trailer."""
        views = byte_segments(value, False, index)
        return [*views, TRAILER.pack(self._digest(key, views), self.tag)]

    def open(self, dest: Any, index: int) -> list[memoryview]:
        """A GET destination as segments + room for the trailer."""
        return [*byte_segments(dest, True, index), memoryview(bytearray(TRAILER_LEN))]

    def verify(self, key: bytes, segs: list[memoryview], n: int) -> IntegrityError | None:
        """Check the n bytes of `key` received into `segs` (from :meth:`open`)."""
        if n < TRAILER_LEN:
            return IntegrityError(f"CHECKSUM value of {n} bytes has no {self.name} trailer")
        size = n - TRAILER_LEN
        digest, tag = TRAILER.unpack(b"".join(_span(segs, size, n)))
        if tag != self.tag:
            return IntegrityError(f"CHECKSUM value has no {self.name} trailer (written "
                                  "without checksum, or with another one)")
        if self._digest(key, _span(segs, 0, size)) != digest:
            return IntegrityError(f"CHECKSUM {self.name} mismatch: the value was corrupted "
                                  "(or written under another key)")
        return None

    def finish_get(self, outcome: Any, keys: list[bytes], dests: list[list[memoryview]]) -> Any:
        """Verify a GET outcome ``(values, errors, too_large)`` in place:
        hits become value lengths or CHECKSUM misses."""
        if outcome is None:
            return None
        values, errors, too_large = outcome
        for i, n in enumerate(values):
            if n is None:
                continue
            err = self.verify(keys[i], dests[i], n)
            if err is None:
                values[i] = n - TRAILER_LEN
            else:
                values[i] = None
                errors[i] = err
        for i, n in too_large.items():
            too_large[i] = max(n - TRAILER_LEN, 0)
        return outcome

    def run(self, native: Engine, op: Operation, keys: list[bytes], buffers: list[Any],
            args: tuple[Any, ...]) -> Any:
        """Run a batch of `op` (GET or SET: the operations with buffers) on
        engine `native` with trailers added / checked
        (``ValkeyConnectionError.partial`` included)."""
        call = getattr(native, op.method)
        if op is SET:
            return call(keys, [self.seal(keys[i], b, i) for i, b in enumerate(buffers)], *args)
        if op is not GET:
            return call(keys, buffers, *args)
        dests = [self.open(b, i) for i, b in enumerate(buffers)]
        try:
            outcome = call(keys, dests, *args)
        except ValkeyConnectionError as e:
            e.partial = self.finish_get(e.partial, keys, dests)
            raise
        return self.finish_get(outcome, keys, dests)


def _span(segs: list[memoryview], start: int, stop: int) -> list[memoryview]:
    """Views of bytes [start, stop) of the concatenation of `segs`."""
    out = []
    pos = 0
    for s in segs:
        end = pos + s.nbytes
        if end > start and pos < stop:
            out.append(s[max(start - pos, 0):min(stop, end) - pos])
        pos = end
        if pos >= stop:
            break
    return out
