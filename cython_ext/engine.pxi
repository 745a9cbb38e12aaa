# The batch engine: one connection, one pipelined batch, no GIL.
#
# Sending and receiving are interleaved in one loop of non-blocking calls
# (MSG_DONTWAIT), so a batch of large SETs can never deadlock against a server
# that is busy writing replies, and a batch of large GETs never waits for all
# requests to be written first. Bulk bodies are received straight into the
# caller's segments with recvmsg(dest..., rbuf): the tail of the read lands in
# the small receive buffer, where the next reply header is parsed.
#
# One call blocks: when a body is arriving and there is nothing to send (every
# command is out, or the in-flight limit holds the next one back), the rest of
# the body is taken with one recvmsg(MSG_WAITALL) on the (blocking) socket, as
# LMCache's C++ client does. The kernel then wakes the thread only to copy,
# instead of a poll() + recvmsg() + a recvmsg() that says EAGAIN per segment
# the server writes (strace, 3 x 32 x 4 MiB GETs from Redis 7: 128 recvmsg
# and 185 poll instead of 1170 recvmsg and 359 poll; client CPU per GB a few
# per cent lower -- the server, not this loop, bounds the throughput there).
# SO_RCVTIMEO bounds that wait with the same no-progress timeout; on a
# non-blocking fd the call just returns EAGAIN and the loop polls as before.
# Nothing here allocates per reply or knows about prefixes, TTL policy,
# LMCache or vLLM.
#
# Over a socket object (TLS) the same loop runs with SockTransport's calls in
# place of the fd's (transport.pxi): the `use_sock` branches below. There
# every wait is a poll(), never the blocking body receive.

from cpython.exc cimport PyErr_CheckSignals


cdef enum OpKind:
    OP_GET = 1
    OP_SET = 2
    OP_EXISTS = 3
    OP_DEL = 4
    OP_PEXPIRE = 5     # "exists, and keep it for ttl_ms more": :1 / :0

cdef enum OpStatus:
    ST_PENDING = 0
    ST_OK = 1          # GET: bytes written; SET: stored; EXISTS/DEL: integer
    ST_MISS = 2        # null reply (GET miss, SET condition not met)
    ST_TOO_LARGE = 3   # GET value did not fit: drained, result = its length
    ST_SERVER_ERROR = 4  # -ERR ...: text in the connection's error scratch

cdef enum RecvState:
    RS_HEADER = 0
    RS_BODY = 1
    RS_CRLF = 2
    RS_DRAIN = 3

# Why a connection stopped being usable. Sticky: a failed connection is
# never used again (the Python layer replaces it).
cdef enum Failure:
    F_NONE = 0
    F_IO = 1
    F_EOF = 2
    F_TIMEOUT = 3
    F_PROTOCOL = 4
    F_NOMEM = 5
    F_ABORTED = 6
    F_TLS = 7          # the socket transport's TLS layer failed (text in the transport)
    F_SIGNAL = 8       # a signal handler raised (Ctrl-C) while the batch ran


ctypedef struct Seg:
    char *ptr
    size_t len


ctypedef struct Op:
    const char *key
    size_t klen
    Seg *segs            # GET: destination segments; SET: value segments
    int nsegs
    size_t cap           # sum of segment lengths
    int64_t result
    int status
    size_t err_off       # server error text, in RespConnection.errs
    size_t err_len


# Per-window limits. A window is the set of commands encoded into the scratch
# buffer and handed to sendmsg together.
cdef size_t WINDOW_SCRATCH = 65536
cdef int WINDOW_IOVS = 512
cdef size_t MAX_ERROR_TEXT = 512
cdef int BODY_IOVS = 64


