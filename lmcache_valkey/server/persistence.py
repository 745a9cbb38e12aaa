"""Which valkey.conf directives a persistence choice means, for
``lmcache-valkey server --data-dir`` (and for an operator's own valkey.conf).

The data is a cache: losing the last minutes of it on a crash costs prefill
compute, never correctness (a missing block is recomputed). So the defaults
keep what a restart needs at the lowest running cost:

* ``rdb`` (the default with a data directory): a snapshot at most once an
  hour (``save 3600 1``) and one at shutdown (SIGTERM), read back at start.
  Each snapshot forks the server: the fork copies the page tables (the
  server is stalled for that long: 27 / 48 / 72 ms for 0.5 / 1 / 2 GiB on
  this project's 2-core VM), the child writes the whole dataset to disk,
  and pages written
  meanwhile are copied (copy-on-write: up to 2x memory in the worst case).
* ``aof``: every write appended to a log, fsynced once a second
  (``appendfsync everysec``: at most ~1 s lost). The log carries every
  stored byte again, so disk write bandwidth must match the store rate, and
  the log's rewrites fork like snapshots. ``always`` fsyncs before each
  reply: every SET waits for the disk.
* ``none``: nothing is written (the default without a data directory).

Always ``stop-writes-on-bgsave-error no``: Valkey's default refuses every
write after a failed snapshot (a full disk), which would turn the cache
read-only; a cache should rather lose its snapshot. And ``rdbcompression
no``: KV blocks do not compress with LZF, which only burns the snapshot's
CPU (measured here, 1 GiB of random bytes: BGSAVE 33.9 s with it, 4.7-6.5 s
without, same file size).
"""

from __future__ import annotations

MODES = ("none", "rdb", "aof")
APPENDFSYNC = ("always", "everysec", "no")
DEFAULT_SAVE = "3600 1"
DEFAULT_APPENDFSYNC = "everysec"


def persistence_config(mode: str, *, save: str | None = None,
                       appendfsync: str = DEFAULT_APPENDFSYNC) -> dict[str, str]:
    """valkey.conf directives for `mode` (``none``, ``rdb``, ``aof``).

    `save` is the snapshot schedule (``"<seconds> <changes> ..."``; ``""``:
    no snapshots): ``3600 1`` for ``rdb``, none for ``aof``. Raises
    ValueError for an unknown mode, fsync policy or a malformed schedule.
    """
    if mode not in MODES:
        raise ValueError(f"persistence must be one of {', '.join(MODES)}, not {mode!r}")
    if appendfsync not in APPENDFSYNC:
        raise ValueError(f"appendfsync must be one of {', '.join(APPENDFSYNC)}, "
                         f"not {appendfsync!r}")
    if mode == "none":
        if save:
            raise ValueError("a snapshot schedule needs persistence rdb or aof")
        return {"save": '""', "appendonly": "no"}
    schedule = (DEFAULT_SAVE if mode == "rdb" else "") if save is None else save
    _check_schedule(schedule)
    config = {"save": f'"{schedule}"' if schedule else '""',
              "stop-writes-on-bgsave-error": "no",
              "rdbcompression": "no",  # also the AOF's RDB preamble
              "appendonly": "yes" if mode == "aof" else "no"}
    if mode == "aof":
        config["appendfsync"] = appendfsync
    else:  # a snapshot at SIGTERM even with no schedule (Valkey's default: only with one)
        config["shutdown-on-sigterm"] = "save"
    return config


def _check_schedule(schedule: str) -> None:
    parts = schedule.split()
    if len(parts) % 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"snapshot schedule must be pairs of '<seconds> <changes>' "
                         f"(e.g. '3600 1 300 100'), not {schedule!r}")
