"""Wall time of each vLLM connector hook call, for the "never on vLLM's critical path" check.

vLLM calls the connector's hooks inside its scheduler loop and its model step:
whatever a hook spends there is added to every running request's latency.
``HookTimer`` records how long each call took, keeps the last ``max_samples``
per hook (a long-running server must not grow without bound) and reports
p50 / p99 / max per hook. Each call's thread CPU time is kept beside its
wall time: on a loaded machine a hook's wall time also counts the time its
thread waited for a core or for the GIL (vLLM's own I/O threads hold it
while they encode a step's outputs), the CPU time only what it ran. With
``LMCACHE_VALKEY_HOOK_TIMINGS_DIR`` set, it
writes them to ``<dir>/<role>-<pid>.json`` (at shutdown, and every
``dump_interval_s`` from :meth:`HookTimer.maybe_dump`) so that a benchmark can
read the figures of the scheduler and worker processes it does not run itself
(``examples/long_doc_qa/run.py --hook-timings``).

    timer = HookTimer("scheduler")
    with timer.time("get_num_new_matched_tokens"):
        ...
    timer.maybe_dump()      # cheap unless the interval has passed
    timer.dump()            # at shutdown
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

DIR_ENV = "LMCACHE_VALKEY_HOOK_TIMINGS_DIR"
# Bounded: 100k floats per hook is under 1 MB, and covers hours of steps.
DEFAULT_MAX_SAMPLES = 100_000
DEFAULT_DUMP_INTERVAL_S = 10.0


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of an already sorted, non-empty list."""
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n * q / 100), at least 1
    return sorted_values[int(rank) - 1]


