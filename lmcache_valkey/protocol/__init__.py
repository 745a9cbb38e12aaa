"""The protocol's Python side, around the native engine (cython_ext/).

``connection`` opens one connection (socket, TLS handshake from
``tls_transport``, AUTH/SELECT, what the server is from ``server_profile``)
and hands it to the one native ``RespConnection``, over the raw fd or, for
TLS, over the ``ssl.SSLSocket`` object. ``engine`` declares what the client
layers may ask of that engine (a ``typing.Protocol``); ``operations`` is the
one table of the five batch operations; ``buffers`` turns caller buffers
into the byte segments the engine reads and writes.
"""
