"""The engine contract: what the layers above ask of one connection's engine.

There is one implementation, ``_native.RespConnection`` (cython_ext/): one
reply parser, one set of limits and status codes, one meaning per reply for
each operation (lmcache_valkey/protocol/operations.py names them). What varies is the
transport under it: system calls on the socket's fd (plain TCP, unix
sockets), or a socket object's ``send``/``recv_into`` (``valkeys://``: an
``ssl.SSLSocket``, ``RespConnection.over_socket``). The connection, worker,
job, integrity, cluster and server-profile code type engines as ``Engine``,
so they depend on this contract and not on the class.

Every batch method returns ``(values, errors, too_large)``: ``values[i]`` the
key's result (GET: bytes written or None; SET/EXISTS/TOUCH: bool; DELETE: int),
``errors`` the per-key ``ServerReplyError`` by index, ``too_large`` the stored
length of GET values that did not fit their destination (drained, not
written). An I/O, TLS, timeout or protocol failure raises a
``ValkeyConnectionError`` whose ``.partial`` is that triple for the keys
completed before it (the rest read as failed, never as success), and the
engine is ``failed`` from then on.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from ..errors import ServerReplyError

#: ``(values, errors by index, too-large sizes by index)``, see the module docstring.
Outcome = tuple[list[Any], dict[int, ServerReplyError], dict[int, int]]


class Engine(Protocol):
    """One RESP connection's engine (see the module docstring)."""

    @property
    def label(self) -> str:
        """The peer, for exception texts (never credentials)."""
        ...

    @property
    def transport(self) -> Literal["fd", "socket"]:
        """How bytes move: the fd's system calls, or a socket object's methods."""
        ...

    @property
    def failed(self) -> bool:
        """True once an I/O or protocol failure made the connection unusable."""
        ...

    def set_timeout(self, timeout_s: float) -> None: ...
    def set_max_inflight_bytes(self, max_inflight_bytes: int, set_bytes: int = ...) -> None: ...
    def abort(self) -> None:
        """Wake and fail a batch running in another thread."""
        ...

    def batch_get_into(self, keys: list[bytes], dests: list[Any]) -> Outcome: ...
    def batch_set(self, keys: list[bytes], values: list[Any], ttl_ms: int = ...) -> Outcome: ...
    def batch_exists(self, keys: list[bytes]) -> Outcome: ...
    def batch_touch(self, keys: list[bytes], ttl_ms: int) -> Outcome: ...
    def batch_delete(self, keys: list[bytes]) -> Outcome: ...
    def execute(self, *args: bytes | str | int) -> Any:
        """One command on the control path; its reply as Python objects."""
        ...
