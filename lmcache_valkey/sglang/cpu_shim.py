"""Importing SGLang on a machine without a GPU (tests, benchmarks, CI).

``pip install --no-deps sglang`` next to a CPU torch brings PyPI's
torchvision, a CUDA build whose C++ operators do not load; SGLang's import
chain registers fake kernels for ``torchvision::nms``/``qnms`` and fails when
the operators do not exist. Declaring the two schemas is enough: nothing on
the paths the HiCache backend uses calls them. Serving SGLang needs a GPU and
its own, matching torchvision; this is for importing its storage interface,
host pools and ``HiCacheController`` on CPU.
"""

from __future__ import annotations

import contextlib

_SCHEMAS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
}


def declare_torchvision_nms() -> None:
    """Declare ``torchvision::nms``/``qnms`` unless torchvision imports as is
    (a torchvision built for this torch registers them itself)."""
    import torch

    try:
        import torchvision  # noqa: F401
        return
    except Exception:  # "operator torchvision::nms does not exist", or not installed
        pass
    for name, schema in _SCHEMAS.items():
        # Already there: a working torchvision, or a second call.
        with contextlib.suppress(RuntimeError):
            torch.library.define(f"torchvision::{name}", schema)
