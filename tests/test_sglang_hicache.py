"""ValkeyHiCacheStorage inside SGLang 0.5.23's own HiCache machinery (CPU).

Real host pools (MHA and MLA; ``layer_first``, ``page_first``,
``page_first_direct``), a real ``HiCacheController`` whose backup and
prefetch threads call the backend, built by the storage factory's
``dynamic`` route from the extra config, against a real Valkey. A second
controller with its own pools (another SGLang instance) finds what the first
stored and prefetches it byte for byte, through the zero-copy interface
(``interface_v1: 1``) and the generic one (``0``). Faults are the server's
own: killed, stopped with SIGSTOP.

Skipped where SGLang is not installed; ``make test-sglang`` (and CI) runs it
in ``.venv-sglang``.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from closing import closing_factory
from sglang_harness import (
    LAYOUTS,
    PAGE,
    controller,
    fill_pages,
    page_bytes,
    prefetch,
    tokens,
    write,
)

from lmcache_valkey.errors import ConfigError
from lmcache_valkey.sglang import ValkeyHiCacheStorage

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("single_rank")]

N_PAGES = 6


@pytest.fixture
def controllers():
    yield from closing_factory(controller, release=lambda cc: cc.detach_storage_backend())


@pytest.mark.parametrize("kind", ["mha", "mla"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("interface_v1", [1, 0])
def test_another_instance_prefetches_what_one_stored_byte_for_byte(
        server, prefix, controllers, kind, layout, interface_v1) -> None:
    extra = {"url": server.url, "key_prefix": prefix}
    a = controllers(kind, layout, {**extra, "interface_v1": interface_v1})
    assert isinstance(a.storage_backend, ValkeyHiCacheStorage)
    assert a.page_set_func.__name__ == ("_page_set_zero_copy" if interface_v1
                                        else "_generic_page_set")
    toks = tokens(N_PAGES, seed=1)
    stored_at = fill_pages(a, N_PAGES, seed=2)
    assert write(a, stored_at, toks) == N_PAGES * PAGE

    # Another instance, with the other interface: the values are the same.
    b = controllers(kind, layout, {**extra, "interface_v1": 1 - interface_v1})
    fill_pages(b, 1, seed=3)                            # other bytes everywhere
    hit, loaded, loaded_at = prefetch(b, toks)
    assert (hit, loaded) == (N_PAGES * PAGE, N_PAGES * PAGE)
    for p in range(N_PAGES):
        assert page_bytes(b, loaded_at, p) == page_bytes(a, stored_at, p)

    metrics = a.storage_backend.get_stats()
    assert type(metrics).__name__ == "StorageMetrics" and metrics.backup_pgs == [N_PAGES]
    assert b.storage_backend.get_stats().prefetch_pgs == [N_PAGES]


@pytest.mark.parametrize("kind", ["mha", "mla"])
def test_layer_first_and_page_first_direct_share_pages_page_first_does_not(
        server, prefix, controllers, kind) -> None:
    extra = {"url": server.url, "key_prefix": prefix, "interface_v1": 1}
    a = controllers(kind, "layer_first", extra)
    toks = tokens(N_PAGES, seed=4)
    stored_at = fill_pages(a, N_PAGES, seed=5)
    assert write(a, stored_at, toks) == N_PAGES * PAGE
    b = controllers(kind, "page_first_direct", extra)
    hit, loaded, loaded_at = prefetch(b, toks)
    assert loaded == N_PAGES * PAGE
    assert [page_bytes(b, loaded_at, p) for p in range(N_PAGES)] == \
        [page_bytes(a, stored_at, p) for p in range(N_PAGES)]
    c = controllers(kind, "page_first", extra)      # token-major pages: another format
    assert prefetch(c, toks)[0] == 0


def test_only_the_leading_run_of_stored_pages_is_prefetched(server, prefix, controllers) -> None:
    extra = {"url": server.url, "key_prefix": prefix, "interface_v1": 1}
    a = controllers("mha", "page_first", extra)
    toks = tokens(N_PAGES, seed=6)
    stored_at = fill_pages(a, N_PAGES, seed=7)
    assert write(a, stored_at[:3 * PAGE], toks[:3 * PAGE]) == 3 * PAGE
    b = controllers("mha", "page_first", extra)
    hit, loaded, loaded_at = prefetch(b, toks)
    assert (hit, loaded) == (3 * PAGE, 3 * PAGE)
    assert [page_bytes(b, loaded_at, p) for p in range(3)] == \
        [page_bytes(a, stored_at, p) for p in range(3)]


def test_an_unknown_option_fails_the_attach_with_its_name(server, controllers) -> None:
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['ttl'\]") as e:
        controllers("mha", "page_first", {"url": server.url, "ttl": 60})
    assert isinstance(e.value.__cause__, ConfigError)


#: How each server fault begins and ends.
FAULTS = {
    "killed": (lambda srv: srv.kill(), lambda srv: srv.restart()),
    "stalled": (lambda srv: os.kill(srv.pid, signal.SIGSTOP),
                lambda srv: os.kill(srv.pid, signal.SIGCONT)),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_server_faults_fail_soft_and_the_backend_recovers(make_server, controllers,
                                                          fault) -> None:
    srv = make_server()
    a = controllers("mha", "page_first_direct",
                    {"url": srv.url, "interface_v1": 1, "op_timeout_s": 0.5,
                     "connect_timeout_s": 1, "reconnect_backoff_max_s": 0.05})
    toks, later = tokens(N_PAGES, seed=8), tokens(N_PAGES, seed=9)
    stored_at = fill_pages(a, 2 * N_PAGES, seed=10)
    assert write(a, stored_at[:N_PAGES * PAGE], toks) == N_PAGES * PAGE

    begin_fault, end_fault = FAULTS[fault]
    begin_fault(srv)
    try:
        assert write(a, stored_at[N_PAGES * PAGE:], later) == 0      # nothing raised
        assert prefetch(a, toks, rid="during")[:2] == (0, 0)
    finally:
        end_fault(srv)

    deadline = time.monotonic() + 10
    while write(a, stored_at[N_PAGES * PAGE:], later) == 0:
        assert time.monotonic() < deadline, "the backend did not recover"
        time.sleep(0.1)
    hit, loaded, loaded_at = prefetch(a, later, rid="after")
    assert loaded == N_PAGES * PAGE
    assert [page_bytes(a, loaded_at, p) for p in range(N_PAGES)] == \
        [page_bytes(a, stored_at[N_PAGES * PAGE:], p) for p in range(N_PAGES)]
