"""Opening one connection: socket, options, handshake (AUTH, SELECT).

The socket object owns the fd; the native RespConnection borrows it for the
hot loop. Connection errors name the endpoint (host:port or the socket path),
never the username or password.
"""

from __future__ import annotations

import socket

from ._native import RespConnection
from .config import ClientConfig
from .errors import AuthenticationError, ServerReplyError, ValkeyConnectionError


class Connection:
    """A connected, authenticated socket and its native engine."""

    __slots__ = ("sock", "native", "endpoint")

    def __init__(self, sock: socket.socket, native: RespConnection, endpoint: str) -> None:
        self.sock = sock
        self.native = native
        self.endpoint = endpoint

    @property
    def usable(self) -> bool:
        return not self.native.failed

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
    sock.setblocking(False)
    return sock


def _handshake(native: RespConnection, config: ClientConfig) -> None:
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


def open_connection(config: ClientConfig) -> Connection:
    """Connect, authenticate and select the database, within the timeouts."""
    sock = _connect_socket(config)
    try:
        native = RespConnection(
            sock.fileno(),
            config.endpoint,
            timeout_s=config.connect_timeout_s,  # the handshake is part of connecting
            max_bulk_len=config.max_bulk_len,
            max_inflight_bytes=config.max_inflight_bytes,
        )
        _handshake(native, config)
        native.set_timeout(config.op_timeout_s)
    except BaseException:
        sock.close()
        raise
    return Connection(sock, native, config.endpoint)
