"""RESP over TLS: the batch engine's contract on an ``ssl.SSLSocket``.

The native engine (cython_ext/engine.pxi) drives a raw fd with sendmsg/readv,
which cannot encrypt. ``TlsRespConnection`` offers the same interface as
``_native.RespConnection`` - the same batch methods, the same per-key results,
the same exceptions and ``.partial`` - over Python's ``ssl`` module, so the
client façade does not know which one it holds.

Where the bytes go:

* Bulk bodies are decrypted straight into the caller's memory with
  ``SSLSocket.recv_into(memoryview(dest)[off:], n)``, which releases the GIL
  while OpenSSL decrypts. Only reply headers, CRLFs and whatever bytes of a
  body arrived in the same TLS record as its header pass through the small
  receive buffer (at most one record, 16 KiB, per value).
* Values are encrypted from the caller's buffers: ``sendall(memoryview)``.
  Small values (up to ``_INLINE_VALUE``) are copied next to their command
  header instead, because each separate write costs a TLS record of its own.

Pipelining without a second thread: commands go out in windows and the
replies of one window are read while the next window is already sent, so
there is never more than two windows in flight. Windows are bounded so that
a blocking ``sendall`` can never deadlock against a server that is writing
replies we have not read yet:

* GET: a window's reply capacity is at most max_inflight_bytes / 2 (two
  windows: max_inflight_bytes, as in the native engine), and its command
  bytes at most ``_GET_WINDOW_CMD_BYTES``, small enough to sit in socket
  buffers even if the server stopped reading while it cannot write;
* SET: a window's value bytes are at most half the SET in-flight budget
  (server_profile.py); the replies it leaves unread are a few bytes per key.

Failures are sticky as in the native engine: after an I/O, TLS, timeout or
protocol failure every call raises, and the Python layer replaces the
connection. ``abort()`` from another thread shuts the socket down, so a
blocked read or write returns at once and the batch fails with "connection
closed by the client".
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
from typing import Any

from .buffers import byte_segments
from .errors import (
    ProtocolError,
    ServerReplyError,
    TlsError,
    ValkeyConnectionError,
    ValkeyTimeoutError,
)
from .operations import DELETE, EXISTS, GET, SET, TOUCH

# Same framing limits as the native parser (cython_ext/resp_parser.pxi).
MAX_LINE = 65536
MAX_DIGITS = 18
MAX_ERROR_TEXT = 512
_INTEGER = re.compile(rb"-?[0-9]+\Z")

# Values up to this size are copied into the command buffer: cheaper than a
# TLS record (and a syscall) of their own.
_INLINE_VALUE = 16 * 1024
# Flush the command buffer once it holds this much.
_WBUF_FLUSH = 64 * 1024
# Command bytes of one GET window (see the module docstring).
_GET_WINDOW_CMD_BYTES = 64 * 1024
# Keys per window, so the replies left unread stay small.
_WINDOW_KEYS = 1024

# The engine's codes, as the native engine numbers them (lmcache_valkey.operations).
_GET, _SET, _EXISTS, _DEL, _PEXPIRE = GET.code, SET.code, EXISTS.code, DELETE.code, TOUCH.code


class _Failed(Exception):
    """Internal: the connection failed; the sticky exception is built."""


def _bulk(arg: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(arg), arg)


def encode_command(parts: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(_bulk(p) for p in parts)


class _Op:
    """One key's command and, after its reply, its outcome."""

    __slots__ = ("key", "segs", "cap", "status", "result", "error")

    def __init__(self, key: bytes, segs: list[memoryview]) -> None:
        self.key = key
        self.segs = segs
        self.cap = sum(s.nbytes for s in segs)
        self.status = 0      # 0 pending, 1 ok, 2 miss, 3 too large, 4 server error
        self.result = 0
        self.error: ServerReplyError | None = None


