# RespConnection: the Python-visible face of the engine.
#
# Each batch method pins buffers with the GIL, runs the whole batch with the
# GIL released, then turns per-op C results into Python values. Per-key
# outcomes are results (a miss is None, a server -ERR is that key's error);
# only I/O and protocol failures raise, and they poison the connection.

from lmcache_valkey.errors import (ProtocolError, ServerReplyError, TlsError,
                                   ValkeyConnectionError, ValkeyTimeoutError)

# The engine's OpKind codes by command, for the one table of operations
# (lmcache_valkey/protocol/operations.py).
OP_KINDS = {"GET": OP_GET, "SET": OP_SET, "EXISTS": OP_EXISTS, "DEL": OP_DEL,
            "PEXPIRE": OP_PEXPIRE}


cdef class RespConnection(_Engine):
    """One RESP2 connection over a connected socket's fd, or (built with
    `over_socket`) over a socket object such as an ``ssl.SSLSocket``.

    The fd stays owned by the caller's socket object; this class never closes
    it. `label` (e.g. "127.0.0.1:6379") names the peer in exceptions and must
    not contain secrets.
    """

    cdef readonly str label

    def __init__(self, int fd, str label, *, double timeout_s=30.0,
                 int64_t max_bulk_len=512 * 1024 * 1024,
                 size_t max_inflight_bytes=64 * 1024 * 1024,
                 size_t rbuf_size=256 * 1024):
        if fd < 0:
            raise ValueError("fd must be a connected socket's file descriptor")
        if rbuf_size < MAX_LINE + 16:
            raise ValueError(f"rbuf_size must be at least {MAX_LINE + 16}")
        self.label = label
        self._init_engine(fd, timeout_s, max_bulk_len, max_inflight_bytes, rbuf_size)

    @classmethod
    def over_socket(cls, sock, str label, **options):
        """The same engine over a connected socket object (for valkeys://, a
        handshaken ``ssl.SSLSocket``): bytes move with ``sock.send`` and
        ``sock.recv_into`` (transport.pxi) instead of system calls on its fd.
        The socket is switched to non-blocking mode and must not be used by
        anyone else meanwhile; options are the constructor's."""
        cdef RespConnection conn
        sock.setblocking(False)
        conn = cls(sock.fileno(), label, **options)
        conn._use_socket(sock)
        return conn

    @property
    def transport(self):
        """"fd" (system calls on the fd) or "socket" (a socket object's methods)."""
        return "socket" if self.use_sock else "fd"

    @property
    def failed(self):
        """True once an I/O or protocol failure made this connection unusable."""
        return self.failure != F_NONE

    def set_timeout(self, double timeout_s):
        """Longest wait without progress, in seconds (<= 0: wait forever)."""
        self._set_timeout(timeout_s)

    def set_max_inflight_bytes(self, size_t max_inflight_bytes, size_t set_bytes=0):
        """GET reply bytes to request ahead, and SET value bytes to send
        ahead of their replies (`set_bytes`, 0: the same); between batches.
        At least one command always goes, however large its value."""
        if max_inflight_bytes < 1:
            raise ValueError("max_inflight_bytes must be >= 1")
        self.max_inflight_bytes = max_inflight_bytes
        self.max_inflight_set_bytes = set_bytes or max_inflight_bytes

    def abort(self):
        """Wake and fail a batch running in another thread (shutdown, no
        close: the fd stays valid until its owner closes it)."""
        self.aborted = True
        if self.fd >= 0:
            shutdown(self.fd, SHUT_RDWR)

    cdef object _failure_exception(self):
        cdef str what = (<bytes>self.fail_msg).decode() if self.fail_msg != NULL else "failed"
        cdef object raised
        if self.use_sock and self.failure == F_IO and self.sock_io.err_exc is not None:
            raised = self.sock_io.err_exc
            if not isinstance(raised, Exception):   # KeyboardInterrupt: raise it, once
                self.sock_io.err_exc = None
                return raised
        if self.signal_exc is not None:
            raised, self.signal_exc = self.signal_exc, None   # KeyboardInterrupt, once
            return raised
        if self.failure == F_TLS:
            return TlsError(f"{self.label}: TLS error: {self.sock_io.err_text}")
        if self.failure == F_TIMEOUT:
            return ValkeyTimeoutError(f"{self.label}: {what} (op_timeout_s)")
        if self.failure == F_PROTOCOL:
            if what == "unknown reply type byte":
                what = f"{what} {bytes([<uint8_t>self.fail_byte])!r}"
            return ProtocolError(f"{self.label}: protocol error: {what}")
        if self.failure == F_NOMEM:
            return MemoryError(what)
        if self.failure == F_IO:
            detail = (self.sock_io.err_text if self.use_sock and not self.fail_errno
                      else strerror(self.fail_errno).decode())
            return ValkeyConnectionError(f"{self.label}: {what}: {detail}")
        return ValkeyConnectionError(f"{self.label}: {what}")

    cdef int _run_pinned(self, int kind, _BufferPins pins, int64_t ttl_ms):
        cdef int rc
        if self.failure != F_NONE:
            raise self._failure_exception()
        with nogil:
            rc = self._run(kind, pins.ops, pins.nops, ttl_ms)
        return rc

    cdef tuple _collect(self, int kind, _BufferPins pins):
        """Per-op results: (values, server errors by index, too-large sizes)."""
        cdef Py_ssize_t i
        cdef Op *op
        cdef list values = []
        cdef dict errors = {}
        cdef dict too_large = {}
        for i in range(pins.nops):
            op = &pins.ops[i]
            if op.status == ST_OK:
                if kind == OP_SET:
                    values.append(True)
                elif kind == OP_EXISTS or kind == OP_PEXPIRE:
                    values.append(op.result > 0)
                else:
                    values.append(op.result)
            else:
                values.append(False if kind in (OP_SET, OP_EXISTS, OP_PEXPIRE) else None)
                if op.status == ST_SERVER_ERROR:
                    errors[i] = ServerReplyError(
                        (self.errs.data + op.err_off)[:op.err_len].decode("utf-8", "replace"))
                elif op.status == ST_TOO_LARGE and i < self.next_reply:
                    too_large[i] = op.result      # only once fully drained
        return values, errors, too_large

    cdef tuple _batch(self, int kind, list keys, list buffers, bint writable, int64_t ttl_ms):
        cdef _BufferPins pins = pin_batch(keys, buffers, writable)
        if self._run_pinned(kind, pins, ttl_ms) < 0:
            exc = self._failure_exception()
            # Completed keys are known; the rest are failed, never success.
            exc.partial = self._collect(kind, pins)
            raise exc
        return self._collect(kind, pins)

    def batch_get_into(self, list keys, list dests):
        """GET each key into its destination (a buffer or a list of segments).
        Returns (values, errors, too_large): values[i] is the byte count or
        None; errors maps index -> ServerReplyError; too_large maps index ->
        the stored length of values that did not fit (drained, not written)."""
        return self._batch(OP_GET, keys, dests, True, 0)

    def batch_set(self, list keys, list values, int64_t ttl_ms=0):
        """SET each key from its buffer (or list of segments), with PX ttl_ms
        when > 0. values[i] is True when stored."""
        if ttl_ms < 0:
            raise ValueError("ttl_ms must be >= 0")
        return self._batch(OP_SET, keys, values, False, ttl_ms)

    def batch_exists(self, list keys):
        return self._batch(OP_EXISTS, keys, None, False, 0)

    def batch_touch(self, list keys, int64_t ttl_ms):
        """PEXPIRE each key by ttl_ms: values[i] is True when the key exists
        (and now lives ttl_ms more). An EXISTS that also keeps the key."""
        if ttl_ms <= 0:
            raise ValueError("ttl_ms must be > 0")
        return self._batch(OP_PEXPIRE, keys, None, False, ttl_ms)

    def batch_delete(self, list keys):
        return self._batch(OP_DEL, keys, None, False, 0)

    # -- generic commands (control path: may allocate) ---------------------

    def execute(self, *args):
        """Send one command and return its reply as Python objects (bytes,
        int, str for simple strings, list, None). An error reply raises
        ServerReplyError; the connection stays usable."""
        cdef Py_ssize_t i
        cdef int rc
        if self.failure != F_NONE:
            raise self._failure_exception()
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        if not parts:
            raise ValueError("execute() needs a command")
        self.wbuf.len = 0
        if scratch_reserve(&self.wbuf, sum(len(p) for p in parts) + 32 * len(parts) + 32) < 0:
            raise MemoryError()
        put_array_header(&self.wbuf, len(parts))
        for p in parts:
            put_bulk(&self.wbuf, PyBytes_AS_STRING(p), PyBytes_GET_SIZE(p))
        self.iov[0].iov_base = self.wbuf.data
        self.iov[0].iov_len = self.wbuf.len
        self.iov_pos = 0
        self.iov_count = 1
        with nogil:
            rc = 0
            while self.iov_pos < self.iov_count and rc >= 0:
                rc = self._send_some(False)
                if rc == 0:
                    rc = self._wait(True)
        if rc < 0:
            raise self._failure_exception()
        reply = self._read_reply(0)
        if isinstance(reply, ServerReplyError):
            raise reply
        return reply

    cdef int _fill(self) except -1:
        """Block (without the GIL) until more bytes arrive."""
        cdef int r
        with nogil:
            while True:
                r = self._recv_some(False)
                if r != 0:
                    break
                if self._wait(False) < 0:
                    r = -1
                    break
        if r < 0:
            raise self._failure_exception()
        return 0

    cdef object _read_reply(self, int depth):
        cdef ReplyHeader h
        cdef const char *err = NULL
        cdef int st
        cdef int64_t n
        if depth > 8:
            self._fail(F_PROTOCOL, b"reply nested deeper than 8 arrays")
            raise self._failure_exception()
        while True:
            st = parse_header(self.rbuf + self.rpos, self.rlen - self.rpos, &h, &err)
            if st == PARSE_OK:
                break
            if st == PARSE_ERROR:
                self.fail_byte = self.rbuf[self.rpos]
                self._fail(F_PROTOCOL, err)
                raise self._failure_exception()
            self._fill()
        self.rpos += h.consumed
        if h.kind == b'+':
            return h.text[:h.text_len].decode("utf-8", "replace")
        if h.kind == b'-':
            return ServerReplyError(h.text[:h.text_len].decode("utf-8", "replace"))
        if h.kind == b':':
            return h.value
        if h.value == -1:
            return None
        if h.kind == b'*':
            return [self._read_reply(depth + 1) for _ in range(h.value)]
        # '$': the control path never sees KV-sized values; copy through rbuf.
        n = h.value
        if n > self.max_bulk:
            self._fail(F_PROTOCOL, b"bulk reply longer than max_bulk_len")
            raise self._failure_exception()
        out = bytearray()
        while <int64_t>len(out) < n + 2:
            if self.rpos == self.rlen:
                self._fill()
            take = min(self.rlen - self.rpos, n + 2 - len(out))
            out += self.rbuf[self.rpos:self.rpos + take]
            self.rpos += take
        if out[n:] != b"\r\n":
            self._fail(F_PROTOCOL, b"bulk reply not terminated by CRLF")
            raise self._failure_exception()
        del out[n:]
        return bytes(out)


def parse_reply_header(bytes data):
    """Test hook: run the header parser on `data`.
    Returns None (needs more bytes), or (kind, value, text, consumed);
    raises ProtocolError for malformed input."""
    cdef ReplyHeader h
    cdef const char *err = NULL
    cdef int st = parse_header(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), &h, &err)
    if st == PARSE_NEED_MORE:
        return None
    if st == PARSE_ERROR:
        raise ProtocolError((<bytes>err).decode())
    return (chr(<uint8_t>h.kind), h.value, h.text[:h.text_len], h.consumed)


# True when built with LMCACHE_VALKEY_DEBUG=1 (internal checks compiled in).
DEBUG_BUILD = bool(LMV_DEBUG)
