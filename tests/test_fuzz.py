"""The RESP fuzz harness (tests/resp_fuzz.py) as tests.

* test_quick_fuzz (default suite): the first 20 000 inputs of each target,
  seed 0 — a few seconds. ``engine-socket`` runs each engine input over both
  transports (the fd's system calls, and the socket object's methods that TLS
  uses) and checks that they agree exactly.
* test_million_inputs (marker `fuzz`, `make fuzz`): 1 000 000 inputs per
  target; LMCACHE_VALKEY_FUZZ_SEED picks the seed (default 1, so it does not
  repeat the quick run's inputs). Its figures are printed (`-s` shows them).

A finding names its input by target and index; `python tests/resp_fuzz.py
--seed S --replay TARGET:INDEX` replays it alone. Run under AddressSanitizer
(`make asan`) the same inputs also catch out-of-bounds accesses that land
outside the guarded destinations, e.g. in the engine's receive buffer.
No server is needed: the far end of each connection is a socketpair.
"""

from __future__ import annotations

import os

import pytest
import resp_fuzz

pytestmark = pytest.mark.engine

QUICK_INPUTS = 20_000
FULL_INPUTS = 1_000_000


def run(target: str, count: int, seed: int) -> None:
    totals = resp_fuzz.fuzz(target, count, seed)
    print(f"\n{resp_fuzz.summary(target, totals)} (seed {seed})")
    assert not totals.findings, "\n".join(
        f"{f.target}:{f.index}: {f.message}\n  input: {f.data!r:.400}\n"
        f"  replay: python tests/resp_fuzz.py --seed {seed} --replay {f.target}:{f.index}"
        for f in totals.findings)
    assert totals.inputs == count


@pytest.mark.timeout(600)
@pytest.mark.parametrize("target", sorted(resp_fuzz.TARGETS))
def test_quick_fuzz(target: str) -> None:
    run(target, QUICK_INPUTS, seed=0)


@pytest.mark.fuzz
@pytest.mark.timeout(3 * 3600)
@pytest.mark.parametrize("target", sorted(resp_fuzz.TARGETS))
def test_million_inputs(target: str) -> None:
    run(target, FULL_INPUTS, seed=int(os.environ.get("LMCACHE_VALKEY_FUZZ_SEED", "1")))
    if target.startswith("engine"):
        print("  outcomes: " + ", ".join(
            f"{k} {v}" for k, v in sorted(resp_fuzz.OUTCOMES.items())))
