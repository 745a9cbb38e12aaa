"""Exceptions, in three tiers (as asyncpg does):

* ServerReplyError  - the server answered one command with an error reply
  (-ERR, -WRONGTYPE, -OOM ...). For batch commands this is a per-key result,
  not an exception: it is reported in ``BatchResult.errors``.
  IntegrityError (a value that failed its checksum) is reported there too.
* ConfigError       - the caller's configuration or input is wrong
  (a ValueError, so plain ``except ValueError`` catches it too).
* ValkeyConnectionError / ValkeyTimeoutError / ProtocolError - the connection
  failed; it is closed and replaced, and the keys it had not finished are
  reported as failed.

Messages name the server as host:port (or the socket path) and never contain
passwords or usernames.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any


class ValkeyError(Exception):
    """Base class of every error this package raises."""


class ConfigError(ValkeyError, ValueError):
    """Bad configuration or bad arguments."""


class ServerReplyError(ValkeyError):
    """An error reply from the server (its text starts with the error code)."""

    @property
    def code(self) -> str:
        """The error code, e.g. ``WRONGTYPE`` or ``OOM``."""
        text = str(self)
        return text.split(" ", 1)[0] if text else ""


class AuthenticationError(ServerReplyError):
    """AUTH was refused (wrong username or password)."""


class ValkeyConnectionError(ValkeyError, ConnectionError):
    """The connection could not be made or broke.

    ``partial`` (when set) holds the per-key results the batch had completed
    before the failure; keys past that point are reported as failed.
    """

    partial: Any = None  # a connection's (values, errors, too_large); a client's BatchResult


class ValkeyTimeoutError(ValkeyConnectionError, TimeoutError):
    """No progress within the configured timeout."""


class ProtocolError(ValkeyConnectionError):
    """The server sent bytes that are not valid RESP for the command."""


class ClientClosedError(ValkeyError, RuntimeError):
    """The client was closed before or while the batch ran."""


class IntegrityError(ValkeyError):
    """A value failed its checksum on load (the ``checksum`` option): it was
    corrupted somewhere between writer and reader, or written without (or
    with another) checksum. A per-key result in ``BatchResult.errors``, like
    a server error reply; the key reads as a miss. ``code`` is ``CHECKSUM``."""

    code = "CHECKSUM"


class TlsError(ValkeyConnectionError):
    """The TLS layer refused the connection: certificate verification,
    hostname mismatch, a client certificate the server wanted, or a TLS alert.
    The message names the endpoint and the reason, never credentials."""


def partial_results(exc: BaseException, n: int) -> list[Any]:
    """The ``n`` per-key results a failed batch delivered before it failed
    (``exc.partial``; a cluster fills in the nodes that answered), ``None``
    for every key it did not: never a success that did not happen."""
    partial = getattr(exc, "partial", None)
    out = list(partial) if isinstance(partial, list) else []
    return (out + [None] * n)[:n]


def failed_future(exc: BaseException) -> Future[Any]:
    """A future that has already failed with `exc`: the outcome of a batch
    that could not even be submitted (a closed client, say)."""
    fut: Future[Any] = Future()
    fut.set_exception(exc)
    return fut
