"""A Valkey Cluster on loopback, built from the embedded server binary.

For tests, examples and benchmarks: ``masters`` primaries with the 16384
slots split evenly (``CLUSTER ADDSLOTSRANGE``), each with ``replicas``
replicas, met with ``CLUSTER MEET``; returns once every node reports
``cluster_state:ok`` and sees every slot and node.

    with start_local_cluster(3) as cluster:
        client = open_client(cluster.url)
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from ..client.valkey_client import ValkeyClient
from ..cluster.slots import NUM_SLOTS
from ..server.embedded import EmbeddedServerError, EmbeddedValkey, free_port

CLUSTER_CONFIG = {
    "cluster-enabled": "yes",
    "cluster-config-file": "nodes.conf",  # in the server's own temporary dir
    "cluster-node-timeout": "2000",
    "cluster-require-full-coverage": "no",  # a dead primary fails only its slots
}


class LocalCluster(contextlib.AbstractContextManager["LocalCluster"]):
    """The servers of a loopback cluster and a few admin helpers."""

    def __init__(self, masters: list[EmbeddedValkey], replicas: list[EmbeddedValkey]) -> None:
        self.masters = masters
        self.replicas = replicas
        self.node_ids: dict[int, str] = {}  # port -> cluster node id
        self.bus_ports: dict[int, int] = {}  # port -> cluster bus port

    @property
    def servers(self) -> list[EmbeddedValkey]:
        return self.masters + self.replicas

    @property
    def seeds(self) -> list[tuple[str, int]]:
        return [(s.host, s.port) for s in self.masters]

    @property
    def url(self) -> str:
        return "valkey+cluster://" + ",".join(f"{h}:{p}" for h, p in self.seeds)

    def admin(self, server: EmbeddedValkey, *args: Any, timeout_s: float = 5.0) -> Any:
        """Run one command on one node (a short-lived single connection)."""
        with ValkeyClient(server.url, num_connections=1, connect_timeout_s=timeout_s,
                          op_timeout_s=timeout_s, reconnect_backoff_s=0.01) as c:
            return c.execute(*args)

    def node_id(self, server: EmbeddedValkey) -> str:
        if server.port not in self.node_ids:
            self.node_ids[server.port] = _text(self.admin(server, "CLUSTER", "MYID"))
        return self.node_ids[server.port]

    def info(self, server: EmbeddedValkey) -> dict[str, str]:
        text = _text(self.admin(server, "CLUSTER", "INFO"))
        return dict(line.split(":", 1) for line in text.split("\r\n") if ":" in line)

    def wait_ok(self, timeout_s: float = 30.0, servers: list[EmbeddedValkey] | None = None
                ) -> None:
        """Until every (running) node says cluster_state:ok, sees all slots
        and all nodes."""
        servers = [s for s in (servers or self.servers) if s.running]
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while True:
            try:
                infos = [self.info(s) for s in servers]
                last = infos
                if all(i.get("cluster_state") == "ok"
                       and int(i.get("cluster_slots_assigned", 0)) == NUM_SLOTS
                       and int(i.get("cluster_known_nodes", 0)) == len(self.servers)
                       for i in infos):
                    return
            except Exception as e:  # a node still starting
                last = e
            if time.monotonic() > deadline:
                raise EmbeddedServerError(f"cluster not ready within {timeout_s}s: {last!r}")
            time.sleep(0.05)

    def close(self) -> None:
        for s in self.servers:
            with contextlib.suppress(Exception):
                s.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _text(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """16384 slots cut into `masters` contiguous inclusive ranges."""
    bounds = [NUM_SLOTS * i // masters for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


def start_local_cluster(masters: int = 3, replicas: int = 0, *,
                        config: dict[str, str] | None = None,
                        timeout_s: float = 30.0) -> LocalCluster:
    """Start and form a loopback cluster; the caller closes it."""
    if masters < 1 or replicas < 0:
        raise ValueError("need masters >= 1 and replicas >= 0")
    conf = {**CLUSTER_CONFIG, **(config or {})}
    cluster = LocalCluster([], [])
    try:
        for i in range(masters * (1 + replicas)):
            # The bus port defaults to port + 10000, which fails for free
            # ports above 55535: pick one, distinct from the client port
            # (free_port() may hand out the same port twice in a row).
            port = free_port()
            bus = free_port()
            while bus == port:
                bus = free_port()
            server = EmbeddedValkey(port=port, config={**conf, "cluster-port": str(bus)}).start()
            cluster.bus_ports[server.port] = bus
            (cluster.masters if i < masters else cluster.replicas).append(server)
        for epoch, server in enumerate(cluster.servers, 1):
            cluster.admin(server, "CLUSTER", "SET-CONFIG-EPOCH", epoch)
        for server, (a, b) in zip(cluster.masters, slot_ranges(masters), strict=True):
            cluster.admin(server, "CLUSTER", "ADDSLOTSRANGE", a, b)
        first = cluster.masters[0]
        for server in cluster.servers[1:]:
            cluster.admin(first, "CLUSTER", "MEET", server.host, server.port,
                          cluster.bus_ports[server.port])
        cluster.wait_ok(timeout_s)
        for i, replica in enumerate(cluster.replicas):
            primary = cluster.masters[i // replicas]
            cluster.admin(replica, "CLUSTER", "REPLICATE", cluster.node_id(primary))
        if cluster.replicas:
            _wait_replicas(cluster, timeout_s)
    except BaseException:
        cluster.close()
        raise
    return cluster


def _wait_replicas(cluster: LocalCluster, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        roles = []
        for r in cluster.replicas:
            with contextlib.suppress(Exception):
                info = _text(cluster.admin(r, "INFO", "replication"))
                roles.append("master_link_status:up" in info)
        if len(roles) == len(cluster.replicas) and all(roles):
            cluster.wait_ok(timeout_s)
            return
        if time.monotonic() > deadline:
            raise EmbeddedServerError(f"replicas not in sync within {timeout_s}s")
        time.sleep(0.05)
