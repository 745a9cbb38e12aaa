"""Which rank's keys a worker reads and writes, and whether it writes at all.

With tensor parallelism each rank holds its own slice of the KV heads, so
each rank stores its own value per block (``<tp>.<pp>``). Two cases hold the
*same* bytes on several ranks, and storing them once per rank would only
multiply memory and traffic:

- **MLA** (DeepSeek-style latent KV): every TP rank holds the whole latent
  cache. One key per block (``mla.<pp>``), written by TP rank 0, read by all.
- **Fewer KV heads than TP ranks** (e.g. 8 KV heads on TP 16): each head is
  replicated on ``tp / kv_heads`` consecutive ranks. One key per head group
  (``h<group>.<pp>``), written by the group's first rank, read by all of it.

Pipeline stages always hold different layers, so ``pp`` stays in every name.
The scheduler looks up the keys of every name (:meth:`Replication.key_ranks`):
a block is present only if every rank can load it, and one round trip renews
every rank's TTL.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Replication:
    tp_size: int = 1
    pp_size: int = 1
    total_kv_heads: int = 1
    use_mla: bool = False

    @classmethod
    def of(cls, vllm_config: Any) -> Replication:
        par = vllm_config.parallel_config
        model = vllm_config.model_config
        try:
            heads = int(model.get_total_num_kv_heads())
        except Exception:  # a model config without attention heads (tests)
            heads = par.tensor_parallel_size
        return cls(par.tensor_parallel_size, par.pipeline_parallel_size, max(1, heads),
                   bool(getattr(model, "use_mla", False)))

    def key_rank(self, tp_rank: int, pp_rank: int) -> tuple[str, bool]:
        """(the rank part of this worker's keys, whether this worker writes them)."""
        if self.use_mla:
            return f"mla.{pp_rank}", tp_rank == 0
        if self.total_kv_heads < self.tp_size:
            replicas = self.tp_size // self.total_kv_heads
            return f"h{tp_rank // replicas}.{pp_rank}", tp_rank % replicas == 0
        return f"{tp_rank}.{pp_rank}", True

    def key_ranks(self) -> list[str]:
        """Every distinct rank part, in rank order: what a lookup must cover."""
        return list(dict.fromkeys(self.key_rank(t, p)[0]
                                  for p in range(self.pp_size) for t in range(self.tp_size)))
