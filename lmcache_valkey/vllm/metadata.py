"""What the scheduler tells the workers each step: which blocks to load, which to save."""

from __future__ import annotations

import dataclasses

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata


@dataclasses.dataclass
class BlockTransfer:
    """Blocks of one request: ``hashes[i]`` (hex of vLLM's chained block hash)
    is stored in / loaded into KV block ``block_ids[i]``."""

    req_id: str
    hashes: list[str]
    block_ids: list[int]


@dataclasses.dataclass
class ValkeyConnectorMetadata(KVConnectorMetadata):
    loads: list[BlockTransfer] = dataclasses.field(default_factory=list)
    saves: list[BlockTransfer] = dataclasses.field(default_factory=list)
    #: Blocks freed since the last step: save copies still reading them must
    #: finish before this step's compute may overwrite them.
    freed_blocks: set[int] = dataclasses.field(default_factory=set)
