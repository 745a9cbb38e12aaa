"""Test oracle: a small, pure-Python, incremental RESP2 reader.

Nothing in the package uses this module. The tests check the native parser
and batch engine (``lmcache_valkey._native``) against it, so it is written to
be obviously correct rather than fast: it keeps every received byte in one
buffer and re-parses an incomplete reply from its first byte on each attempt.

Framing rules are the ones the native client documents, so that the two can
be compared byte for byte:

* a reply line runs to the first LF, and that LF must follow a CR;
* a line of more than ``max_line`` bytes (CRLF included) is an error
  (the client's limit is 64 KiB);
* integers are ASCII ``-?[0-9]+`` with at most ``max_digits`` digits
  (the client's limit is 18); lengths below -1 are errors;
* ``_\\r\\n`` (the RESP3 null) is read as a null, as the client does.

Decoded values: bulk string -> bytes, simple string -> str, integer -> int,
null (``$-1``, ``*-1``, ``_``) -> None, array -> list, error -> RespError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_LINE = 64 * 1024
MAX_DIGITS = 18

_INTEGER = re.compile(rb"-?[0-9]+")


class RespSyntaxError(Exception):
    """The bytes are not valid RESP (under the limits above)."""


@dataclass(frozen=True)
class RespError:
    """An error reply (``-ERR ...``), kept apart from simple strings."""

    text: str


Header = tuple[str, int, bytes, int]


def parse_header(
    data: bytes | bytearray,
    pos: int = 0,
    *,
    max_line: int = MAX_LINE,
    max_digits: int = MAX_DIGITS,
) -> Header | None:
    """Read the reply line starting at data[pos].

    Returns None when the line is not complete yet, else
    (kind, value, text, consumed): value is the length / integer (-1 for a
    null, 0 for simple strings and errors), text the bytes between the type
    byte and CRLF, consumed the line's length including CRLF.
    """
    lf = data.find(b"\n", pos, pos + max_line)
    if lf < 0:
        if len(data) - pos >= max_line:
            raise RespSyntaxError("reply line too long")
        return None
    if lf == pos or data[lf - 1] != ord("\r"):
        raise RespSyntaxError("LF without CR")
    kind = chr(data[pos])
    text = bytes(data[pos + 1 : lf - 1])
    consumed = lf + 1 - pos
    if kind in "$*:":
        if not _INTEGER.fullmatch(text):
            raise RespSyntaxError(f"not an integer: {text!r}")
        if len(text.lstrip(b"-")) > max_digits:
            raise RespSyntaxError("too many digits")
        value = int(text)
        if kind != ":" and value < -1:
            raise RespSyntaxError("negative length")
        return kind, value, text, consumed
    if kind in "+-":
        return kind, 0, text, consumed
    if kind == "_":
        if text:
            raise RespSyntaxError("text after RESP3 null")
        return kind, -1, text, consumed
    raise RespSyntaxError(f"unknown type byte {kind!r}")


class RespReader:
    """feed() bytes as they arrive; iterate to take the complete replies."""

    def __init__(self, *, max_line: int = MAX_LINE, max_digits: int = MAX_DIGITS) -> None:
        self._buf = bytearray()
        self._limits = {"max_line": max_line, "max_digits": max_digits}

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete reply."""
        return len(self._buf)

    def __iter__(self) -> RespReader:
        return self

    def __next__(self) -> object:
        got = self._parse(0)
        if got is None:
            raise StopIteration
        value, end = got
        del self._buf[:end]
        return value

    def _parse(self, pos: int) -> tuple[object, int] | None:
        """(reply, position after it), or None when incomplete."""
        header = parse_header(self._buf, pos, **self._limits)
        if header is None:
            return None
        kind, value, text, consumed = header
        pos += consumed
        if kind == "+":
            return text.decode("utf-8", "replace"), pos
        if kind == "-":
            return RespError(text.decode("utf-8", "replace")), pos
        if kind == ":":
            return value, pos
        if value == -1:
            return None, pos
        if kind == "$":
            end = pos + value
            if len(self._buf) < end + 2:
                return None
            if self._buf[end : end + 2] != b"\r\n":
                raise RespSyntaxError("bulk string not followed by CRLF")
            return bytes(self._buf[pos:end]), end + 2
        items = []
        for _ in range(value):
            got = self._parse(pos)
            if got is None:
                return None
            item, pos = got
            items.append(item)
        return items, pos


def read_all(data: bytes) -> list[object]:
    """Every complete reply in data; raises if bytes are left over."""
    reader = RespReader()
    reader.feed(data)
    replies = list(reader)
    if reader.pending:
        raise RespSyntaxError(f"{reader.pending} trailing bytes")
    return replies
