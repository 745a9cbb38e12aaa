"""BlockLayout: a block's runs across layers, as torch views and as the numpy
byte views the client receives into — both must cover the same memory."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from lmcache_valkey.errors import ConfigError  # noqa: E402
from lmcache_valkey.vllm.kv_layout import BlockLayout  # noqa: E402


def _spans(segments) -> list[tuple[int, int]]:
    out = []
    for s in segments:
        if isinstance(s, torch.Tensor):
            out.append((s.data_ptr(), s.numel() * s.element_size()))
        else:
            out.append((s.__array_interface__["data"][0], s.nbytes))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("split_kv", [False, True], ids=["cpu-layout", "kv-split"])
def test_host_segments_are_the_blocks_own_memory(dtype, split_kv) -> None:
    num_blocks = 6
    shape = (2, num_blocks, 4, 32, 16) if split_kv else (num_blocks, 4, 32, 32)
    caches = {f"layer.{i}": torch.zeros(shape, dtype=dtype) for i in range(3)}
    layout = BlockLayout(caches, num_blocks)
    for b in range(num_blocks):
        assert _spans(layout.host_segments(b)) == _spans(layout.segments(b))
    assert sum(n for _, n in _spans(layout.host_segments(0))) == layout.block_nbytes
    # Writing through the byte views lands in the tensor's block, nowhere else.
    for seg in layout.host_segments(3):
        seg[...] = 0xFF
    for t in caches.values():
        blocks = t if not split_kv else t.transpose(0, 1)
        for b in range(num_blocks):
            filled = bool((blocks[b].view(torch.uint8) == 0xFF).all())
            assert filled == (b == 3)


def test_block_id_out_of_range_and_bad_shapes() -> None:
    layout = BlockLayout({"l0": torch.zeros(4, 2, 8, 8)}, 4)
    with pytest.raises(IndexError):
        layout.host_segments(4)
    with pytest.raises(ConfigError, match="expected 5 blocks"):
        BlockLayout({"l0": torch.zeros(4, 2, 8, 8)}, 5)
