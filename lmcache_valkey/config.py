"""Client configuration: URL + keyword options + ``VALKEY_*`` environment.

Precedence, highest first: keyword options, the URL, the environment
(``VALKEY_HOST``, ``VALKEY_PORT``, ``VALKEY_DB``, ``VALKEY_USERNAME``,
``VALKEY_PASSWORD``), then defaults. With no URL and no ``VALKEY_HOST`` the
client starts an embedded server (see :mod:`lmcache_valkey.server.embedded`).

Secrets are held in :class:`Secret`, whose repr and str never show the value.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from .client.integrity import checksum_for
from .errors import ConfigError

DEFAULT_PORT = 6379
_TCP_SCHEMES = ("valkey", "redis")
_TLS_SCHEMES = ("valkeys", "rediss")
_CLUSTER_SUFFIX = "+cluster"  # valkey+cluster://h:p[,h:p...] and the TLS forms
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class Secret:
    """A value that must never be printed (passwords)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:  # pickling keeps the value, printing never does
        return (Secret, (self._value,))


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """Everything a :class:`~lmcache_valkey.ValkeyClient` needs.

    Build it with :meth:`from_options`; the fields are documented in the
    README's configuration table.
    """

    host: str | None = None
    port: int = DEFAULT_PORT
    unix_path: str | None = None
    db: int = 0
    # ACL user names are treated as secrets too: kept out of reprs and messages.
    username: str | None = dataclasses.field(default=None, repr=False)
    password: Secret | None = None
    key_prefix: bytes = b""
    ttl_s: float | None = None
    num_connections: int = 2
    connect_timeout_s: float = 5.0
    op_timeout_s: float = 30.0
    max_bulk_len: int = 512 * 1024 * 1024
    # GET reply bytes requested ahead per connection; None: chosen per server
    # at connect (64 MiB on Valkey 9+, 256 KiB elsewhere: server_profile.py).
    max_inflight_bytes: int | None = None
    socket_buffer_bytes: int | None = None
    reconnect_backoff_s: float = 0.05
    reconnect_backoff_max_s: float = 2.0
    # Valkey Cluster: seed nodes (host, port); host/port above is the first.
    cluster: bool = False
    cluster_nodes: tuple[tuple[str, int], ...] = ()
    read_from_replicas: bool = False
    topology_refresh_s: float = 30.0
    # TLS (valkeys:// / rediss://). Without a CA file the system store is used.
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_server_name: str | None = None  # name checked against the certificate
    tls_check_hostname: bool = True
    # End-to-end value checksum: "none", "xxh3" or "crc32c" (lmcache_valkey.client.integrity).
    checksum: str = "none"

    # -- construction ------------------------------------------------------

    @classmethod
    def from_options(
        cls,
        url: str | None = None,
        env: Mapping[str, str] | None = None,
        **options: Any,
    ) -> ClientConfig:
        """Merge keyword options over the URL over the environment."""
        env = os.environ if env is None else env
        unknown = set(options) - _OPTION_NAMES
        if unknown:
            raise unknown_options_error(unknown, _OPTION_NAMES)
        merged: dict[str, Any] = _from_env(env)
        if url:
            merged.update(_parse_url(url))
        merged.update({k: v for k, v in options.items() if v is not None})
        return cls(**_coerce(merged))

    @classmethod
    def from_url_or_config(cls, url: str | None, options: dict[str, Any]) -> ClientConfig:
        """What client constructors take: ``config=`` (a ready ClientConfig)
        or a URL and options, not both."""
        config = options.pop("config", None)
        if config is None:
            return cls.from_options(url, **options)
        if url is not None or options:
            raise ConfigError("give either config= or a URL and options, not both")
        return config

    def __post_init__(self) -> None:
        if self.num_connections < 1:
            raise ConfigError("num_connections must be >= 1")
        if self.ttl_s is not None and self.ttl_s <= 0:
            raise ConfigError("ttl_s must be > 0 (or None for no expiry)")
        if self.ttl_s is not None and self.ttl_ms < 1:
            raise ConfigError("ttl_s must be at least 0.001 (1 ms)")
        for name in ("connect_timeout_s", "op_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be 1..65535, not {self.port}")
        if self.db < 0:
            raise ConfigError("db must be >= 0")
        if self.max_bulk_len < 1 or (self.max_inflight_bytes is not None
                                     and self.max_inflight_bytes < 1):
            raise ConfigError("max_bulk_len and max_inflight_bytes must be >= 1")
        if self.host and self.unix_path:
            raise ConfigError("give either a host or a unix socket path, not both")
        if self.topology_refresh_s <= 0:
            raise ConfigError("topology_refresh_s must be > 0")
        if self.unix_path and (self.cluster or self.tls):
            raise ConfigError("cluster and TLS need a TCP address, not a unix socket")
        if self.cluster and self.embedded:
            raise ConfigError("cluster mode needs at least one seed node "
                              "(valkey+cluster://host:port[,host:port...])")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("tls_cert_file and tls_key_file go together")
        if not self.tls and any((self.tls_ca_file, self.tls_cert_file, self.tls_server_name)):
            raise ConfigError("TLS options given but TLS is off: use valkeys:// or tls=true")
        checksum_for(self.checksum)  # a known name, and its library is installed

    # -- derived -----------------------------------------------------------

    @property
    def embedded(self) -> bool:
        """No server configured: the client starts its own."""
        return self.host is None and self.unix_path is None

    @property
    def ttl_ms(self) -> int:
        return 0 if self.ttl_s is None else round(self.ttl_s * 1000)

    @property
    def endpoint(self) -> str:
        """Where the server is, for messages: host:port or unix:/path. No secrets."""
        if self.unix_path:
            return f"unix:{self.unix_path}"
        if self.host is None:
            return "embedded"
        return _endpoint(self.host, self.port)

    def redacted_url(self) -> str:
        if self.unix_path:
            return f"unix://{self.unix_path}" + (f"?db={self.db}" if self.db else "")
        auth = ""
        if self.username or self.password:
            auth = f"{'***' if self.username else ''}{':***' if self.password else ''}@"
        scheme = ("valkeys" if self.tls else "valkey") + (_CLUSTER_SUFFIX if self.cluster else "")
        where = self.endpoint
        if self.cluster and len(self.cluster_nodes) > 1:
            where = ",".join(_endpoint(h, p) for h, p in self.cluster_nodes)
        return f"{scheme}://{auth}{where}/{self.db}"

    def with_endpoint(self, host: str | None, port: int,
                      unix_path: str | None = None) -> ClientConfig:
        return dataclasses.replace(self, host=host, port=port, unix_path=unix_path)

    def for_node(self, host: str, port: int) -> ClientConfig:
        """The same options aimed at one node of a cluster (a plain,
        non-cluster config: the node's own client does no routing)."""
        return dataclasses.replace(self, host=host, port=port, unix_path=None, cluster=False,
                                   cluster_nodes=())


