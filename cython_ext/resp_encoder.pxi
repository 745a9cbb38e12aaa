# RESP2 command encoding into a small scratch buffer.
#
# Only command *headers* (array and bulk-length prefixes, command names, keys,
# TTL arguments) are written here. Values are never copied: the engine points
# an iovec at the caller's memory between a header and its trailer.

ctypedef struct Scratch:
    char *data
    size_t len
    size_t cap


cdef int scratch_reserve(Scratch *s, size_t extra) noexcept nogil:
    """Make room for `extra` more bytes. Only call while no iovec points
    into the buffer (it may move). Returns 0, or -1 when out of memory."""
    cdef size_t want = s.len + extra
    cdef size_t cap = s.cap if s.cap else 4096
    cdef char *p
    if want <= s.cap:
        return 0
    while cap < want:
        cap *= 2
    p = <char *>realloc(s.data, cap)
    if p == NULL:
        return -1
    s.data = p
    s.cap = cap
    return 0


cdef inline void _put(Scratch *s, const char *p, size_t n) noexcept nogil:
    memcpy(s.data + s.len, p, n)
    s.len += n


cdef inline void _put_uint(Scratch *s, uint64_t v) noexcept nogil:
    cdef char tmp[24]
    cdef int i = 24
    if v == 0:
        s.data[s.len] = b'0'
        s.len += 1
        return
    while v:
        i -= 1
        tmp[i] = <char>(c'0' + v % 10)
        v //= 10
    _put(s, tmp + i, 24 - i)


cdef inline void put_array_header(Scratch *s, size_t nargs) noexcept nogil:
    s.data[s.len] = b'*'
    s.len += 1
    _put_uint(s, nargs)
    _put(s, b"\r\n", 2)


cdef inline void put_bulk_header(Scratch *s, size_t n) noexcept nogil:
    s.data[s.len] = b'$'
    s.len += 1
    _put_uint(s, n)
    _put(s, b"\r\n", 2)


cdef inline void put_bulk(Scratch *s, const char *p, size_t n) noexcept nogil:
    put_bulk_header(s, n)
    _put(s, p, n)
    _put(s, b"\r\n", 2)


cdef inline void put_bulk_uint(Scratch *s, uint64_t v) noexcept nogil:
    # Encode the digits once, then frame them as a bulk string.
    cdef char tmp[24]
    cdef size_t before = s.len
    cdef size_t ndigits
    _put_uint(s, v)
    ndigits = s.len - before
    memcpy(tmp, s.data + before, ndigits)
    s.len = before
    put_bulk(s, tmp, ndigits)


# Upper bound of header bytes one command adds besides its key, so the engine
# can reserve space before it takes pointers into the scratch buffer.
cdef size_t CMD_OVERHEAD = 160
