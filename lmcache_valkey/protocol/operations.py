"""The five batch operations, named once.

Every layer speaks of the same five operations: the engine (one, over every
transport, TLS included) by its ``OpKind`` code and method, the client and
the cluster by what a key that never got a reply reads as, the stats by the
operation's name and outcomes, the cluster's replica routing by whether a
replica may answer. Each of them reads it from here, so that adding or
changing an operation is one row, not five lists kept in step.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from .._native import OP_KINDS

if TYPE_CHECKING:
    from ..client.integrity import Checksum
    from .engine import Engine


@dataclasses.dataclass(frozen=True, eq=False)
class Operation:
    """One batch operation (compared by identity: ``op is GET``)."""

    #: Its name in stats, metrics and logs.
    name: str
    #: The command sent per key.
    command: str
    #: The engine's code for it (``OpKind`` in cython_ext/engine.pxi).
    code: int
    #: The engine method that runs a batch of it (:class:`~lmcache_valkey.protocol.engine.Engine`).
    method: str
    #: What a key reads as when its batch failed before its reply.
    failed_value: Any
    #: Per-key outcomes counted by :mod:`lmcache_valkey.observability.stats`, the "ok" one first.
    outcomes: tuple[str, ...]
    #: Whether a READONLY replica may serve it (it writes nothing).
    replica_safe: bool
    #: Whether each key comes with a buffer (GET's destination, SET's value).
    has_buffers: bool = False
    #: Whether the engine method takes the TTL in milliseconds after the keys.
    takes_ttl: bool = False

    def __repr__(self) -> str:
        return f"<operation {self.name}>"

    def args(self, ttl_ms: int) -> tuple[Any, ...]:
        """The engine method's arguments after keys (and buffers)."""
        return (ttl_ms,) if self.takes_ttl else ()


GET = Operation("get", "GET", OP_KINDS["GET"], "batch_get_into", None,
                ("hit", "miss", "error"), replica_safe=True, has_buffers=True)
SET = Operation("set", "SET", OP_KINDS["SET"], "batch_set", False,
                ("stored", "error"), replica_safe=False, has_buffers=True, takes_ttl=True)
EXISTS = Operation("exists", "EXISTS", OP_KINDS["EXISTS"], "batch_exists", False,
                   ("found", "missing", "error"), replica_safe=True)
#: EXISTS that also renews the key's TTL (``PEXPIRE``): a write.
TOUCH = Operation("touch", "PEXPIRE", OP_KINDS["PEXPIRE"], "batch_touch", False,
                  ("found", "missing", "error"), replica_safe=False, takes_ttl=True)
DELETE = Operation("delete", "DEL", OP_KINDS["DEL"], "batch_delete", 0,
                   ("deleted", "missing", "error"), replica_safe=False)

OPERATIONS = (GET, SET, EXISTS, TOUCH, DELETE)


def run_batch(native: Engine, op: Operation, keys: list[bytes], buffers: list[Any] | None,
              args: tuple[Any, ...], checksum: Checksum | None = None) -> Any:
    """Run a batch of `op` on engine `native` (a connection's RespConnection,
    over its fd or its TLS socket), its values sealed / checked by `checksum`; returns
    the engine's ``(values, errors, too_large)``."""
    method = getattr(native, op.method)
    if buffers is None:  # EXISTS, TOUCH, DELETE
        return method(keys, *args)
    if checksum is not None:  # trailers added and checked here
        return checksum.run(native, op, keys, buffers, args)
    return method(keys, buffers, *args)
