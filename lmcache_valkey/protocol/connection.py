"""Opening one connection: socket, options, handshake (AUTH, SELECT).

The socket object owns the fd; the native RespConnection borrows it for the
hot loop. With TLS (``valkeys://``) the socket is an ``ssl.SSLSocket`` and the
same engine runs over it (``RespConnection.over_socket``, see tls_transport.py),
since sendmsg/readv on a raw fd cannot encrypt. Connection errors name the
endpoint (host:port or the socket path), never the username or password.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
from typing import Any

from .._native import RespConnection
from ..config import ClientConfig
from ..errors import AuthenticationError, ServerReplyError, TlsError, ValkeyConnectionError
from .engine import Engine
from .server_profile import ServerProfile, probe
from .tls_transport import wrap_tls


class Connection:
    """A connected, authenticated socket and its engine (a RespConnection on
    the fd, or over the ``ssl.SSLSocket`` with TLS)."""

    __slots__ = ("sock", "native", "endpoint", "profile", "inflight_bytes", "set_inflight_bytes",
                 "_poll")

    def __init__(self, sock: socket.socket, native: Engine, endpoint: str,
                 profile: ServerProfile, inflight_bytes: int, set_inflight_bytes: int) -> None:
        self.sock = sock
        self.native = native
        self.endpoint = endpoint
        self.profile = profile                # what INFO server said (server_profile.py)
        self.inflight_bytes = inflight_bytes  # GET reply bytes requested ahead
        self.set_inflight_bytes = set_inflight_bytes  # SET value bytes sent ahead of +OK
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)

    @property
    def usable(self) -> bool:
        return not self.native.failed

    def closed_while_idle(self) -> bool:
        """Between batches nothing may be readable: a readable (or hung-up,
        or errored) idle connection was closed or reset by the server or the
        network (a restart, the server's idle ``timeout``, a middlebox)."""
        return bool(self._poll.poll(0))

    def abort(self) -> None:
        """Fail a batch running in another thread; safe to call any time."""
        self.native.abort()

    def close(self) -> None:
        self.sock.close()


def _connect_socket(config: ClientConfig) -> socket.socket:
    timeout = config.connect_timeout_s
    try:
        if config.unix_path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(config.unix_path)
            except BaseException:
                sock.close()
                raise
        else:
            assert config.host is not None
            sock = socket.create_connection((config.host, config.port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except TimeoutError:
        raise ValkeyConnectionError(
            f"cannot connect to {config.endpoint}: no answer within {timeout}s (connect_timeout_s)"
        ) from None
    except OSError as e:
        raise ValkeyConnectionError(
            f"cannot connect to {config.endpoint}: {e.strerror or e}"
        ) from None
    if config.socket_buffer_bytes:
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, config.socket_buffer_bytes)
    # A blocking fd: the engine's calls are non-blocking (MSG_DONTWAIT) except
    # the one that waits for the rest of a large body (engine.pxi), bounded by
    # SO_RCVTIMEO. Over TLS the engine makes the socket non-blocking.
    sock.settimeout(None)
    return sock


def _handshake(native: Engine, config: ClientConfig, profile: ServerProfile | None
               ) -> ServerProfile:
    """AUTH, SELECT, and what the server is (``INFO server``, unless the
    caller learned it on an earlier connection)."""
    if config.password is not None:
        args = ["AUTH", config.username, config.password.get()] if config.username \
            else ["AUTH", config.password.get()]
        try:
            native.execute(*args)
        except ServerReplyError as e:
            # The server's text (WRONGPASS ..., ERR ...) never echoes credentials.
            raise AuthenticationError(f"{config.endpoint}: authentication refused: {e}") from None
    elif config.username:
        raise AuthenticationError(f"{config.endpoint}: a username needs a password")
    if config.db:
        native.execute("SELECT", config.db)
    if profile is None:
        # One round trip; with TLS it is also the first read below.
        return probe(native)
    if config.tls and config.password is None and not config.db:
        # TLS 1.3 finishes the client's side of the handshake before the
        # server has checked our certificate: a refused client certificate
        # shows only on the first read. Read once now, so that it is a
        # connect error and not the first batch's. Any reply will do (NOAUTH
        # included: that one is reported per key, as without TLS).
        with contextlib.suppress(ServerReplyError):
            native.execute("PING")
    return profile


def open_connection(config: ClientConfig, profile: ServerProfile | None = None) -> Connection:
    """Connect (and with TLS, handshake), authenticate, select the database
    and learn the server (unless `profile` says it already), within the
    timeouts; set the GET and SET depths for that server unless
    max_inflight_bytes fixes them."""
    sock = _connect_socket(config)
    limits: dict[str, Any]  # float and int keyword arguments
    limits = dict(timeout_s=config.connect_timeout_s,  # the handshake is part of connecting
                  max_bulk_len=config.max_bulk_len)
    try:
        native: Engine
        if config.tls:
            sock = wrap_tls(sock, config)
            native = RespConnection.over_socket(sock, config.endpoint, **limits)
        else:
            native = RespConnection(sock.fileno(), config.endpoint, **limits)
        profile = _handshake(native, config, profile)
        inflight = config.max_inflight_bytes or profile.inflight_bytes()
        set_inflight = config.max_inflight_bytes or profile.set_inflight_bytes()
        native.set_max_inflight_bytes(inflight, set_inflight)
        native.set_timeout(config.op_timeout_s)
    except BaseException as e:
        sock.close()
        if isinstance(sock, ssl.SSLSocket) and _closed_by_server(e):
            # Servers that refuse a client certificate (redis 7 does) often
            # just close the connection after the handshake, with no TLS alert.
            hint = "" if config.tls_cert_file else \
                " (does it require a client certificate? set tls_cert_file and tls_key_file)"
            raise TlsError(f"{config.endpoint}: TLS: the server closed the connection right "
                           f"after the handshake{hint}") from None
        raise
    return Connection(sock, native, config.endpoint, profile, inflight, set_inflight)


def _closed_by_server(e: BaseException) -> bool:
    return type(e) is ValkeyConnectionError and "closed by the server" in str(e)