def unknown_options_error(unknown: Iterable[str], valid: Iterable[str], *, owner: str = "",
                          where: str = "", shown_under: str = "") -> ConfigError:
    """The one "unknown option" message: each unknown name (as the user
    wrote it: `shown_under` + name), where it was written, and every valid
    one. `owner` (the class the user configured) starts it."""
    names = sorted(shown_under + name for name in unknown)
    text = (f"unknown option(s) {names}{f' in {where}' if where else ''}; valid options"
            f"{f' under {shown_under!r}' if shown_under else ''} are {sorted(valid)}")
    return ConfigError(f"{owner}: {text}" if owner else text)


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(ClientConfig))


_QUERY_OPTIONS = ("db", "cluster", "read_from_replicas", "tls", "tls_ca_file", "tls_cert_file",
                  "tls_key_file", "tls_server_name", "tls_check_hostname", "checksum")


def _parse_url(url: str) -> dict[str, Any]:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    seeds: list[tuple[str, int]] = []
    if scheme.endswith(_CLUSTER_SUFFIX):
        # urlsplit reads one host:port; take the seed list out first.
        url, seeds = _split_seed_nodes(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"malformed server URL: {e}") from None
    scheme = parts.scheme.lower()
    out: dict[str, Any] = {}
    if scheme.endswith(_CLUSTER_SUFFIX):
        scheme = scheme[:-len(_CLUSTER_SUFFIX)]
        out["cluster"] = True
    if parts.username:
        out["username"] = unquote(parts.username)
    if parts.password is not None:
        out["password"] = unquote(parts.password)
    query = dict(q.split("=", 1) for q in parts.query.split("&") if "=" in q)
    unknown = set(query) - set(_QUERY_OPTIONS)
    if unknown:
        raise ConfigError(f"unknown URL parameter(s) {sorted(unknown)}; "
                          f"valid ones are {list(_QUERY_OPTIONS)}")
    out.update({k: unquote(v) for k, v in query.items()})
    if scheme == "unix":
        if not parts.path:
            raise ConfigError("unix:// URL needs a socket path, e.g. unix:///run/valkey.sock")
        out["unix_path"] = parts.path
        out["host"] = None
        return out
    if scheme in _TLS_SCHEMES:
        out["tls"] = True
    elif scheme not in _TCP_SCHEMES:
        raise ConfigError(
            f"unsupported URL scheme {parts.scheme!r}: use valkey://, valkeys:// (TLS), "
            "valkey+cluster://, redis:// variants of those, or unix://"
        )
    if not parts.hostname:
        raise ConfigError("server URL needs a host, e.g. valkey://127.0.0.1:6379")
    out["host"] = parts.hostname
    out["port"] = port or DEFAULT_PORT
    if seeds:
        out["cluster_nodes"] = tuple(seeds)
    path = parts.path.strip("/")
    if path:
        out["db"] = path
    return out


