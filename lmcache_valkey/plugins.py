"""Entry-point hooks that other frameworks call.

``vllm.general_plugins`` entry points run in every vLLM process (API server,
engine core, workers) before any config is parsed, so this is where the short
LMCache adapter name ``lmcache_valkey`` and the vLLM KV connector name
``ValkeyConnector`` are registered. Every hook is
idempotent and harmless when the framework it serves is not installed.
"""

from __future__ import annotations


def register_all() -> None:
    """vLLM general plugin: register our integrations that can be registered."""
    from .lmcache.registration import register as register_lmcache
    from .vllm.registration import register as register_vllm_connector

    register_vllm_connector()
    register_lmcache()
