"""The cluster's slot map: which node serves which slot.

Read with ``CLUSTER SHARDS`` (Valkey 7+), falling back to ``CLUSTER SLOTS``
when a server does not know it, from the first node that answers among the
ones given (seeds, then every node seen before). Fetching opens one
short-lived connection per node tried; it never touches the data path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from ..config import ClientConfig
from ..errors import ServerReplyError, ValkeyConnectionError, ValkeyError
from ..protocol.connection import open_connection
from ..protocol.server_profile import UNKNOWN
from .slots import NUM_SLOTS

log = logging.getLogger(__name__)

Addr = tuple[str, int]


class SlotMap:
    """Primary and replicas of every slot (``None`` where none is assigned)."""

    __slots__ = ("primaries", "replicas", "source")

    def __init__(self) -> None:
        self.primaries: list[Addr | None] = [None] * NUM_SLOTS
        self.replicas: list[tuple[Addr, ...]] = [()] * NUM_SLOTS
        self.source: Addr | None = None  # the node it was read from

    def assign(self, start: int, end: int, primary: Addr, replicas: Sequence[Addr]) -> None:
        reps = tuple(replicas)
        for s in range(start, end + 1):
            self.primaries[s] = primary
            self.replicas[s] = reps

    @property
    def nodes(self) -> set[Addr]:
        out = {a for a in self.primaries if a is not None}
        for reps in set(self.replicas):
            out.update(reps)
        return out

    @property
    def primary_nodes(self) -> list[Addr]:
        return sorted({a for a in self.primaries if a is not None})

    def covered(self) -> int:
        return sum(a is not None for a in self.primaries)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, (bytes, bytearray)) else str(v)


def _pairs(flat: Sequence[Any]) -> dict[str, Any]:
    return {_text(flat[i]): flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def _node_addr(node: dict[str, Any], asked: Addr, tls: bool) -> Addr | None:
    host = _text(node.get("endpoint") or node.get("ip") or "")
    if not host or host == "?":  # "unknown endpoint": the node we asked
        host = asked[0]
    port = node.get("tls-port") if tls and node.get("tls-port") else node.get("port")
    if not port:
        return None
    return host, int(port)


def parse_shards(reply: Sequence[Any], asked: Addr, tls: bool = False) -> SlotMap:
    """``CLUSTER SHARDS`` → SlotMap. Replicas count only while ``online``."""
    smap = SlotMap()
    for shard in reply:
        fields = _pairs(shard)
        primary: Addr | None = None
        replicas: list[Addr] = []
        for raw in fields.get("nodes") or []:
            node = _pairs(raw)
            addr = _node_addr(node, asked, tls)
            if addr is None:
                continue
            if _text(node.get("role", "")) == "master":
                primary = addr
            elif _text(node.get("health", "")) == "online":
                replicas.append(addr)
        ranges = fields.get("slots") or []
        if primary is None:
            continue
        for i in range(0, len(ranges) - 1, 2):
            smap.assign(int(ranges[i]), int(ranges[i + 1]), primary, replicas)
    return smap


def parse_slots(reply: Sequence[Any], asked: Addr) -> SlotMap:
    """``CLUSTER SLOTS`` → SlotMap (``[start, end, [ip, port, id], replicas...]``)."""
    smap = SlotMap()
    for entry in reply:
        start, end = int(entry[0]), int(entry[1])
        addrs = []
        for node in entry[2:]:
            host = _text(node[0]) or asked[0]
            if host == "?":
                host = asked[0]
            addrs.append((host, int(node[1])))
        if addrs:
            smap.assign(start, end, addrs[0], addrs[1:])
    return smap


def read_slot_map(config: ClientConfig, addr: Addr) -> SlotMap:
    """The slot map as one node sees it (raises on connect/protocol errors)."""
    # A control connection: no GETs, so no INFO round trip to learn the server.
    conn = open_connection(config.for_node(*addr), profile=UNKNOWN)
    try:
        try:
            smap = parse_shards(conn.native.execute("CLUSTER", "SHARDS"), addr, config.tls)
        except ServerReplyError as e:
            if "unknown" not in str(e).lower():  # e.g. cluster support disabled
                raise
            smap = parse_slots(conn.native.execute("CLUSTER", "SLOTS"), addr)
    finally:
        conn.close()
    smap.source = addr
    return smap


def fetch_slot_map(config: ClientConfig, candidates: Iterable[Addr]) -> SlotMap:
    """The slot map from the first candidate that answers with a non-empty
    one; ValkeyConnectionError naming every node tried when none does."""
    errors: list[str] = []
    for addr in dict.fromkeys(candidates):  # each node once, in order
        try:
            smap = read_slot_map(config, addr)
        except ServerReplyError as e:
            errors.append(f"{addr_text(addr)}: {e}")
            continue
        except (ValkeyError, OSError) as e:
            errors.append(str(e))
            continue
        if smap.covered():
            return smap
        errors.append(f"{addr_text(addr)}: no slots assigned")
    raise ValkeyConnectionError(
        "cluster: no node answered with a slot map (" + "; ".join(errors or ["no nodes"]) + ")")


def addr_text(addr: Addr) -> str:
    """A node's ``host:port`` (an IPv6 host in brackets)."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
