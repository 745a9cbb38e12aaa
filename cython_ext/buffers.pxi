# Pinning caller memory for the time native code may touch it.
#
# Every destination (and every SET payload) is exported with
# PyObject_GetBuffer before the GIL is released and released only after the
# batch returns. The export keeps the object alive and stops resizable
# exporters (bytearray) from moving their memory underneath us — the
# recycled-buffer corruption seen in valkey-glide#6215 cannot happen here.

from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release,
                             PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_Check


cdef class _BufferPins:
    """Owns the Py_buffer exports and the C arrays describing one batch."""

    cdef Py_buffer *views
    cdef Py_ssize_t nviews
    cdef Py_ssize_t nsegs        # <= nviews: zero-length buffers get no segment
    cdef Op *ops
    cdef Seg *segs
    cdef Py_ssize_t nops
    cdef list keys          # keeps key bytes alive while ops point at them

    def __cinit__(self):
        self.views = NULL
        self.ops = NULL
        self.segs = NULL
        self.nviews = 0
        self.nsegs = 0

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self.nviews):
            PyBuffer_Release(&self.views[i])
        free(self.views)
        free(self.ops)
        free(self.segs)

    cdef int _alloc(self, Py_ssize_t nops, Py_ssize_t nsegs) except -1:
        self.nops = nops
        self.ops = <Op *>malloc(sizeof(Op) * (nops if nops else 1))
        self.segs = <Seg *>malloc(sizeof(Seg) * (nsegs if nsegs else 1))
        self.views = <Py_buffer *>malloc(sizeof(Py_buffer) * (nsegs if nsegs else 1))
        if self.ops == NULL or self.segs == NULL or self.views == NULL:
            raise MemoryError()
        memset(self.ops, 0, sizeof(Op) * (nops if nops else 1))
        return 0

    cdef int _pin(self, object obj, bint writable, Py_ssize_t index) except -1:
        cdef Py_buffer *v = &self.views[self.nviews]
        cdef int flags = PyBUF_C_CONTIGUOUS | (PyBUF_WRITABLE if writable else 0)
        try:
            PyObject_GetBuffer(obj, v, flags)
        except (TypeError, BufferError, ValueError) as e:
            need = "a writable C-contiguous buffer" if writable else "a C-contiguous buffer"
            raise TypeError(
                f"buffer for key #{index} must be {need} "
                f"(bytearray, memoryview, numpy array, CPU tensor), "
                f"not {type(obj).__name__}: {e}") from None
        self.nviews += 1
        # An empty buffer holds no bytes; keeping it out of the segment list
        # spares the engine's cursor from ever standing on a 0-byte segment.
        if v.len > 0:
            self.segs[self.nsegs].ptr = <char *>v.buf
            self.segs[self.nsegs].len = <size_t>v.len
            self.nsegs += 1
        return 0


cdef inline Py_ssize_t _count_segments(list buffers) except -1:
    cdef Py_ssize_t total = 0
    for b in buffers:
        if type(b) is list or type(b) is tuple:
            total += len(<object>b)
        else:
            total += 1
    return total


cdef _BufferPins pin_batch(list keys, list buffers, bint writable):
    """Describe a batch as C ops. buffers may be None (key-only commands);
    each buffer is one object or a list/tuple of segments (a scatter list)."""
    cdef _BufferPins pins = _BufferPins()
    cdef Py_ssize_t n = len(keys)
    cdef Py_ssize_t i
    cdef Op *op
    cdef size_t cap
    if buffers is not None and len(buffers) != n:
        raise ValueError(f"{n} keys but {len(buffers)} buffers")
    pins._alloc(n, _count_segments(buffers) if buffers is not None else 0)
    pins.keys = keys
    for i in range(n):
        k = keys[i]
        if not PyBytes_Check(k):
            raise TypeError(f"key #{i} must be bytes at this layer, not {type(k).__name__}")
        op = &pins.ops[i]
        op.key = PyBytes_AS_STRING(k)
        op.klen = <size_t>PyBytes_GET_SIZE(k)
        if buffers is None:
            continue
        op.segs = &pins.segs[pins.nsegs]
        b = buffers[i]
        if type(b) is list or type(b) is tuple:
            for seg in <object>b:
                pins._pin(seg, writable, i)
        else:
            pins._pin(b, writable, i)
        op.nsegs = <int>(&pins.segs[pins.nsegs] - op.segs)
        cap = 0
        for j in range(op.nsegs):
            cap += op.segs[j].len
        op.cap = cap
    return pins