def _split_seed_nodes(url: str) -> tuple[str, list[tuple[str, int]]]:
    """valkey+cluster://[auth@]h1:p1,h2:p2/... -> (URL with h1:p1 only, seeds)."""
    scheme, rest = url.split("://", 1)
    netloc, sep, tail = rest.partition("/")
    if "?" in netloc:  # no path: the query follows the hosts directly
        netloc, _, tail = netloc.partition("?")
        sep = ""
    auth, at, hosts = netloc.rpartition("@")
    seeds = []
    for hp in hosts.split(","):
        try:
            p = urlsplit(f"//{hp}")
            seeds.append((p.hostname or "", p.port or DEFAULT_PORT))
        except ValueError as e:
            raise ConfigError(f"malformed cluster node {hp!r}: {e}") from None
        if not p.hostname:
            raise ConfigError(f"malformed cluster node {hp!r}: no host")
    first = hosts.split(",")[0]
    return f"{scheme}://{auth}{at}{first}{sep or ('?' if tail else '')}{tail}", seeds


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for var, name in (
        ("VALKEY_HOST", "host"),
        ("VALKEY_PORT", "port"),
        ("VALKEY_DB", "db"),
        ("VALKEY_USERNAME", "username"),
        ("VALKEY_PASSWORD", "password"),
    ):
        if env.get(var):
            out[name] = env[var]
    return out


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    """Turn strings from URLs, env and YAML into typed fields, with errors
    that name the option."""
    out = dict(values)
    for name in ("port", "db", "num_connections", "max_bulk_len", "max_inflight_bytes",
                 "socket_buffer_bytes"):
        if out.get(name) is not None:
            out[name] = _as_number(name, out[name], int)
    for name in ("ttl_s", "connect_timeout_s", "op_timeout_s", "reconnect_backoff_s",
                 "reconnect_backoff_max_s"):
        if out.get(name) is not None:
            out[name] = _as_number(name, out[name], float)
    for name in ("topology_refresh_s",):
        if out.get(name) is not None:
            out[name] = _as_number(name, out[name], float)
    for name in ("cluster", "read_from_replicas", "tls", "tls_check_hostname"):
        if out.get(name) is not None:
            out[name] = _as_bool(name, out[name])
    nodes = out.get("cluster_nodes")
    if nodes is not None:
        out["cluster_nodes"] = tuple((str(h), _as_number("cluster_nodes port", p, int))
                                     for h, p in nodes)
    if out.get("cluster") and out.get("host") and not out.get("cluster_nodes"):
        port = _as_number("port", out.get("port", DEFAULT_PORT), int)
        out["cluster_nodes"] = ((out["host"], port),)
    if isinstance(out.get("checksum"), str):
        out["checksum"] = out["checksum"].strip().lower()
    prefix = out.get("key_prefix")
    if isinstance(prefix, str):
        out["key_prefix"] = prefix.encode()
    elif prefix is not None and not isinstance(prefix, bytes):
        raise ConfigError(f"key_prefix must be str or bytes, not {type(prefix).__name__}")
    password = out.get("password")
    if password is not None and not isinstance(password, Secret):
        out["password"] = Secret(str(password))
    return out


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, not {value!r}")


def _as_number(name: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a number, not a boolean")
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be {'an integer' if kind is int else 'a number'}, "
                          f"not {value!r}") from None
    if kind is int and isinstance(value, float) and value != number:
        raise ConfigError(f"{name} must be an integer, not {value!r}")
    return number
