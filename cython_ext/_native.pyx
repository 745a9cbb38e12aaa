# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""lmcache_valkey._native: the hot loop.

One compilation unit that includes its parts (asyncpg's layout):

    posix.pxi        system calls used without the GIL
    resp_parser.pxi  reply-header parser: no I/O, no allocation
    resp_encoder.pxi command headers into a scratch buffer
    transport.pxi    the socket-object transport (TLS); the fd's is in engine.pxi
    engine.pxi       one connection's pipelined batch, GIL released
    buffers.pxi      pinning caller memory for the life of a batch
    connection.pxi   RespConnection, the Python-visible class
"""

include "posix.pxi"
include "resp_parser.pxi"
include "resp_encoder.pxi"
include "transport.pxi"
include "engine.pxi"
include "buffers.pxi"
include "connection.pxi"
