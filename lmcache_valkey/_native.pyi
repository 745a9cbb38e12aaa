"""Type stubs for the compiled hot loop (cython_ext/_native.pyx)."""

import socket
from typing import Any, Literal

from .errors import ServerReplyError

_Outcome = tuple[list[Any], dict[int, ServerReplyError], dict[int, int]]

class RespConnection:
    label: str
    def __init__(
        self,
        fd: int,
        label: str,
        *,
        timeout_s: float = ...,
        max_bulk_len: int = ...,
        max_inflight_bytes: int = ...,
        rbuf_size: int = ...,
    ) -> None: ...
    @classmethod
    def over_socket(
        cls,
        sock: socket.socket,
        label: str,
        *,
        timeout_s: float = ...,
        max_bulk_len: int = ...,
        max_inflight_bytes: int = ...,
        rbuf_size: int = ...,
    ) -> RespConnection: ...
    @property
    def transport(self) -> Literal["fd", "socket"]: ...
    @property
    def failed(self) -> bool: ...
    def set_timeout(self, timeout_s: float) -> None: ...
    def set_max_inflight_bytes(self, max_inflight_bytes: int, set_bytes: int = ...) -> None: ...
    def abort(self) -> None: ...
    def batch_get_into(self, keys: list[bytes], dests: list[Any]) -> _Outcome: ...
    def batch_set(self, keys: list[bytes], values: list[Any], ttl_ms: int = ...) -> _Outcome: ...
    def batch_exists(self, keys: list[bytes]) -> _Outcome: ...
    def batch_touch(self, keys: list[bytes], ttl_ms: int) -> _Outcome: ...
    def batch_delete(self, keys: list[bytes]) -> _Outcome: ...
    def execute(self, *args: bytes | str | int) -> Any: ...

def parse_reply_header(data: bytes) -> tuple[str, int, bytes, int] | None: ...
DEBUG_BUILD: bool
OP_KINDS: dict[str, int]
