"""Password and ACL-user authentication against real servers: each of
conftest.CONTRACT_SERVERS (Valkey 9.1, Valkey 8.1, Redis 7), through the
`server_kind` fixture."""

from __future__ import annotations

import logging

import pytest
from checks import assert_refused_without_secrets, retry

from lmcache_valkey import AuthenticationError, ServerReplyError, ValkeyClient

PASSWORD = "s3cret-Pa55"


@pytest.fixture(scope="module")
def locked_server(server_kind):
    from lmcache_valkey import EmbeddedValkey
    from lmcache_valkey.server.embedded import server_binary

    users = [
        "default on >" + PASSWORD + " ~* +@all",
        "alice on >alice-Pa55 ~kv:* +@all",
        "reader on >reader-Pa55 ~* -@all +get +exists +auth +ping",
    ]
    # server_kind skipped (or failed) already where the binary is missing.
    with EmbeddedValkey(users=users, binary=server_binary(server_kind)) as s:
        yield s


def refused_auths(admin: ValkeyClient) -> int:
    """AUTHs the server refused: INFO's counter (Valkey, Redis 7.2+), else
    the ACL LOG's auth entries (Redis 7.0 has no counter)."""
    stats = admin.execute("INFO", "stats").decode()
    if "acl_access_denied_auth:" in stats:
        return int(stats.split("acl_access_denied_auth:")[1].split()[0])
    total = 0
    for entry in admin.execute("ACL", "LOG"):
        fields = dict(zip(entry[::2], entry[1::2], strict=True))
        if fields.get(b"reason") == b"auth":
            total += int(fields[b"count"])
    return total


def test_requirepass(make_server, make_client, server_kind) -> None:
    s = make_server(server_kind, password=PASSWORD)
    c = make_client(s.url, password=PASSWORD)
    assert c.batch_set(["k"], [b"v"]) == [True]


def test_password_from_url(locked_server, make_client) -> None:
    c = make_client(f"valkey://:{PASSWORD}@{locked_server.host}:{locked_server.port}")
    assert c.ping()


def test_acl_user(locked_server, make_client) -> None:
    c = make_client(f"valkey://alice:alice-Pa55@{locked_server.host}:{locked_server.port}",
                    key_prefix="kv:")
    assert c.batch_set(["k"], [b"v"]) == [True]
    assert c.batch_get_into(["k"], [bytearray(1)]) == [1]


def test_noperm_is_a_per_key_error(locked_server, make_client) -> None:
    alice = make_client(locked_server.url, username="alice", password="alice-Pa55")
    result = alice.batch_set(["kv:ok", "outside"], [b"1", b"2"])  # alice may only touch kv:*
    assert result == [True, False]
    assert result.errors[1].code == "NOPERM"
    reader = make_client(locked_server.url, username="reader", password="reader-Pa55")
    result = reader.batch_set(["kv:x"], [b"1"])
    assert result == [False] and result.errors[0].code == "NOPERM"
    assert reader.batch_exists(["kv:ok"]) == [True]


@pytest.mark.parametrize("user, password",
                         [(None, "wrong"), ("alice", "wrong"), ("mallory", "Zq9-nope")])
def test_wrong_credentials_give_one_clear_error_without_secrets(
        locked_server, make_client, caplog, user, password) -> None:
    caplog.set_level(logging.DEBUG)
    c = make_client(locked_server.url, username=user, password=password)
    with pytest.raises(AuthenticationError) as info:
        c.batch_exists(["k"])
    assert_refused_without_secrets(info, c, caplog.text,
                                   f"{locked_server.host}:{locked_server.port}", user, password)


def test_no_password_against_a_locked_server_is_per_key_noauth(locked_server, make_client) -> None:
    c = make_client(locked_server.url)
    result = c.batch_exists(["k"])
    assert result == [False] and result.errors[0].code == "NOAUTH"
    with pytest.raises(ServerReplyError, match="NOAUTH"):
        c.execute("PING")


def test_password_never_in_repr(make_server, server_kind) -> None:
    s = make_server(server_kind, password=PASSWORD)
    with ValkeyClient(f"valkey://:{PASSWORD}@{s.host}:{s.port}") as c:
        assert PASSWORD not in repr(c) and PASSWORD not in repr(c.config)


def test_refused_credentials_back_off_instead_of_retrying_every_batch(make_server, make_client,
                                                                      server_kind):
    """A misconfigured client must not send an AUTH per batch (a storm on a
    busy server): attempts back off, the error stays AuthenticationError, and
    once the server accepts the credentials the client recovers by itself."""
    s = make_server(server_kind, users=["alice on >right ~* +@all"])
    admin = make_client(s.url)
    c = make_client(s.url, username="alice", password="other", num_connections=1,
                    reconnect_backoff_s=0.2, reconnect_backoff_max_s=0.5)
    for _ in range(50):
        with pytest.raises(AuthenticationError, match="authentication refused"):
            c.batch_exists(["k"])
    denied = refused_auths(admin)
    assert 1 <= denied <= 3, denied
    admin.execute("ACL", "SETUSER", "alice", ">other")
    assert retry(lambda: c.batch_exists(["k"]), AuthenticationError, 5, 0.05) == [False]
