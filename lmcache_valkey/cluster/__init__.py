"""Valkey Cluster support: slot routing, topology and the cluster client (a
loopback cluster for tests and examples is lmcache_valkey.testkit.local_cluster)."""

from .client import MAX_REDIRECTS, ValkeyClusterClient
from .slots import NUM_SLOTS, crc16, hash_tag, key_slot

__all__ = ["MAX_REDIRECTS", "NUM_SLOTS", "ValkeyClusterClient", "crc16", "hash_tag", "key_slot"]