def summarize_ms(durations_ms: list[float]) -> dict[str, float]:
    """``{n, p50_ms, p99_ms, max_ms}`` of hook durations in milliseconds."""
    values = sorted(durations_ms)
    if not values:
        return {"n": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    return {"n": len(values), "p50_ms": percentile(values, 50),
            "p99_ms": percentile(values, 99), "max_ms": values[-1]}


# One sample: (time.monotonic() when the call ended, its wall duration in ms, the
# CPU time its thread ran meanwhile in ms). The end time (CLOCK_MONOTONIC: one
# clock for every process of the machine) lets a benchmark split the calls into
# windows, e.g. "while Valkey was frozen".
Sample = tuple[float, float, float]
FIELDS = ("durations_ms", "cpu_ms")


class _Timing:
    """The context manager of one hook call (a class: cheaper than @contextmanager)."""

    __slots__ = ("_samples", "_t0", "_c0")

    def __init__(self, samples: deque[Sample]) -> None:
        self._samples = samples
        self._t0 = self._c0 = 0

    def __enter__(self) -> None:
        self._c0 = time.thread_time_ns()
        self._t0 = time.perf_counter_ns()

    def __exit__(self, *exc: Any) -> None:
        # Recorded even when the hook raises: that call blocked vLLM too.
        wall = time.perf_counter_ns() - self._t0
        cpu = time.thread_time_ns() - self._c0
        self._samples.append((time.monotonic(), wall / 1e6, cpu / 1e6))


class HookTimer:
    """Per-hook wall times of one connector instance (one role, one process)."""

    def __init__(self, role: str, *, dump_dir: str | os.PathLike[str] | None = None,
                 max_samples: int = DEFAULT_MAX_SAMPLES,
                 dump_interval_s: float = DEFAULT_DUMP_INTERVAL_S) -> None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        self.role = role
        if dump_dir is None:
            dump_dir = os.environ.get(DIR_ENV) or None
        self.dump_dir = Path(dump_dir) if dump_dir is not None else None
        self.max_samples = max_samples
        self.dump_interval_s = dump_interval_s
        self._samples: dict[str, deque[Sample]] = {}
        self._lock = threading.Lock()
        self._last_dump = time.monotonic()
        if self.dump_dir is not None:
            # A process may end without its owner's shutdown hook (vLLM does not always
            # call it): the last calls are still written on a normal interpreter exit.
            atexit.register(self._dump_at_exit)

    def _dump_at_exit(self) -> None:
        with contextlib.suppress(Exception):  # nothing to report to at exit; never fail the exit
            self.dump()

    def _deque(self, hook: str) -> deque[Sample]:
        samples = self._samples.get(hook)
        if samples is None:
            with self._lock:
                samples = self._samples.setdefault(hook, deque(maxlen=self.max_samples))
        return samples

    def time(self, hook: str) -> _Timing:
        """``with timer.time("hook_name"): ...`` records the call's wall time."""
        return _Timing(self._deque(hook))

    def record(self, hook: str, seconds: float, cpu_seconds: float | None = None) -> None:
        """Record one call measured elsewhere (CPU time: the wall time unless given)."""
        cpu = seconds if cpu_seconds is None else cpu_seconds
        self._deque(hook).append((time.monotonic(), seconds * 1e3, cpu * 1e3))

    def samples(self) -> dict[str, list[Sample]]:
        """The kept (end monotonic time, wall ms, CPU ms) samples per hook, oldest first."""
        with self._lock:
            items = list(self._samples.items())
        out = {}
        for hook, samples in items:
            # list(deque) while another thread appends can raise: retry (appends are quick).
            while True:
                try:
                    out[hook] = list(samples)
                    break
                except RuntimeError:
                    continue
        return out

    def durations_ms(self) -> dict[str, list[float]]:
        """The kept durations (ms) per hook, oldest first."""
        return {hook: [ms for _, ms, _ in v] for hook, v in self.samples().items()}

    def cpu_ms(self) -> dict[str, list[float]]:
        """The kept thread CPU times (ms) per hook, oldest first."""
        return {hook: [cpu for _, _, cpu in v] for hook, v in self.samples().items()}

    def summary(self) -> dict[str, dict[str, float]]:
        """``{hook: {n, p50_ms, p99_ms, max_ms}}`` over the kept samples."""
        return {hook: summarize_ms(v) for hook, v in sorted(self.durations_ms().items())}

    def dump_path(self) -> Path | None:
        if self.dump_dir is None:
            return None
        return self.dump_dir / f"{self.role}-{os.getpid()}.json"

    def dump(self) -> Path | None:
        """Write the summary and the samples to ``dump_path()`` (None: no dump dir set).

        Written to a temporary file then renamed, so a reader never sees half a file.
        """
        path = self.dump_path()
        self._last_dump = time.monotonic()
        if path is None:
            return None
        samples = self.samples()
        doc = {"role": self.role, "pid": os.getpid(), "time": time.time(),
               "max_samples": self.max_samples,
               "summary": {h: summarize_ms([ms for _, ms, _ in v])
                           for h, v in sorted(samples.items())},
               "durations_ms": {h: [round(ms, 4) for _, ms, _ in v] for h, v in samples.items()},
               "cpu_ms": {h: [round(c, 4) for _, _, c in v] for h, v in samples.items()},
               "end_monotonic_s": {h: [round(t, 6) for t, _, _ in v]
                                   for h, v in samples.items()}}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(doc, separators=(",", ":")))
        os.replace(tmp, path)
        return path

    def maybe_dump(self) -> Path | None:
        """``dump()`` if a dump dir is set and ``dump_interval_s`` has passed since the last."""
        if self.dump_dir is None or time.monotonic() - self._last_dump < self.dump_interval_s:
            return None
        return self.dump()


def load_dumps(dump_dir: str | os.PathLike[str], window: tuple[float, float] | None = None,
               field: str = "durations_ms") -> dict[str, dict[str, list[float]]]:
    """Durations (ms) per role and hook from every ``<role>-<pid>.json`` in ``dump_dir``.

    ``field``: ``"durations_ms"`` (wall time) or ``"cpu_ms"`` (the hook
    thread's CPU time; the window still applies to the wall-time span).

    Processes of the same role (e.g. TP workers, or servers started one after
    another on the same folder) are pooled. ``window``: only the calls that
    overlap ``(start, end)`` (``time.monotonic()`` of this machine) — a call
    that blocked through a whole Valkey freeze ends after it, and counts.
    """
    if field not in FIELDS:
        raise ValueError(f"field must be one of {FIELDS}, got {field!r}")
    pooled: dict[str, dict[str, list[float]]] = {}
    for path in sorted(Path(dump_dir).glob("*.json")):
        doc = json.loads(path.read_text())
        per_hook = pooled.setdefault(doc["role"], {})
        for hook, walls in doc["durations_ms"].items():
            values = doc.get(field, {}).get(hook, [])
            if window is not None:
                ends = doc["end_monotonic_s"][hook]
                values = [v for t, ms, v in zip(ends, walls, values, strict=False)
                          if t >= window[0] and t - ms / 1e3 <= window[1]]
            per_hook.setdefault(hook, []).extend(values)
    return pooled
