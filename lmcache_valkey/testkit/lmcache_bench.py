"""Running LMCache's ``lmcache bench l2`` and reading its summary."""

from __future__ import annotations

import re

#: `python -c LMCACHE_CLI ARGS...` runs `lmcache ARGS...` exactly as the
#: console script does.
LMCACHE_CLI = ("import sys; from lmcache.cli.main import main; sys.argv[0] = 'lmcache'; "
               "sys.exit(main())")


def bench_l2_summary(stdout: str) -> dict[str, dict[str, str]]:
    """``lmcache bench l2``'s summary: {operation: {field: value}}, e.g.
    ``{"Store": {"Total keys": "32", "Throughput avg (MB/s)": "812.5", ...}}``."""
    out: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in stdout.splitlines():
        m = re.match(r"^([A-Za-z][^:]*):\s+(.*?)\s*$", line)
        if not m:
            continue
        field, value = m.groups()
        if field == "Operation":
            current = out.setdefault(value, {})
        elif current is not None:
            current[field] = value
    return out
