# RESP2 reply-header parser.
#
# Like hiredis's read.c it never does I/O and never allocates: it looks at
# bytes already received and reports what the next reply header is. Unlike
# hiredis it never buffers a bulk body: the engine receives bodies straight
# into the caller's memory, so only the `$<len>\r\n` line passes through here.

cdef enum ParseStatus:
    PARSE_NEED_MORE = 0
    PARSE_OK = 1
    PARSE_ERROR = -1

# A reply line (header, error text, simple string) longer than this is a
# protocol error, not a reason to grow a buffer without bound.
cdef size_t MAX_LINE = 65536
# 19 digits would overflow int64; RESP lengths never need that many.
cdef int MAX_DIGITS = 18


ctypedef struct ReplyHeader:
    char kind            # one of b'$' b'-' b':' b'+' b'*' b'_'
    int64_t value        # bulk/array length or integer; -1 means null
    const char *text     # simple string / error text (not NUL-terminated)
    size_t text_len
    size_t consumed      # bytes of the header line including CRLF


cdef int _parse_int(const char *p, size_t n, int64_t *out,
                    const char **err) noexcept nogil:
    cdef size_t i = 0
    cdef bint negative = False
    cdef int64_t v = 0
    if n > 0 and p[0] == b'-':
        negative = True
        i = 1
    if i == n:
        err[0] = b"empty integer in reply header"
        return PARSE_ERROR
    if n - i > <size_t>MAX_DIGITS:
        err[0] = b"integer in reply header is too long"
        return PARSE_ERROR
    while i < n:
        if p[i] < b'0' or p[i] > b'9':
            err[0] = b"non-digit in reply header integer"
            return PARSE_ERROR
        v = v * 10 + (p[i] - c'0')
        i += 1
    out[0] = -v if negative else v
    return PARSE_OK


cdef int parse_header(const char *buf, size_t n, ReplyHeader *out,
                      const char **err) noexcept nogil:
    """Parse one reply header from buf[0:n].

    Returns PARSE_OK (out filled), PARSE_NEED_MORE (no complete line yet),
    or PARSE_ERROR (err points at a static message; the stream is unusable).
    """
    cdef const char *nl
    cdef size_t scan = n if n < MAX_LINE else MAX_LINE
    cdef size_t line_len
    if n == 0:
        return PARSE_NEED_MORE
    nl = <const char *>memchr(buf, b'\n', scan)
    if nl == NULL:
        if n >= MAX_LINE:
            err[0] = b"reply line longer than 64 KiB"
            return PARSE_ERROR
        return PARSE_NEED_MORE
    line_len = <size_t>(nl - buf)            # bytes before '\n'
    if line_len == 0 or buf[line_len - 1] != b'\r':
        err[0] = b"reply line not terminated by CRLF"
        return PARSE_ERROR
    out.kind = buf[0]
    out.text = buf + 1
    out.text_len = line_len - 2               # minus type byte and '\r'
    out.consumed = line_len + 1
    out.value = 0
    if out.kind == b'$' or out.kind == b'*' or out.kind == b':':
        if _parse_int(out.text, out.text_len, &out.value, err) != PARSE_OK:
            return PARSE_ERROR
        if out.kind != b':' and out.value < -1:
            err[0] = b"negative length in reply header"
            return PARSE_ERROR
        return PARSE_OK
    if out.kind == b'+' or out.kind == b'-':
        return PARSE_OK
    if out.kind == b'_':                      # RESP3 null, accepted as a miss
        if out.text_len != 0:
            err[0] = b"malformed null reply"
            return PARSE_ERROR
        out.value = -1
        return PARSE_OK
    err[0] = b"unknown reply type byte"
    return PARSE_ERROR
