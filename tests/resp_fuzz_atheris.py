"""Coverage-guided driver for the RESP fuzz harness (atheris / libFuzzer).

tests/resp_fuzz.py generates its inputs from a seeded RNG (what CI runs);
this driver lets libFuzzer mutate them instead, guided by the coverage of
the Python code that reads each input: the oracle (resp_reference), the model
of the engine's decisions and the checks. The native extension itself is not
coverage-instrumented (that needs clang's -fsanitize=fuzzer-no-link), so the
oracle stands in for its branches, which it mirrors. Any finding raises and
libFuzzer saves the input as crash-*.

    pip install atheris   # or: pip install '.[fuzz]'
    python tests/resp_fuzz_atheris.py --make-seeds fuzz-corpus   # + fuzz-corpus.dict
    python tests/resp_fuzz_atheris.py -runs=200000 -dict=fuzz-corpus.dict fuzz-corpus

Input layout: byte 0 picks the target (even: header, odd: engine) and the
engine command kind; byte 1 the batch size; byte 2 the connection options;
then one capacity byte per key; the rest is the reply stream.
"""

from __future__ import annotations

import os
import random
import sys

import resp_fuzz
from resp_fuzz import MIN_RBUF, Arena, EngineInput

KINDS = ["get", "set", "exists", "touch", "delete", "execute"]
MAX_BULK = [resp_fuzz.DEFAULT_MAX_BULK, 16, 2**62]
INFLIGHT = [64 * 1024 * 1024, 1, 64]


def decode(data: bytes) -> tuple[str, object]:
    """(target, input) from libFuzzer's bytes."""
    if len(data) < 3 or data[0] % 2 == 0:
        return "header", data[1:]
    kind = KINDS[(data[0] // 2) % len(KINDS)]
    n = 1 + data[1] % 8
    caps = [[c] for c in data[3:3 + n].ljust(n, b"\0")]
    options = {"rbuf_size": MIN_RBUF + data[2] * 64,
               "max_bulk_len": MAX_BULK[data[2] % 3],
               "max_inflight_bytes": INFLIGHT[(data[2] // 3) % 3]}
    inp = EngineInput(kind, data[3 + n:], caps, options, calls=n)
    inp.fill = bytes(i % 251 for i in range(Arena.size(caps)))
    inp.values = [b"v" * c[0] for c in caps]
    return "engine", inp


def encode(inp: EngineInput) -> bytes:
    """A seed that decodes to (about) `inp`: same kind, keys, stream."""
    n = min(len(inp.caps), 8)
    caps = bytes(min(sum(c), 255) for c in inp.caps[:n])
    return bytes([1 + 2 * KINDS.index(inp.kind), n - 1, 0]) + caps + inp.stream


def test_one_input(data: bytes) -> None:
    target, inp = decode(data)
    problem = (resp_fuzz.check_header(inp) if target == "header"
               else resp_fuzz.run_engine(inp))
    if problem is not None:
        raise AssertionError(problem)


def make_seeds(directory: str, count: int = 500) -> None:
    """Seed inputs from the seeded generator, and RESP tokens as a libFuzzer
    dictionary beside them."""
    os.makedirs(directory, exist_ok=True)
    with open(directory.rstrip("/") + ".dict", "w") as f:
        for token in resp_fuzz.TOKENS:
            f.write('"' + "".join(f"\\x{b:02x}" for b in token) + '"\n')
    rng = random.Random("atheris-seeds")
    for i in range(count):
        if i % 4 == 0:
            seed = b"\0" + resp_fuzz.header_input(rng)
        else:
            seed = encode(resp_fuzz.engine_input(rng))
        with open(os.path.join(directory, f"seed-{i:04d}"), "wb") as f:
            f.write(seed)


def main() -> None:
    if sys.argv[1:2] == ["--make-seeds"]:
        make_seeds(sys.argv[2])
        return
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