class TlsRespConnection:
    """One RESP2 connection over a connected, handshaken ``ssl.SSLSocket``.

    The socket stays owned by the caller (``Connection.close`` closes it).
    `label` names the peer in exceptions and must not contain secrets.
    """

    def __init__(self, sock: ssl.SSLSocket, label: str, *, timeout_s: float = 30.0,
                 max_bulk_len: int = 512 * 1024 * 1024,
                 max_inflight_bytes: int = 64 * 1024 * 1024,
                 rbuf_size: int = 256 * 1024) -> None:
        if rbuf_size < MAX_LINE + 16:
            raise ValueError(f"rbuf_size must be at least {MAX_LINE + 16}")
        self.label = label
        self._sock = sock
        self._max_bulk = max_bulk_len
        self._max_inflight = max_inflight_bytes
        self._max_inflight_set = max_inflight_bytes
        self._rbuf = bytearray(rbuf_size)
        self._rview = memoryview(self._rbuf)
        self._rpos = 0
        self._rlen = 0
        self._failure: tuple[type[ValkeyConnectionError], str] | None = None
        self._aborted = False
        self.set_timeout(timeout_s)

    # -- state -------------------------------------------------------------

    @property
    def failed(self) -> bool:
        """True once an I/O or protocol failure made this connection unusable."""
        return self._failure is not None

    def set_timeout(self, timeout_s: float) -> None:
        """Longest wait without progress, in seconds (<= 0: wait forever).
        Each TLS read or write waits at most this long."""
        self._sock.settimeout(timeout_s if timeout_s > 0 else None)

    def set_max_inflight_bytes(self, max_inflight_bytes: int, set_bytes: int = 0) -> None:
        """GET reply bytes to request ahead, SET value bytes to send ahead
        (`set_bytes`, 0: the same); between batches."""
        if max_inflight_bytes < 1:
            raise ValueError("max_inflight_bytes must be >= 1")
        self._max_inflight = max_inflight_bytes
        self._max_inflight_set = set_bytes or max_inflight_bytes

    def abort(self) -> None:
        """Wake and fail a batch running in another thread. The socket-level
        shutdown (not SSLSocket.shutdown, which would drop the TLS object
        under the reading thread) makes a blocked read see EOF at once."""
        self._aborted = True
        with contextlib.suppress(OSError):  # not connected any more: nothing to wake
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def _fail(self, cls: type[ValkeyConnectionError], msg: str) -> _Failed:
        if self._failure is None:
            if self._aborted:  # whatever the socket said, the client caused it
                cls, msg = ValkeyConnectionError, "connection closed by the client"
            self._failure = (cls, f"{self.label}: {msg}")
        return _Failed()

    def _failure_exception(self) -> ValkeyConnectionError:
        assert self._failure is not None
        cls, msg = self._failure
        return cls(msg)

    def _io_failed(self, e: OSError, what: str) -> _Failed:
        if isinstance(e, TimeoutError):
            return self._fail(ValkeyTimeoutError, "timed out waiting for the server (op_timeout_s)")
        if isinstance(e, (ssl.SSLZeroReturnError, ssl.SSLEOFError)):
            return self._fail(ValkeyConnectionError, "connection closed by the server")
        if isinstance(e, ssl.SSLError):
            return self._fail(TlsError, f"TLS error: {tls_reason(e)}")
        return self._fail(ValkeyConnectionError, f"{what}: {e.strerror or e}")

    # -- receiving -----------------------------------------------------------

    def _fill(self, eof_msg: str = "connection closed by the server") -> None:
        """Append whatever the next TLS read gives to the receive buffer."""
        live = self._rlen - self._rpos
        if live == 0:
            self._rpos = self._rlen = 0
        elif self._rpos > 0 and (len(self._rbuf) - self._rlen < 4096
                                 or self._rpos >= len(self._rbuf) // 2):
            self._rbuf[:live] = self._rview[self._rpos:self._rlen]
            self._rpos, self._rlen = 0, live
        if self._rlen == len(self._rbuf):
            raise self._protocol("reply line longer than the receive buffer")
        try:
            n = self._sock.recv_into(self._rview[self._rlen:])
        except OSError as e:
            raise self._io_failed(e, "receive failed") from None
        if n == 0:
            raise self._fail(ValkeyConnectionError, eof_msg)
        self._rlen += n

    def _protocol(self, what: str) -> _Failed:
        return self._fail(ProtocolError, f"protocol error: {what}")

    def _header(self) -> tuple[int, int, bytes]:
        """The next reply line: (type byte, value, text). value is the
        length / integer, -1 for a null, 0 for simple strings and errors."""
        buf = self._rbuf
        while True:
            start = self._rpos
            lf = buf.find(b"\n", start, min(self._rlen, start + MAX_LINE))
            if lf >= 0:
                break
            if self._rlen - start >= MAX_LINE:
                raise self._protocol("reply line longer than 64 KiB")
            self._fill()
        if lf == start or buf[lf - 1] != 13:
            raise self._protocol("reply line not terminated by CRLF")
        kind = buf[start]
        text = bytes(buf[start + 1:lf - 1])
        self._rpos = lf + 1
        if kind in b"$*:":
            if not _INTEGER.match(text):
                raise self._protocol("empty integer in reply header" if text in (b"", b"-")
                                     else "non-digit in reply header integer")
            if len(text.lstrip(b"-")) > MAX_DIGITS:
                raise self._protocol("integer in reply header is too long")
            value = int(text)
            if kind != 58 and value < -1:  # ':'
                raise self._protocol("negative length in reply header")
            return kind, value, text
        if kind in b"+-":
            return kind, 0, text
        if kind == 95:  # '_': the RESP3 null, read as a null as the engine does
            if text:
                raise self._protocol("malformed null reply")
            return kind, -1, text
        raise self._protocol(f"unknown reply type byte {bytes([kind])!r}")

    def _read_body(self, segs: list[memoryview], n: int) -> None:
        """Receive an n-byte bulk body into segs (their total is >= n),
        then its CRLF. Bytes already buffered are copied; the rest is
        decrypted straight into the destination."""
        left = n
        for seg in segs:
            if left == 0:
                break
            want = min(seg.nbytes, left)
            off = 0
            have = self._rlen - self._rpos
            if have:
                take = min(have, want)
                seg[:take] = self._rview[self._rpos:self._rpos + take]
                self._rpos += take
                off = take
            while off < want:
                try:
                    got = self._sock.recv_into(seg[off:want], want - off)
                except OSError as e:
                    raise self._io_failed(e, "receive failed") from None
                if got == 0:
                    raise self._fail(ValkeyConnectionError,
                                     "connection closed by the server mid-value")
                off += got
            left -= want
        self._read_crlf()

    def _drain(self, n: int) -> None:
        """Skip an n-byte body that does not fit its destination, and its CRLF."""
        while n:
            if self._rpos == self._rlen:
                self._fill()
            take = min(self._rlen - self._rpos, n)
            self._rpos += take
            n -= take
        self._read_crlf()

    def _read_crlf(self) -> None:
        while self._rlen - self._rpos < 2:
            self._fill()
        if self._rbuf[self._rpos:self._rpos + 2] != b"\r\n":
            raise self._protocol("bulk reply not terminated by CRLF")
        self._rpos += 2

    def _on_reply(self, kind: int, op: _Op) -> None:
        """Read one reply and record what it means for its command."""
        t, value, text = self._header()
        if t == 45:  # '-'
            op.status = 4
            op.error = ServerReplyError(text[:MAX_ERROR_TEXT].decode("utf-8", "replace"))
            return
        if kind == _GET:
            if t in b"$_" and value == -1:
                op.status = 2
                return
            if t != 36:  # '$'
                raise self._protocol("unexpected reply type to GET")
            if value > self._max_bulk:
                raise self._protocol("bulk reply longer than max_bulk_len")
            if value > op.cap:
                self._drain(value)  # too large: reported only once fully drained
                op.status, op.result = 3, value
            else:
                # Stays pending until body and CRLF are in: a connection lost
                # mid-body must never report success.
                self._read_body(op.segs, value)
                op.status, op.result = 1, value
            return
        if kind == _SET:
            if t == 43:  # '+'
                op.status, op.result = 1, 1
            elif t in b"$_" and value == -1:
                op.status = 2
            else:
                raise self._protocol("unexpected reply type to SET")
            return
        if t != 58:
            raise self._protocol("unexpected reply type (expected an integer)")
        op.status, op.result = 1, value

    # -- sending -----------------------------------------------------------

    def _send(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._sock.sendall(data)
        except OSError as e:
            raise self._io_failed(e, "send failed") from None

    def _send_window(self, kind: int, ops: list[_Op], ttl_ms: int) -> None:
        wbuf = bytearray()
        ttl = (b"$2\r\nPX\r\n" + _bulk(b"%d" % ttl_ms)) if ttl_ms > 0 else b""
        for op in ops:
            if kind == _SET:
                wbuf += b"*%d\r\n$3\r\nSET\r\n" % (5 if ttl else 3)
                wbuf += _bulk(op.key)
                wbuf += b"$%d\r\n" % op.cap
                if op.cap <= _INLINE_VALUE:
                    for s in op.segs:
                        wbuf += s
                else:
                    # A large value goes out from the caller's memory.
                    self._send(wbuf)
                    wbuf.clear()
                    for s in op.segs:
                        self._send(s)
                wbuf += b"\r\n" + ttl
            elif kind == _PEXPIRE:
                wbuf += b"*3\r\n$7\r\nPEXPIRE\r\n" + _bulk(op.key) + _bulk(b"%d" % ttl_ms)
            else:
                name = b"$3\r\nGET\r\n" if kind == _GET else (
                    b"$6\r\nEXISTS\r\n" if kind == _EXISTS else b"$3\r\nDEL\r\n")
                wbuf += b"*2\r\n" + name + _bulk(op.key)
            if len(wbuf) >= _WBUF_FLUSH:
                self._send(wbuf)
                wbuf.clear()
        if wbuf:
            self._send(wbuf)

    def _windows(self, kind: int, ops: list[_Op]) -> list[list[_Op]]:
        """Cut the batch into windows (see the module docstring)."""
        half = max((self._max_inflight_set if kind == _SET else self._max_inflight) // 2, 1)
        windows: list[list[_Op]] = []
        cur: list[_Op] = []
        nbytes = cmd_bytes = 0
        for op in ops:
            size = op.cap if kind in (_GET, _SET) else 0
            extra = len(op.key) + 40
            if cur and (len(cur) >= _WINDOW_KEYS or nbytes + size > half or (
                    kind == _GET and cmd_bytes + extra > _GET_WINDOW_CMD_BYTES)):
                windows.append(cur)
                cur, nbytes, cmd_bytes = [], 0, 0
            cur.append(op)
            nbytes += size
            cmd_bytes += extra
        if cur:
            windows.append(cur)
        return windows

    # -- batches -----------------------------------------------------------

    def _run(self, kind: int, keys: list[bytes], buffers: list[Any] | None,
             writable: bool, ttl_ms: int) -> tuple[list[Any], dict[int, ServerReplyError],
                                                   dict[int, int]]:
        if not isinstance(keys, list) or (buffers is not None and not isinstance(buffers, list)):
            raise TypeError("keys and buffers must be lists")
        if self._failure is not None:
            raise self._failure_exception()
        if buffers is not None and len(buffers) != len(keys):
            raise ValueError(f"{len(keys)} keys but {len(buffers)} buffers")
        ops: list[_Op] = []
        try:
            for i, k in enumerate(keys):
                if type(k) is not bytes:
                    raise TypeError(f"key #{i} must be bytes at this layer, not {type(k).__name__}")
                segs = [] if buffers is None else byte_segments(buffers[i], writable, i)
                ops.append(_Op(k, segs))
            if self._aborted:
                raise self._fail(ValkeyConnectionError, "connection closed by the client")
            try:
                windows = self._windows(kind, ops)
                if windows:
                    self._send_window(kind, windows[0], ttl_ms)
                for w, window in enumerate(windows):
                    if w + 1 < len(windows):  # keep the server busy while we read
                        self._send_window(kind, windows[w + 1], ttl_ms)
                    for op in window:
                        self._on_reply(kind, op)
            except _Failed:
                exc = self._failure_exception()
                exc.partial = _collect(kind, ops)  # completed keys exact, rest failed
                raise exc from None
            return _collect(kind, ops)
        finally:
            for op in ops:  # unpin: the caller may resize or free its buffers now
                for s in op.segs:
                    s.release()

    def batch_get_into(self, keys: list[bytes], dests: list[Any]) -> Any:
        """GET each key into its destination (a buffer or a list of segments).
        Returns (values, errors, too_large) exactly as RespConnection does."""
        return self._run(_GET, keys, dests, True, 0)

    def batch_set(self, keys: list[bytes], values: list[Any], ttl_ms: int = 0) -> Any:
        if ttl_ms < 0:
            raise ValueError("ttl_ms must be >= 0")
        return self._run(_SET, keys, values, False, ttl_ms)

    def batch_exists(self, keys: list[bytes]) -> Any:
        return self._run(_EXISTS, keys, None, False, 0)

    def batch_touch(self, keys: list[bytes], ttl_ms: int) -> Any:
        if ttl_ms <= 0:
            raise ValueError("ttl_ms must be > 0")
        return self._run(_PEXPIRE, keys, None, False, ttl_ms)

    def batch_delete(self, keys: list[bytes]) -> Any:
        return self._run(_DEL, keys, None, False, 0)

    # -- generic commands (control path) -------------------------------------

    def execute(self, *args: bytes | str | int) -> Any:
        """Send one command and return its reply (bytes, int, str for simple
        strings, list, None). An error reply raises ServerReplyError."""
        if self._failure is not None:
            raise self._failure_exception()
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        if not parts:
            raise ValueError("execute() needs a command")
        try:
            if self._aborted:
                raise self._fail(ValkeyConnectionError, "connection closed by the client")
            self._send(encode_command(parts))
            reply = self._read_reply(0)
        except _Failed:
            raise self._failure_exception() from None
        if isinstance(reply, ServerReplyError):
            raise reply
        return reply

    def _read_reply(self, depth: int) -> Any:
        if depth > 8:
            raise self._protocol("reply nested deeper than 8 arrays")
        t, value, text = self._header()
        if t == 43:
            return text.decode("utf-8", "replace")
        if t == 45:
            return ServerReplyError(text.decode("utf-8", "replace"))
        if t == 58:
            return value
        if value == -1:
            return None
        if t == 42:
            return [self._read_reply(depth + 1) for _ in range(value)]
        if value > self._max_bulk:
            raise self._protocol("bulk reply longer than max_bulk_len")
        out = bytearray(value)
        with memoryview(out) as m:
            self._read_body([m] if value else [], value)
        return bytes(out)


def _collect(kind: int, ops: list[_Op]) -> tuple[list[Any], dict[int, ServerReplyError],
                                                         dict[int, int]]:
    """Per-op results: (values, server errors by index, too-large sizes)."""
    values: list[Any] = []
    errors: dict[int, ServerReplyError] = {}
    too_large: dict[int, int] = {}
    for i, op in enumerate(ops):
        if op.status == 1:
            if kind == _SET:
                values.append(True)
            elif kind in (_EXISTS, _PEXPIRE):
                values.append(op.result > 0)
            else:
                values.append(op.result)
        else:
            values.append(False if kind in (_SET, _EXISTS, _PEXPIRE) else None)
            if op.status == 4:
                assert op.error is not None
                errors[i] = op.error
            elif op.status == 3:
                too_large[i] = op.result
    return values, errors, too_large


def tls_reason(e: ssl.SSLError) -> str:
    """A short, human reason for a TLS failure, e.g. 'certificate verify
    failed: self-signed certificate' or 'tlsv13 alert certificate required'."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {e.verify_message}"
    if e.reason:
        return str(e.reason).lower().replace("_", " ")
    return str(e)
