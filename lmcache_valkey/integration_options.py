"""One path from an integration's options to a client.

Every integration -- LMCache's L2 adapter and remote connector, the vLLM
connector, the SGLang backend -- reads a mapping of options that a user
wrote into someone else's configuration (``adapter_params``,
``extra_config``, ``kv_connector_extra_config``, the HiCache extra config).
They differ in their own option names, defaults and where the options are
written; :class:`IntegrationOptions` holds those differences, and does the
rest the same way for all of them:

- an unknown option fails with one message that names it as the user wrote
  it and lists the valid ones (a misspelt option must not run with
  defaults);
- the password is held as a :class:`~lmcache_valkey.config.Secret` from the
  start, so no repr, log line or error shows it;
- the integration's ``key_prefix`` and ``ttl_s`` defaults apply
  (``key_prefix: null`` = none, ``ttl_s: 0`` = never expire), and every
  client option is validated with errors that start with the integration's
  name;
- a server is required: an inference engine must never start a private
  embedded Valkey that no other replica can reach.

The client is then built from the validated
:class:`~lmcache_valkey.config.ClientConfig` alone, by
:func:`lmcache_valkey.client.factory.open_client` (``config=``; a cluster client
for a cluster URL): nothing re-reads the URL, the options or the
environment, so the client is exactly what was validated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .config import ClientConfig, Secret, unknown_options_error
from .errors import ConfigError

if TYPE_CHECKING:
    from .client.factory import AnyClient

#: Every option a client takes (the fields of ClientConfig).
CLIENT_OPTIONS = frozenset(f.name for f in dataclasses.fields(ClientConfig))


@dataclasses.dataclass(frozen=True)
class IntegrationOptions:
    """How one integration reads its options (see the module docstring)."""

    #: Starts every error: the name the user configured (``ValkeyConnector``).
    owner: str
    #: The integration's own option names (``url`` and the like).
    own: frozenset[str]
    #: Defaults of the client's key prefix and TTL for this integration.
    key_prefix: str
    ttl_s: float | None
    #: How to name a server, for the error when none is configured.
    missing_server: str
    #: Where the options are written, for the unknown-option message.
    where: str = ""
    #: The client options it accepts (all of ClientConfig's unless narrowed).
    client: frozenset[str] = CLIENT_OPTIONS

    @property
    def valid(self) -> frozenset[str]:
        return self.own | self.client

    def check_names(self, names: Iterable[str], shown_under: str = "") -> None:
        """Refuse any name that is neither the integration's nor the client's;
        `shown_under` is what the user wrote before each name."""
        unknown = set(names) - self.valid
        if unknown:
            raise unknown_options_error(unknown, self.valid, owner=self.owner, where=self.where,
                                        shown_under=shown_under)

    def client_config(self, url: Any, options: Mapping[str, Any],
                      env: Mapping[str, str] | None = None) -> ClientConfig:
        """The validated client config of `url` and the client `options`
        (the integration's own options taken out; `env`: ``os.environ``
        when None)."""
        if url is not None and not isinstance(url, str):
            raise ConfigError(f"{self.owner}: url must be a string, not {type(url).__name__}")
        options = dict(options)
        options.setdefault("key_prefix", self.key_prefix)
        options.setdefault("ttl_s", self.ttl_s)
        if options["key_prefix"] is None:
            options["key_prefix"] = ""
        if options["ttl_s"] == 0:
            options["ttl_s"] = None
        if options.get("password") is not None and not isinstance(options["password"], Secret):
            options["password"] = Secret(str(options["password"]))
        try:
            config = ClientConfig.from_options(url or None, env=env, **options)
        except ConfigError as e:  # our messages never carry the password
            raise ConfigError(f"{self.owner}: {e}") from None
        if config.embedded:
            raise ConfigError(f"{self.owner} needs a server: {self.missing_server}")
        return config


class IntegrationConfig:
    """What an integration's validated config (a dataclass with a
    ``client_config`` field) does the same way as the others."""

    client_config: ClientConfig

    def create_client(self) -> AnyClient:
        """A ValkeyClient, or a cluster client for a cluster URL / cluster=true."""
        from .client.factory import open_client

        return open_client(config=self.client_config)

    def _client_summary(self) -> str:  # no secrets
        c = self.client_config
        return (f"{c.redacted_url()}, key_prefix={c.key_prefix!r}, ttl_s={c.ttl_s}, "
                f"num_connections={c.num_connections}")
