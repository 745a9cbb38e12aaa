# Transports: where the engine's bytes go.
#
# The engine (engine.pxi) frames RESP, enforces the limits and decides what
# each reply means, once, for every transport. Only the calls that move
# bytes differ:
#
#   fd       the fast path, inline in engine.pxi: sendmsg / recv / recvmsg on
#            the raw fd, GIL released for the whole batch.
#   socket   SockTransport below: a Python socket object, in practice the
#            ssl.SSLSocket of a valkeys:// connection (a raw fd cannot encrypt;
#            hiredis plugs TLS in the same way, through a read/write table).
#            Each call takes the GIL for sock.send(memoryview) or
#            sock.recv_into(memoryview, n), and OpenSSL releases it again while
#            it encrypts or decrypts. Bulk bodies are still decrypted straight
#            into the caller's segments (the memoryview points there).
#
# The socket is non-blocking, so the engine's one poll() loop serves both.
# OpenSSL may have to read to finish a write (and write to finish a read):
# every "would block" records which readiness it waits for in `wait_events`,
# and the engine polls for that. Bytes already decrypted inside OpenSSL do not
# make the fd readable, so the engine asks `pending()` before it polls.
# CPython sets SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER, and the engine retries a
# blocked send with the same bytes, so re-making the memoryview is allowed.

import ssl

from cpython.buffer cimport PyBUF_READ, PyBUF_WRITE
from cpython.memoryview cimport PyMemoryView_FromMemory

from lmcache_valkey.protocol.tls_transport import tls_reason

# SockTransport.send / recv results besides a byte count (recv: 0 is EOF).
cdef enum:
    T_BLOCKED = -1     # would block: wait for `wait_events`
    T_FAILED = -2      # failed: err_kind and its details say how

# Small pieces of a window (command headers, small values) are copied into
# one buffer of this size before a send: over TLS each send is a record.
cdef size_t SOCK_COALESCE = 65536
# Largest single send, so replies are read between the records of a large value.
cdef size_t SOCK_SEND_MAX = 1024 * 1024


cdef class SockTransport:
    """The socket-object transport of one engine. Holds a reference to the
    socket object (the caller still owns and closes it)."""

    cdef object sock
    cdef object _send
    cdef object _recv_into
    cdef object _pending       # SSLSocket.pending, or None
    cdef short wait_events     # POLLIN / POLLOUT the last "would block"s need
    cdef char *cbuf            # SOCK_COALESCE bytes for coalescing sends
    # The first failure (sticky, like the engine's): F_EOF, F_IO or F_TLS.
    cdef int err_kind
    cdef int err_errno
    cdef str err_text          # strerror, or the TLS reason
    cdef object err_exc        # a non-OSError raised inside a call (KeyboardInterrupt)

    def __cinit__(self, sock):
        self.cbuf = <char *>malloc(SOCK_COALESCE)
        if self.cbuf == NULL:
            raise MemoryError()
        self.sock = sock
        self._send = sock.send
        self._recv_into = sock.recv_into
        self._pending = getattr(sock, "pending", None)

    def __dealloc__(self):
        free(self.cbuf)

    cdef ssize_t send(self, const char *p, size_t n) noexcept nogil:
        """Send up to n bytes: the count sent, T_BLOCKED or T_FAILED."""
        with gil:
            return self._call(self._send, PyMemoryView_FromMemory(<char *>p, n, PyBUF_READ),
                              None, POLLOUT)

    cdef ssize_t recv(self, char *p, size_t n) noexcept nogil:
        """Receive up to n bytes into p: the count (0: EOF), T_BLOCKED or T_FAILED."""
        with gil:
            return self._call(self._recv_into, PyMemoryView_FromMemory(p, n, PyBUF_WRITE),
                              n, POLLIN)

    cdef bint pending(self) noexcept nogil:
        """Decrypted bytes wait inside OpenSSL (the fd may not be readable)."""
        with gil:
            try:
                return self._pending is not None and self._pending() > 0
            except BaseException:
                return False   # the next recv reports what is wrong

    cdef ssize_t _call(self, object fn, object view, object n, short natural) noexcept:
        try:
            return fn(view) if n is None else fn(view, n)
        except ssl.SSLWantReadError:
            self.wait_events |= POLLIN
            return T_BLOCKED
        except ssl.SSLWantWriteError:
            self.wait_events |= POLLOUT
            return T_BLOCKED
        except BlockingIOError:
            self.wait_events |= natural
            return T_BLOCKED
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            if n is not None:
                return 0
            return self._failed(F_EOF, 0, None, None)
        except ssl.SSLError as e:
            return self._failed(F_TLS, 0, tls_reason(e), None)
        except OSError as e:
            return self._failed(F_IO, e.errno or 0, e.strerror or str(e), None)
        except BaseException as e:
            return self._failed(F_IO, 0, f"{type(e).__name__}: {e}", e)
        finally:
            view.release()

    cdef ssize_t _failed(self, int kind, int err, str text, object exc) noexcept:
        if self.err_kind == F_NONE:
            self.err_kind = kind
            self.err_errno = err
            self.err_text = text
            self.err_exc = exc
        return T_FAILED
