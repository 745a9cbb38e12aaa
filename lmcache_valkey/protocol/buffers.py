"""Turning caller destinations into objects the native layer can pin.

Anything with the buffer protocol passes through untouched. torch tensors do
not export the buffer protocol, so a CPU tensor (pinned or not) is viewed as
a flat uint8 numpy array over the same memory; the array holds a reference
to the tensor, so the tensor stays alive while the batch runs. Nothing is
copied.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

Buffer = Any  # bytes-like, numpy array, torch CPU tensor, or a list of them (scatter)


def _is_tensor(obj: object) -> bool:
    return type(obj).__module__.startswith("torch") and hasattr(obj, "data_ptr")


def _tensor_bytes(t: Any) -> Any:
    if t.device.type != "cpu":
        raise ConfigError(
            f"tensor on {t.device} cannot be a destination: receive into a pinned "
            "CPU tensor and copy it to the device"
        )
    if not t.is_contiguous():
        raise ConfigError("tensor must be contiguous to be used as a buffer")
    import torch

    return t.detach().reshape(-1).view(torch.uint8).numpy()


def as_native_buffer(obj: Buffer) -> Any:
    """One value's buffer (or scatter list) in a form the engine can pin."""
    if type(obj) is list or type(obj) is tuple:
        return [_tensor_bytes(s) if _is_tensor(s) else s for s in obj]
    if _is_tensor(obj):
        return _tensor_bytes(obj)
    return obj


def buffer_nbytes(obj: Buffer) -> int:
    """Size in bytes of a native-ready buffer or scatter list (for tiling)."""
    if type(obj) is list or type(obj) is tuple:
        return sum(buffer_nbytes(s) for s in obj)
    nbytes = getattr(obj, "nbytes", None)
    if nbytes is not None:
        return int(nbytes)
    return memoryview(obj).nbytes


def byte_segments(obj: Any, writable: bool, index: int) -> list[memoryview]:
    """Byte views of one buffer or a list/tuple of them (a scatter list),
    empty ones left out. The views pin the memory (a bytearray cannot be
    resized while one exists) until they are released after the batch."""
    objs = obj if type(obj) is list or type(obj) is tuple else (obj,)
    out = []
    for o in objs:
        try:
            m = memoryview(o)
            if not m.c_contiguous or (writable and m.readonly):
                m.release()
                raise BufferError("not writable" if writable else "not C-contiguous")
            b = m.cast("B") if m.format != "B" or m.ndim != 1 else m
        except (TypeError, BufferError, ValueError) as e:
            need = "a writable C-contiguous buffer" if writable else "a C-contiguous buffer"
            raise TypeError(
                f"buffer for key #{index} must be {need} "
                f"(bytearray, memoryview, numpy array, CPU tensor), "
                f"not {type(o).__name__}: {e}") from None
        if b.nbytes:
            out.append(b)
    return out
