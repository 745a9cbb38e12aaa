"""Test and example kit, kept out of the runtime integrations.

Nothing here is imported by the client or its integrations; the tests, the
examples and the benchmarks use it to build what they run against:

* :mod:`.tiny_llama`: small local Llama models with random weights (no
  download), for the vLLM tests and the long-document QA example;
* :mod:`.local_cluster`: a Valkey Cluster on loopback from the embedded
  server binary;
* :mod:`.lmcache_bench`: running ``lmcache bench l2`` and reading its summary;
* :mod:`.vllm_http`: requests to a vLLM server's OpenAI-compatible API.
"""
