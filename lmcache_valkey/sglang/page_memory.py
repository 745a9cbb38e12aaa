"""Host-pool pages as scatter lists of byte views, for zero-copy I/O.

SGLang's zero-copy contract hands a backend raw addresses:
``pool.get_page_buffer_meta(host_indices)`` gives, page after page, the
(pointer, size) runs that make up each page (2 per page for MHA page-first
layouts, 2 x layers for ``layer_first``, 1 or more for MLA). The client
sends from and receives into buffers it can pin, so each run becomes a
``memoryview`` slice of a uint8 array over the tensor storage that contains
it: no copy, and the view keeps that storage alive while native code writes
into it (the engine holds a ``Py_buffer`` on each for the whole batch).

An address is only used if it lies, with its whole size, inside one of the
pool's own CPU tensors: a wrong pointer fails the call instead of writing
somewhere in the process.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Sequence
from typing import Any

# Pool attributes that are properties (not in vars()) but name its memory.
_BUFFER_PROPERTIES = ("kv_buffer", "k_buffer", "v_buffer")


class PoolMemory:
    """The byte views of one host pool's memory, found by address."""

    def __init__(self, pool: Any, is_mla: bool) -> None:
        self._pool = pool
        # MHA pools list each layer's K run, then its V run; a stored value is
        # all K runs, then all V runs (the order of SGLang's flat data page).
        self._split_kv = not is_mla
        # (region starts, regions), replaced as one object: SGLang's threads
        # may read it while one of them maps the pool again.
        self._map: tuple[list[int], list[tuple[int, int, memoryview]]] = ([], [])
        self._map_regions()

    def _map_regions(self) -> None:
        regions: dict[int, tuple[int, int, memoryview]] = {}
        for t in _cpu_tensors(self._pool):
            storage = t.untyped_storage()
            start, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes and start not in regions:
                regions[start] = (start, start + nbytes, _storage_bytes(t, storage))
        ordered = sorted(regions.values(), key=lambda r: r[0])
        self._map = ([r[0] for r in ordered], ordered)

    def view(self, ptr: int, size: int) -> memoryview:
        """The pool's bytes [ptr, ptr + size) as a writable view."""
        for attempt in range(2):
            starts, regions = self._map
            i = bisect.bisect_right(starts, ptr) - 1
            if i >= 0:
                start, end, mem = regions[i]
                if ptr + size <= end:
                    return mem[ptr - start:ptr - start + size]
            if attempt == 0:
                self._map_regions()  # the pool may have (re)allocated its buffers
        raise ValueError(f"page run at 0x{ptr:x} (+{size} bytes) is not inside the host "
                         f"pool's CPU memory")

    def page_values(self, host_indices: Any, n_pages: int) -> list[list[memoryview]]:
        """One scatter list per page, in stored-value order."""
        if n_pages == 0:
            return []
        ptrs, sizes = self._pool.get_page_buffer_meta(host_indices)
        if len(ptrs) != len(sizes) or len(ptrs) % n_pages:
            raise ValueError(f"host pool gave {len(ptrs)} buffer runs for {n_pages} pages")
        per_page = len(ptrs) // n_pages
        view = self.view
        out = []
        for p in range(0, len(ptrs), per_page):
            runs = [view(ptrs[j], sizes[j]) for j in range(p, p + per_page)]
            if self._split_kv and per_page > 2:
                runs = runs[0::2] + runs[1::2]
            out.append(runs)
        return out


def value_nbytes(runs: Sequence[memoryview]) -> int:
    return sum(r.nbytes for r in runs)


def _cpu_tensors(pool: Any) -> list[Any]:
    candidates: list[Any] = []
    for name in _BUFFER_PROPERTIES:
        with contextlib.suppress(Exception):  # a property that does not apply to this layout
            candidates.append(getattr(pool, name, None))
    for value in vars(pool).values():
        if isinstance(value, (list, tuple)):
            candidates.extend(value)
        else:
            candidates.append(value)
    return [t for t in candidates if _is_cpu_tensor(t)]


def _is_cpu_tensor(obj: Any) -> bool:
    return (type(obj).__module__.startswith("torch") and hasattr(obj, "untyped_storage")
            and getattr(getattr(obj, "device", None), "type", None) == "cpu")


def _storage_bytes(t: Any, storage: Any) -> memoryview:
    """A writable uint8 view of a tensor's whole storage (no copy)."""
    import torch

    # torch's stub requires set_'s stride (optional at run time: contiguous); numpy's has
    # ndarray.__buffer__ only from Python 3.12 on.
    flat = torch.empty(0, dtype=torch.uint8).set_(  # type: ignore[call-overload]
        storage, 0, (storage.nbytes(),))
    return memoryview(flat.numpy())  # type: ignore[arg-type]
