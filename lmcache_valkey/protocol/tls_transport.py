"""TLS for ``valkeys://``: the context, the handshake, and what a failure says.

There is one RESP engine (cython_ext/engine.pxi): one parser, one set of
limits, one meaning per reply, the same results, exceptions and ``.partial``
over every transport. TLS is only a transport under it: after the handshake
here, ``connection.py`` builds ``RespConnection.over_socket(ssl_sock, ...)``,
and the engine moves bytes with ``SSLSocket.send`` / ``recv_into`` instead
of sendmsg/readv on the fd (cython_ext/transport.pxi). Bulk bodies are still
decrypted straight into the caller's memory; small command pieces are sent
together so that they are not one TLS record each.

This module must not import the native extension: the extension imports
``tls_reason`` from it.
"""

from __future__ import annotations

import ssl
import typing

from ..errors import TlsError, ValkeyConnectionError

if typing.TYPE_CHECKING:
    import socket

    from ..config import ClientConfig


def tls_context(config: ClientConfig) -> ssl.SSLContext:
    """The client TLS context: the CA file (or the system's CAs), the client
    certificate for mutual TLS, and hostname checking as configured."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificates; TLS >= 1.2
    try:
        if config.tls_ca_file:
            ctx.load_verify_locations(cafile=config.tls_ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if config.tls_cert_file:
            ctx.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    except (OSError, ssl.SSLError) as e:  # a missing or unreadable file names itself
        what = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise TlsError(f"{config.endpoint}: cannot load TLS certificates or key: "
                       f"{what}{': ' + e.filename if getattr(e, 'filename', None) else ''}"
                       ) from None
    ctx.check_hostname = config.tls_check_hostname
    return ctx


def wrap_tls(sock: socket.socket, config: ClientConfig) -> ssl.SSLSocket:
    """TLS handshake within connect_timeout_s (the socket is blocking here;
    the engine makes it non-blocking afterwards)."""
    ctx = tls_context(config)
    server_name = config.tls_server_name or config.host
    sock.setblocking(True)
    sock.settimeout(config.connect_timeout_s)
    try:
        return ctx.wrap_socket(sock, server_hostname=server_name)
    except TimeoutError:
        raise TlsError(f"{config.endpoint}: TLS handshake: no answer within "
                       f"{config.connect_timeout_s}s (connect_timeout_s)") from None
    except ssl.SSLError as e:
        raise TlsError(f"{config.endpoint}: TLS handshake failed: {tls_reason(e)}") from None
    except OSError as e:
        raise ValkeyConnectionError(
            f"{config.endpoint}: TLS handshake failed: {e.strerror or e}") from None


def tls_reason(e: ssl.SSLError) -> str:
    """A short, human reason for a TLS failure, e.g. 'certificate verify
    failed: self-signed certificate' or 'tlsv13 alert certificate required'."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {e.verify_message}"
    if e.reason:
        return str(e.reason).lower().replace("_", " ")
    return str(e)