cdef class _Engine:
    """Socket I/O state of one connection. The socket itself (and closing
    it) belongs to the Python layer; the engine borrows its fd."""

    cdef int fd
    cdef bint fd_blocking      # may a body be received with one blocking call?
    cdef int timeout_ms
    cdef int64_t max_bulk
    cdef size_t max_inflight_bytes      # GET reply bytes requested ahead
    cdef size_t max_inflight_set_bytes  # SET value bytes sent ahead of their +OK

    cdef char *rbuf
    cdef size_t rcap
    cdef size_t rpos
    cdef size_t rlen

    cdef Scratch wbuf
    cdef Scratch errs
    cdef iovec *iov
    cdef int window_iovs       # iov[0:window_iovs] for sending, then BODY_IOVS + 1 for readv
    cdef int iov_pos
    cdef int iov_count

    # Per-batch progress.
    cdef Py_ssize_t next_encode
    cdef Py_ssize_t next_reply
    cdef size_t inflight_bytes
    cdef int rstate
    cdef int64_t body_left
    cdef int seg_idx
    cdef size_t seg_off
    cdef int64_t bulk_len

    cdef int failure
    cdef int fail_errno
    cdef const char *fail_msg
    cdef char fail_byte
    cdef volatile bint aborted

    cdef bint use_sock             # the socket-object transport, not the fd's calls
    cdef SockTransport sock_io
    cdef object signal_exc         # what a signal handler raised (F_SIGNAL), raised once

    def __cinit__(self):
        self.fd = -1
        self.rbuf = NULL
        self.iov = NULL
        self.wbuf.data = NULL
        self.wbuf.len = self.wbuf.cap = 0
        self.errs.data = NULL
        self.errs.len = self.errs.cap = 0

    def __dealloc__(self):
        free(self.rbuf)
        free(self.iov)
        free(self.wbuf.data)
        free(self.errs.data)

    cdef int _init_engine(self, int fd, double timeout_s, int64_t max_bulk,
                          size_t max_inflight_bytes, size_t rbuf_size) except -1:
        self.fd = fd
        self.fd_blocking = (fcntl(fd, F_GETFL) & O_NONBLOCK) == 0
        self._set_timeout(timeout_s)
        self.max_bulk = max_bulk
        self.max_inflight_bytes = max_inflight_bytes
        self.max_inflight_set_bytes = max_inflight_bytes
        self.rcap = rbuf_size
        self.rbuf = <char *>malloc(rbuf_size)
        self.window_iovs = WINDOW_IOVS
        self.iov = <iovec *>malloc(sizeof(iovec) * (WINDOW_IOVS + BODY_IOVS + 1))
        if self.rbuf == NULL or self.iov == NULL or scratch_reserve(&self.wbuf, WINDOW_SCRATCH) < 0:
            raise MemoryError()
        self.rpos = self.rlen = 0
        return 0

    cdef int _use_socket(self, object sock) except -1:
        """Move bytes with sock.send / sock.recv_into instead of the fd's
        system calls (transport.pxi). The socket must be non-blocking."""
        self.sock_io = SockTransport(sock)
        self.use_sock = True
        self.fd_blocking = False
        return 0

    cdef inline void _set_timeout(self, double timeout_s) noexcept:
        """poll() milliseconds for a no-progress timeout; <= 0 waits forever.
        The blocking body receive gets the same bound through SO_RCVTIMEO."""
        cdef timeval tv
        self.timeout_ms = <int>(timeout_s * 1000) if timeout_s > 0 else -1
        if self.fd_blocking:
            tv.tv_sec = self.timeout_ms // 1000 if self.timeout_ms > 0 else 0
            tv.tv_usec = (self.timeout_ms % 1000) * 1000 if self.timeout_ms > 0 else 0
            if (setsockopt(self.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 or
                    setsockopt(self.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0):
                self.fd_blocking = False  # not a socket we may block on: poll instead

    # -- failure -----------------------------------------------------------

    cdef inline int _fail(self, int kind, const char *msg) noexcept nogil:
        if self.failure == F_NONE:
            self.fail_errno = errno if kind == F_IO else 0
            if self.aborted:  # whatever the socket said, the client caused it
                self.failure = F_ABORTED
                self.fail_msg = b"connection closed by the client"
            else:
                self.failure = kind
                self.fail_msg = msg
        return -1

    cdef int _eintr(self) noexcept nogil:
        """After EINTR (or a blocking call cut short): run Python's signal
        handlers, as time.sleep does. A batch may run on the main thread (the
        caller of a blocking call runs it, workers.py): Ctrl-C must stop it,
        not wait for the batch to end. Elsewhere this is a no-op (CPython runs
        handlers on the main thread only).
        0: retry the interrupted call; -1: a handler raised, the batch fails."""
        with gil:
            try:
                PyErr_CheckSignals()
            except BaseException as e:
                self.signal_exc = e
        if self.signal_exc is not None:
            return self._fail(F_SIGNAL, b"interrupted by a signal")
        return 0

    # -- sending -----------------------------------------------------------

    cdef inline void _iov_scratch(self, size_t start) noexcept nogil:
        """Point an iovec at wbuf[start:len], merging with the previous one
        when that also ends in the scratch buffer right at `start`."""
        cdef iovec *last
        if self.wbuf.len == start:
            return
        if self.iov_count > 0:
            last = &self.iov[self.iov_count - 1]
            if <char *>last.iov_base + last.iov_len == self.wbuf.data + start:
                last.iov_len += self.wbuf.len - start
                return
        self.iov[self.iov_count].iov_base = self.wbuf.data + start
        self.iov[self.iov_count].iov_len = self.wbuf.len - start
        self.iov_count += 1

    cdef int _encode_window(self, int kind, Op *ops, Py_ssize_t n,
                            int64_t ttl_ms) noexcept nogil:
        """Encode the next commands into a fresh window. Called only when the
        previous window is fully sent, so the scratch buffer may move."""
        cdef Op *op
        cdef size_t start, need
        cdef int k
        self.wbuf.len = 0
        self.iov_pos = self.iov_count = 0
        while self.next_encode < n:
            op = &ops[self.next_encode]
            need = op.klen + CMD_OVERHEAD
            if self.wbuf.len + need > self.wbuf.cap:
                if self.iov_count > 0:
                    break                       # pointers into wbuf are live
                if scratch_reserve(&self.wbuf, need) < 0:
                    return self._fail(F_NOMEM, b"out of memory encoding commands")
            if self.wbuf.len >= WINDOW_SCRATCH and self.iov_count > 0:
                break
            if self.iov_count + op.nsegs + 2 > self.window_iovs and self.iov_count > 0:
                break
            if kind == OP_GET or kind == OP_SET:
                # Bound the GET reply bytes the server queues for us, and the
                # SET value bytes it has not acknowledged yet. Over the socket
                # transport a second SET may go while the first waits for its
                # +OK: encrypting the next value hides that round trip (32 x
                # 4 MiB over TLS: SET 1.28 GB/s, 1.15 with one at a time).
                if (self.inflight_bytes > 0 and
                        self.inflight_bytes + op.cap > self._inflight_limit(kind) and
                        not (self.use_sock and kind == OP_SET and
                             self.next_encode - self.next_reply < 2)):
                    break
                self.inflight_bytes += op.cap
            start = self.wbuf.len
            if kind == OP_SET:
                put_array_header(&self.wbuf, 5 if ttl_ms > 0 else 3)
                put_bulk(&self.wbuf, b"SET", 3)
                put_bulk(&self.wbuf, op.key, op.klen)
                put_bulk_header(&self.wbuf, op.cap)
                self._iov_scratch(start)
                for k in range(op.nsegs):
                    if op.segs[k].len:
                        self.iov[self.iov_count].iov_base = op.segs[k].ptr
                        self.iov[self.iov_count].iov_len = op.segs[k].len
                        self.iov_count += 1
                start = self.wbuf.len
                _put(&self.wbuf, b"\r\n", 2)
                if ttl_ms > 0:
                    put_bulk(&self.wbuf, b"PX", 2)
                    put_bulk_uint(&self.wbuf, <uint64_t>ttl_ms)
            elif kind == OP_PEXPIRE:
                put_array_header(&self.wbuf, 3)
                put_bulk(&self.wbuf, b"PEXPIRE", 7)
                put_bulk(&self.wbuf, op.key, op.klen)
                put_bulk_uint(&self.wbuf, <uint64_t>ttl_ms)
            else:
                put_array_header(&self.wbuf, 2)
                if kind == OP_GET:
                    put_bulk(&self.wbuf, b"GET", 3)
                elif kind == OP_EXISTS:
                    put_bulk(&self.wbuf, b"EXISTS", 6)
                else:
                    put_bulk(&self.wbuf, b"DEL", 3)
                put_bulk(&self.wbuf, op.key, op.klen)
            self._iov_scratch(start)
            self.next_encode += 1
        return 0

    cdef int _send_some(self, bint may_block) noexcept nogil:
        """One sendmsg of the unsent part of the window. With `may_block`
        (a SET batch: its replies are a few bytes each, nothing to read
        meanwhile) on a blocking fd, the call waits for room in the kernel
        and sends it all, bounded by SO_SNDTIMEO, as LMCache's client's
        writev does.
        Returns 1 (bytes went out), 0 (socket full) or -1 (failed)."""
        cdef msghdr msg
        cdef ssize_t r
        cdef int cnt = self.iov_count - self.iov_pos
        cdef int end
        cdef bint blocking = may_block and self.fd_blocking
        if self.use_sock:
            return self._sock_send_some()
        if cnt > LMV_IOV_MAX:
            cnt = LMV_IOV_MAX
        memset(&msg, 0, sizeof(msg))
        msg.msg_iov = &self.iov[self.iov_pos]
        msg.msg_iovlen = cnt
        end = self.iov_pos + cnt
        while True:
            r = sendmsg(self.fd, &msg, MSG_NOSIGNAL | (0 if blocking else MSG_DONTWAIT))
            if r >= 0:
                break
            if errno == EINTR:
                if self._eintr() < 0:
                    return -1
                continue
            if errno == EAGAIN or errno == EWOULDBLOCK:
                if blocking:   # SO_SNDTIMEO ran out with nothing sent
                    return self._fail(F_TIMEOUT, b"timed out sending to the server")
                return 0
            return self._fail(F_IO, b"send failed")
        self._sent(r)
        # A signal (or SO_SNDTIMEO) cuts a blocking send short, not EINTR.
        if blocking and self.iov_pos < end and self._eintr() < 0:
            return -1
        return 1

    cdef int _sock_send_some(self) noexcept nogil:
        """_send_some over the socket transport: one send of the next piece,
        or of the next small pieces copied together (one TLS record, not one
        per command header). A blocked send is retried with the same bytes:
        nothing here changes until a send succeeds."""
        cdef iovec *v = &self.iov[self.iov_pos]
        cdef const char *p = <const char *>v.iov_base
        cdef size_t n = v.iov_len
        cdef int end = self.iov_pos + 1
        cdef int k
        cdef ssize_t r
        if n < SOCK_COALESCE:
            while end < self.iov_count and n + self.iov[end].iov_len <= SOCK_COALESCE:
                n += self.iov[end].iov_len
                end += 1
            if end > self.iov_pos + 1:
                n = 0
                for k in range(self.iov_pos, end):
                    memcpy(self.sock_io.cbuf + n, self.iov[k].iov_base, self.iov[k].iov_len)
                    n += self.iov[k].iov_len
                p = self.sock_io.cbuf
        elif n > SOCK_SEND_MAX:
            n = SOCK_SEND_MAX
        r = self.sock_io.send(p, n)
        if r == T_BLOCKED:
            return 0
        if r < 0:
            return self._sock_failed(b"send failed")
        self._sent(r)
        return 1

    cdef int _sock_failed(self, const char *what) noexcept nogil:
        """Fail with what the socket transport reported."""
        cdef int kind = self.sock_io.err_kind
        if kind == F_NONE:   # not expected: still never a silent success
            kind = F_IO
        if kind == F_EOF:
            return self._fail(F_EOF, b"connection closed by the server")
        if kind != F_IO:
            what = b"TLS error"
        self._fail(kind, what)
        if self.failure == F_IO:
            self.fail_errno = self.sock_io.err_errno
        return -1

    cdef inline void _sent(self, ssize_t r) noexcept nogil:
        """Move the window's cursor past r sent bytes."""
        while r > 0:
            if <size_t>r >= self.iov[self.iov_pos].iov_len:
                r -= self.iov[self.iov_pos].iov_len
                self.iov_pos += 1
            else:
                self.iov[self.iov_pos].iov_base = <char *>self.iov[self.iov_pos].iov_base + r
                self.iov[self.iov_pos].iov_len -= r
                r = 0
        # Zero-length tail entries (none are added, but be safe).
        while self.iov_pos < self.iov_count and self.iov[self.iov_pos].iov_len == 0:
            self.iov_pos += 1

    # -- receiving ---------------------------------------------------------

    cdef int _recv_some(self, bint may_block) noexcept nogil:
        """Append to the receive buffer. Returns 1, 0 (nothing yet) or -1.
        With `may_block` (nothing to send meanwhile) on a blocking fd, wait
        in the kernel for the bytes (bounded by SO_RCVTIMEO) instead of an
        EAGAIN, a poll() and a second recv per reply."""
        cdef ssize_t r
        cdef size_t live = self.rlen - self.rpos
        if live == 0:
            self.rpos = self.rlen = 0
        elif self.rpos > 0 and (self.rcap - self.rlen < 4096 or self.rpos >= self.rcap // 2):
            memmove(self.rbuf, self.rbuf + self.rpos, live)
            self.rpos = 0
            self.rlen = live
        if self.rlen == self.rcap:
            # A header line that fills the buffer is caught by the parser's
            # line limit; getting here means the buffer is smaller than it.
            return self._fail(F_PROTOCOL, b"reply line longer than the receive buffer")
        if self.use_sock:
            r = self.sock_io.recv(self.rbuf + self.rlen, self.rcap - self.rlen)
            if r > 0:
                self.rlen += r
                return 1
            if r == 0:
                return self._fail(F_EOF, b"connection closed by the server")
            if r == T_BLOCKED:
                return 0
            return self._sock_failed(b"receive failed")
        while True:
            r = recv(self.fd, self.rbuf + self.rlen, self.rcap - self.rlen,
                     0 if may_block and self.fd_blocking else MSG_DONTWAIT)
            if r > 0:
                self.rlen += r
                return 1
            if r == 0:
                return self._fail(F_EOF, b"connection closed by the server")
            if errno == EINTR:
                if self._eintr() < 0:
                    return -1
                continue
            if errno == EAGAIN or errno == EWOULDBLOCK:
                if may_block and self.fd_blocking:   # SO_RCVTIMEO ran out
                    return self._fail(F_TIMEOUT, b"timed out waiting for the server")
                return 0
            return self._fail(F_IO, b"receive failed")

    cdef inline void _advance_dest(self, Op *op, size_t n) noexcept nogil:
        """Move the destination cursor n bytes forward."""
        cdef size_t room
        self.body_left -= n
        while n > 0:
            room = op.segs[self.seg_idx].len - self.seg_off
            if n < room:
                self.seg_off += n
                return
            n -= room
            self.seg_idx += 1
            self.seg_off = 0

    cdef void _copy_buffered_body(self, Op *op) noexcept nogil:
        """Copy body bytes that arrived with the header into place."""
        cdef size_t take, room
        while self.body_left > 0 and self.rpos < self.rlen:
            room = op.segs[self.seg_idx].len - self.seg_off
            take = self.rlen - self.rpos
            if take > room:
                take = room
            if <int64_t>take > self.body_left:
                take = <size_t>self.body_left
            memcpy(op.segs[self.seg_idx].ptr + self.seg_off, self.rbuf + self.rpos, take)
            self.rpos += take
            self._advance_dest(op, take)

    cdef int _recv_body(self, Op *op, bint may_block) noexcept nogil:
        """recvmsg the rest of a body straight into the destination; whatever
        follows it (CRLF, next headers) lands in the receive buffer. With
        `may_block` (nothing to send meanwhile) and a blocking fd, wait for
        the whole body in one call instead."""
        cdef iovec *v = &self.iov[self.window_iovs]   # spare slots after the window
        cdef int cnt = 0
        cdef int k = self.seg_idx
        cdef size_t off = self.seg_off
        cdef size_t want = <size_t>self.body_left
        cdef size_t into_dest = 0
        cdef size_t piece
        cdef ssize_t r
        cdef msghdr msg
        cdef int flags
        cdef bint blocking = may_block and self.fd_blocking
        if self.use_sock:
            return self._sock_recv_body(op)
        while want > 0 and cnt < BODY_IOVS:
            piece = op.segs[k].len - off
            if piece > want:
                piece = want
            if piece:
                v[cnt].iov_base = op.segs[k].ptr + off
                v[cnt].iov_len = piece
                cnt += 1
                into_dest += piece
                want -= piece
            k += 1
            off = 0
        self.rpos = self.rlen = 0
        if blocking:
            flags = MSG_WAITALL    # exactly the body: the CRLF is read after it
        else:
            flags = MSG_DONTWAIT
            v[cnt].iov_base = self.rbuf
            v[cnt].iov_len = self.rcap
            cnt += 1
        memset(&msg, 0, sizeof(msg))
        msg.msg_iov = v
        msg.msg_iovlen = cnt
        while True:
            r = recvmsg(self.fd, &msg, flags)
            if r > 0:
                break
            if r == 0:
                return self._fail(F_EOF, b"connection closed by the server mid-value")
            if errno == EINTR:
                if self._eintr() < 0:
                    return -1
                continue
            if errno == EAGAIN or errno == EWOULDBLOCK:
                if blocking:   # SO_RCVTIMEO ran out with nothing received
                    return self._fail(F_TIMEOUT, b"timed out waiting for the server")
                return 0
            return self._fail(F_IO, b"receive failed")
        if <size_t>r <= into_dest:
            self._advance_dest(op, r)
        else:
            self._advance_dest(op, into_dest)
            self.rlen = r - into_dest
        # A signal cuts MSG_WAITALL short with the bytes so far, not EINTR.
        if blocking and <size_t>r < into_dest and self._eintr() < 0:
            return -1
        return 1

    cdef int _sock_recv_body(self, Op *op) noexcept nogil:
        """_recv_body over the socket transport: receive (decrypt) straight
        into the destination segments until the body is in or it would block."""
        cdef size_t piece
        cdef ssize_t r
        cdef bint got = False
        self.rpos = self.rlen = 0
        while self.body_left > 0:
            piece = op.segs[self.seg_idx].len - self.seg_off
            if <int64_t>piece > self.body_left:
                piece = <size_t>self.body_left
            r = self.sock_io.recv(op.segs[self.seg_idx].ptr + self.seg_off, piece)
            if r > 0:
                self._advance_dest(op, r)
                got = True
            elif r == 0:
                return self._fail(F_EOF, b"connection closed by the server mid-value")
            elif r == T_BLOCKED:
                break
            else:
                return self._sock_failed(b"receive failed")
        return 1 if got else 0

    cdef int _record_error(self, Op *op, ReplyHeader *h) noexcept nogil:
        cdef size_t n = h.text_len if h.text_len < MAX_ERROR_TEXT else MAX_ERROR_TEXT
        if scratch_reserve(&self.errs, n) < 0:
            return self._fail(F_NOMEM, b"out of memory recording a server error")
        op.err_off = self.errs.len
        op.err_len = n
        _put(&self.errs, h.text, n)
        op.status = ST_SERVER_ERROR
        return 0

    cdef inline size_t _inflight_limit(self, int kind) noexcept nogil:
        return self.max_inflight_set_bytes if kind == OP_SET else self.max_inflight_bytes

    cdef inline void _complete(self, int kind, Op *op) noexcept nogil:
        if kind == OP_GET or kind == OP_SET:
            self.inflight_bytes -= op.cap
        self.next_reply += 1
        self.rstate = RS_HEADER

    cdef int _on_header(self, int kind, Op *op, ReplyHeader *h) noexcept nogil:
        """Decide what one reply header means for its command."""
        if h.kind == b'-':
            if self._record_error(op, h) < 0:
                return -1
            self._complete(kind, op)
            return 0
        if kind == OP_GET:
            if (h.kind == b'$' or h.kind == b'_') and h.value == -1:
                op.status = ST_MISS
                self._complete(kind, op)
                return 0
            if h.kind != b'$':
                return self._fail(F_PROTOCOL, b"unexpected reply type to GET")
            if h.value > self.max_bulk:
                return self._fail(F_PROTOCOL, b"bulk reply longer than max_bulk_len")
            self.bulk_len = h.value
            if <uint64_t>h.value > op.cap:
                op.status = ST_TOO_LARGE
                op.result = h.value
                self.body_left = h.value
                self.rstate = RS_DRAIN
            else:
                # Stays ST_PENDING until the body and its CRLF are in: a
                # connection lost mid-body must never report success.
                self.body_left = h.value
                self.seg_idx = 0
                self.seg_off = 0
                self.rstate = RS_BODY
            return 0
        if kind == OP_SET:
            if h.kind == b'+':
                op.status = ST_OK
                op.result = 1
            elif (h.kind == b'$' or h.kind == b'_') and h.value == -1:
                op.status = ST_MISS
            else:
                return self._fail(F_PROTOCOL, b"unexpected reply type to SET")
            self._complete(kind, op)
            return 0
        if h.kind != b':':
            return self._fail(F_PROTOCOL, b"unexpected reply type (expected an integer)")
        op.status = ST_OK
        op.result = h.value
        self._complete(kind, op)
        return 0

    cdef int _pump_replies(self, int kind, Op *ops, Py_ssize_t n, bint *progressed) noexcept nogil:
        """Parse and place every reply that can be had without blocking
        (a body may block when there is nothing to send). Returns 0 when it
        would block, when all sent commands are answered, or when a finished
        reply made room for more commands; -1 on failure."""
        cdef ReplyHeader h
        cdef const char *err = NULL
        cdef Op *op
        cdef int st, r
        cdef size_t take
        while self.next_reply < self.next_encode:
            op = &ops[self.next_reply]
            if self.rstate == RS_HEADER:
                st = parse_header(self.rbuf + self.rpos, self.rlen - self.rpos, &h, &err)
                if st == PARSE_ERROR:
                    self.fail_byte = self.rbuf[self.rpos]
                    return self._fail(F_PROTOCOL, err)
                if st == PARSE_NEED_MORE:
                    r = self._recv_some(self._set_waits_for_replies(kind, ops, n))
                    if r <= 0:
                        return r
                    progressed[0] = True
                    continue
                self.rpos += h.consumed
                if self._on_header(kind, op, &h) < 0:
                    return -1
            elif self.rstate == RS_BODY:
                self._copy_buffered_body(op)
                if self.body_left == 0:
                    self.rstate = RS_CRLF
                    continue
                # Nothing unsent and no room to send more: wait in the kernel.
                r = self._recv_body(op, self._only_replies_left(kind, ops, n))
                if r <= 0:
                    return r
                progressed[0] = True
            elif self.rstate == RS_DRAIN:
                take = self.rlen - self.rpos
                if <int64_t>take > self.body_left:
                    take = <size_t>self.body_left
                self.rpos += take
                self.body_left -= take
                if self.body_left == 0:
                    self.rstate = RS_CRLF
                    continue
                r = self._recv_some(self._set_waits_for_replies(kind, ops, n))
                if r <= 0:
                    return r
                progressed[0] = True
            else:  # RS_CRLF
                if self.rlen - self.rpos < 2:
                    r = self._recv_some(self._set_waits_for_replies(kind, ops, n))
                    if r <= 0:
                        return r
                    progressed[0] = True
                    continue
                if self.rbuf[self.rpos] != b'\r' or self.rbuf[self.rpos + 1] != b'\n':
                    return self._fail(F_PROTOCOL, b"bulk reply not terminated by CRLF")
                self.rpos += 2
                op.result = self.bulk_len
                if op.status != ST_TOO_LARGE:
                    op.status = ST_OK
                self._complete(kind, op)
                # Send the next GET before reading on. Not over the socket
                # transport: there a send is a TLS record and a call with the
                # GIL, so one ~30-byte GET per reply of a small value cost
                # half the GET throughput (4096 x 1 KiB); it reads what has
                # arrived first, then sends the next window in one record.
                if (kind == OP_GET and not self.use_sock and self.iov_pos == self.iov_count and
                        self.next_encode < n and self._room_for_next(kind, ops)):
                    progressed[0] = True
                    return 0
        return 0

    cdef inline bint _only_replies_left(self, int kind, Op *ops, Py_ssize_t n) noexcept nogil:
        """Is waiting for a reply all there is to do? Nothing unsent, and the
        next command (if any) held back by the in-flight limit until a reply
        comes. Then a receive may block in the kernel."""
        if self.iov_pos != self.iov_count:
            return False
        if self.next_encode == n:
            return True
        if kind != OP_GET and kind != OP_SET:
            return False   # no in-flight limit: the next window goes out first
        return not self._room_for_next(kind, ops)

    cdef inline bint _set_waits_for_replies(self, int kind, Op *ops, Py_ssize_t n) noexcept nogil:
        """A SET batch with only replies to wait for reads them blocking (as
        LMCache's client does): per large SET, one recv instead of recv +
        EAGAIN + poll + recv (32 x 4 MiB SETs: 2-7 % faster on Valkey 9.1,
        Valkey 8.1 and Redis 7.0). GET header reads stay non-blocking: there
        it made no difference, or cost a few per cent (Redis 7.0)."""
        return kind == OP_SET and self._only_replies_left(kind, ops, n)

    cdef inline bint _room_for_next(self, int kind, Op *ops) noexcept nogil:
        """Would the in-flight limit let the next GET / SET go out now?"""
        return (self.inflight_bytes == 0 or
                self.inflight_bytes + ops[self.next_encode].cap <= self._inflight_limit(kind))

    # -- the loop ----------------------------------------------------------

    cdef int _wait(self, bint want_out) noexcept nogil:
        cdef pollfd p
        cdef int r
        p.fd = self.fd
        p.events = POLLIN | (POLLOUT if want_out else 0)
        p.revents = 0
        if self.use_sock:
            if self.sock_io.pending():
                return 0
            # What the blocked calls wait for: a TLS write may need to read.
            p.events = POLLIN | (self.sock_io.wait_events & POLLOUT)
            self.sock_io.wait_events = 0
        while True:
            r = poll(&p, 1, self.timeout_ms)
            if r > 0:
                return 0
            if r == 0:
                return self._fail(F_TIMEOUT, b"timed out waiting for the server")
            if errno != EINTR:
                return self._fail(F_IO, b"poll failed")
            if self._eintr() < 0:
                return -1

    cdef int _fit_iovs(self, Op *ops, Py_ssize_t n) noexcept nogil:
        """Grow the iovec array so the op with the most segments fits in one
        window (a SET's header, segments and trailer are sent together)."""
        cdef Py_ssize_t i
        cdef int need = 0
        cdef iovec *p
        for i in range(n):
            if ops[i].nsegs + 2 > need:
                need = ops[i].nsegs + 2
        if need <= self.window_iovs:
            return 0
        p = <iovec *>realloc(self.iov, sizeof(iovec) * (need + BODY_IOVS + 1))
        if p == NULL:
            return self._fail(F_NOMEM, b"out of memory for value segments")
        self.iov = p
        self.window_iovs = need
        return 0

    cdef int _run(self, int kind, Op *ops, Py_ssize_t n, int64_t ttl_ms) noexcept nogil:
        """Run one batch to completion. Returns 0, or -1 with `failure` set;
        ops[next_reply:] are then incomplete."""
        cdef bint progressed
        cdef bint want_out
        cdef int r
        if self.failure != F_NONE:
            return -1
        if kind == OP_SET and self._fit_iovs(ops, n) < 0:
            return -1
        self.next_encode = 0
        self.next_reply = 0
        self.inflight_bytes = 0
        self.iov_pos = self.iov_count = 0
        self.errs.len = 0
        self.rstate = RS_HEADER
        while self.next_reply < n:
            progressed = False
            want_out = False
            if self.iov_pos == self.iov_count and self.next_encode < n:
                if self._encode_window(kind, ops, n, ttl_ms) < 0:
                    return -1
            if self.iov_pos < self.iov_count:
                r = self._send_some(kind == OP_SET)
                if r < 0:
                    return -1
                if r > 0:
                    progressed = True
                want_out = self.iov_pos < self.iov_count
            if self._pump_replies(kind, ops, n, &progressed) < 0:
                return -1
            if self.aborted:
                return self._fail(F_ABORTED, b"connection closed by the client")
            if not progressed and self.next_reply < n:
                if self._wait(want_out) < 0:
                    return -1
        if LMV_DEBUG:
            if self.inflight_bytes != 0 or self.iov_pos != self.iov_count:
                return self._fail(F_PROTOCOL, b"internal: batch ended with state left over")
        return 0
