"""Valkey Cluster support: slot routing, topology, the cluster client, and a
loopback cluster builder for tests and benchmarks."""

from .client import MAX_REDIRECTS, ValkeyClusterClient
from .slots import NUM_SLOTS, crc16, hash_tag, key_slot

__all__ = ["MAX_REDIRECTS", "NUM_SLOTS", "ValkeyClusterClient", "crc16", "hash_tag", "key_slot"]
